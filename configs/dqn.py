"""DQN defaults (docs/design.md section 5), with a preset per environment family.

Classic control follows Graesser et al. 2022's gym protocol (rigl
`rl/tfagents/configs/dqn_gym_*.gin`); Atari follows Dopamine's DQN
(Castro et al. 2018); MinAtar uses its reference network (Young & Tian 2019).
`get_config()` gives the classic-control defaults; `get_config(family)` applies
`PRESETS[family]`, what differs for that family (`--config=configs/dqn.py:atari`).
The training entry point takes the preset of the env's family unless one is
named, then flags, then `--config.<field>=value`.
"""

import ml_collections

from sparserl.configs import base


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
    # Classic control, line by line against rigl/rl/tfagents/configs/dqn_gym_dense_config.gin and
    # dqn_train_eval.py (TF-Agents DqnAgent); deviations say why.
    config = base.get_config(
        agent="dqn",
        env="CartPole-v1",  # the gin's default is CartPole-v0 (200-step cap); v1 (500) is the harder, current one
        steps=100_000,  # num_iterations 100,000 at one env step per train step
        # Deviation: the gin evaluates 20 greedy episodes every 2000 steps; 10 every 5000 keeps CPU runs cheap.
        eval_every=5_000,
        log_every=1_000,
        checkpoint_every=10_000,
        per_network_sparsity=False,
    )

    # fc_layer_params (512, 512), ReLU. Deviation: the reference initialises hidden kernels He
    # truncated-normal and the output U(-0.03, 0.03) with bias -0.2, and its sparse layers are re-drawn
    # Glorot-uniform at their sparse fan-avg (fixed_sparse_init); ours are LeCun-normal at the sparse
    # fan-in (sparse.sparse_init_rescale), the same init every agent here uses.
    base.add_network(config, hidden_sizes=(512, 512), activation="relu", cnn=True)
    config.learning_rate = 1e-3  # train_eval's default
    config.adam_eps = 1e-7  # tf.keras.optimizers.Adam's default epsilon
    # An L2 penalty weight_decay * sum(w^2) on the hidden kernels, added to the loss (Keras
    # kernel_regularizer=L2(1e-6) on the hidden Dense layers; TF-Agents adds the network's losses), not
    # AdamW's decoupled decay.
    config.weight_decay = 1e-6
    config.gamma = 0.99  # discount
    base.add_off_policy(config, batch_size=128)  # replay 100,000; learning_starts 1,000 is initial_collect_steps
    config.target_update_period = 100  # gradient steps between hard copies (target_update_tau 1.0)
    # Epsilon: 1 (random) until learning_starts, then the gin's constant epsilon_greedy = 0.01 (dqn_train_eval.py
    # passes the float itself as the decay function; epsilon_decay_period is unused).
    config.epsilon_end = 0.01  # epsilon after the linear decay
    config.epsilon_decay_steps = 1  # env steps from 1 to epsilon_end, after learning_starts
    config.eval_epsilon = 0.0  # the greedy policy
    # TD loss: TF-Agents' element_wise_squared_loss, mean of x^2 (x the TD error); Huber (Dopamine) for
    # MinAtar and Atari.
    config.td_loss = "mse"  # "mse" or "huber"
    config.reward_clip = False  # clip rewards to [-1, 1] (Atari)

    # Per-method schedules: rigl/rl/tfagents/configs/dqn_gym_sparse_config.gin (SET and RigL share its
    # mask_updater: update_freq 1000, init_drop_fraction 0.5, cosine, last_update_step 75,000 of 100,000)
    # and dqn_gym_pruning_config.gin (begin_step 20,000, end_step 75,000, frequency 1000).
    base.add_schedules(config, update_period=1_000, drop_fraction=0.5, end_fraction=0.75, prune_update_period=1_000)
    # ReDo recycles the online network only (Dopamine labs/redo/recycled_dqn_agents.py); the studies use the
    # default redo.reset_target = False.
    return base.with_preset(config, PRESETS, preset)


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
        # No reference gin for MinAtar: the Atari gins' drop fraction and windows (80%; prune 20% -> 80%)
        # with the classic-control period.
        "sparse.set.drop_fraction": 0.3,
        "sparse.set.end_fraction": 0.8,
        "sparse.rigl.drop_fraction": 0.3,
        "sparse.srigl.drop_fraction": 0.3,
        "sparse.rigl.end_fraction": 0.8,
        "sparse.srigl.end_fraction": 0.8,
        "sparse.prune.end_fraction": 0.8,
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
        # rigl/rl/sparsetrain_configs/dqn_atari_{set,rigl}.gin: frequency 5000, drop_fraction 0.3 (cosine),
        # begin_step 0, end_step 2M of 2.5M optimizer steps (80%).
        "sparse.set.update_period": 5_000,
        "sparse.set.drop_fraction": 0.3,
        "sparse.set.end_fraction": 0.8,
        "sparse.rigl.update_period": 5_000,
        "sparse.srigl.update_period": 5_000,
        "sparse.rigl.drop_fraction": 0.3,
        "sparse.srigl.drop_fraction": 0.3,
        "sparse.rigl.end_fraction": 0.8,
        "sparse.srigl.end_fraction": 0.8,
        # rigl/rl/sparsetrain_configs/dqn_atari_prune.gin: begin_step 500k, end_step 2M of 2.5M (20% -> 80%),
        # frequency 5000.
        "sparse.prune.update_period": 5_000,
        "sparse.prune.start_fraction": 0.2,
        "sparse.prune.end_fraction": 0.8,
    },
}
