"""DQN defaults (DESIGN section 5), with a preset per environment family.

Classic control follows Graesser et al. 2022's gym protocol (rigl
`rl/tfagents/configs/dqn_gym_*.gin`); Atari follows Dopamine's DQN
(Castro et al. 2018); MinAtar uses its reference network (Young & Tian 2019).
`get_config()` gives the classic-control defaults; `PRESETS[family]` holds
what differs for the other families. The training entry point applies the
preset of the chosen env, then flags, then `--config.<field>=value`.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.agent = "dqn"
    config.env = "CartPole-v1"
    config.steps = 50_000
    config.seed = 0
    config.num_seeds = 1
    config.eval_every = 5_000
    config.eval_episodes = 10
    config.log_every = 1_000
    config.checkpoint_every = 10_000
    config.checkpoints_to_keep = 2
    config.checkpoint_replay = True

    config.network = ml_collections.ConfigDict(
        dict(kind="mlp", hidden_sizes=(512, 512), width_multiplier=1.0, activation="relu",
             conv_features=(32, 64, 64), kernel_sizes=(8, 4, 3), strides=(4, 2, 1), dense_sizes=(512,))
    )
    config.learning_rate = 1e-3
    config.adam_eps = 1e-8
    config.weight_decay = 1e-6
    config.gamma = 0.99
    config.batch_size = 128
    config.replay_capacity = 100_000
    config.learning_starts = 1_000
    config.train_every = 1
    config.gradient_steps = 1  # updates per learning step (replay ratio gradient_steps / train_every)
    config.target_update_period = 100
    config.epsilon_end = 0.1
    config.epsilon_decay_steps = 25_000
    config.eval_epsilon = 0.0
    config.td_loss = "mse"  # TF-Agents' element_wise_squared_loss; Huber (Dopamine) for MinAtar and Atari
    config.reward_clip = False

    config.sparse = ml_collections.ConfigDict(
        dict(method="rigl", sparsity=0.0, distribution="erk", dense_first_layer=False, dense_last_layer=False,
             update_period=1_000, update_end_fraction=0.75, drop_fraction=0.5,
             prune_start_fraction=0.2, prune_end_fraction=0.75, prune_frequency=1_000)
    )
    config.redo = ml_collections.ConfigDict(dict(enabled=False, tau=0.1, period=1_000, batch_size=256))
    return config


PRESETS = {
    "classic": {},
    "minatar": {
        "env": "MinAtar/Breakout-v1",
        "steps": 1_000_000,
        "eval_every": 50_000,
        "network.kind": "cnn",
        "network.conv_features": (16,),
        "network.kernel_sizes": (3,),
        "network.strides": (1,),
        "network.dense_sizes": (128,),
        "learning_rate": 2.5e-4,
        "adam_eps": 3.125e-4,
        "td_loss": "huber",
        "weight_decay": 0.0,
        "batch_size": 32,
        "learning_starts": 5_000,
        "target_update_period": 1_000,
        "epsilon_end": 0.1,
        "epsilon_decay_steps": 100_000,
        "sparse.update_period": 1_000,
        "sparse.drop_fraction": 0.3,
        "sparse.update_end_fraction": 0.8,
    },
    "atari": {
        "env": "ALE/Pong-v5",
        "steps": 10_000_000,
        "eval_every": 250_000,
        "eval_episodes": 10,
        "log_every": 10_000,
        "checkpoint_every": 250_000,
        "checkpoint_replay": False,
        "network.kind": "cnn",
        "learning_rate": 6.25e-5,
        "adam_eps": 1.5e-4,
        "weight_decay": 0.0,
        "batch_size": 32,
        "replay_capacity": 100_000,
        "learning_starts": 20_000,
        "train_every": 4,
        "target_update_period": 2_000,
        "epsilon_end": 0.01,
        "epsilon_decay_steps": 250_000,
        "eval_epsilon": 0.001,
        "reward_clip": True,
        "td_loss": "huber",
        "sparse.update_period": 5_000,
        "sparse.drop_fraction": 0.3,
        "sparse.update_end_fraction": 0.8,
        "sparse.prune_start_fraction": 0.05,
        "sparse.prune_end_fraction": 0.2,
        "sparse.prune_frequency": 5_000,
        "redo.period": 1_000,
    },
}
