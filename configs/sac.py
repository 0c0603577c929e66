"""SAC defaults (DESIGN section 5), with a preset per environment family.

Soft actor-critic with a learned temperature (Haarnoja et al. 2018, "Soft
Actor-Critic Algorithms and Applications"): 2x256 ReLU MLPs for the actor and
each of the twin critics, Adam 3e-4, gamma 0.99, batch 256, Polyak tau 0.005,
one gradient step per env step after `learning_starts` uniformly random steps,
target entropy -|A|. Sparse training follows Graesser et al. 2022 (RigL every
1000 updates, drop fraction 0.5, until 75% of training; SET would be every 250
with 0.3). `get_config()` gives the classic-control (Pendulum-v1) defaults;
`PRESETS[family]` holds what differs for MuJoCo and the DeepMind Control Suite.
Actor and critic take `sparse.sparsity` unless `sparse.actor_sparsity` /
`sparse.critic_sparsity` are set (`--actor_sparsity`, `--critic_sparsity`).
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.agent = "sac"
    config.env = "Pendulum-v1"
    config.steps = 15_000
    config.seed = 0
    config.num_seeds = 1
    config.eval_every = 2_500
    config.eval_episodes = 10
    config.log_every = 1_000
    config.checkpoint_every = 5_000
    config.checkpoints_to_keep = 2
    config.checkpoint_replay = True

    # The actor's trunk and each critic head; the actor's output layer gives mean and log-std per action.
    config.network = ml_collections.ConfigDict(
        dict(kind="mlp", hidden_sizes=(256, 256), width_multiplier=1.0, activation="relu")
    )
    config.learning_rate = 3e-4  # actor and critics
    config.temperature_learning_rate = 3e-4
    config.gamma = 0.99
    config.tau = 0.005  # Polyak averaging of the target critic, every gradient step
    config.batch_size = 256
    config.replay_capacity = 100_000
    config.learning_starts = 1_000  # uniformly random actions before, and no updates
    config.train_every = 1
    config.gradient_steps = 1  # updates per learning step (replay ratio gradient_steps / train_every)
    config.init_temperature = 1.0
    config.target_entropy_scale = 1.0  # target entropy = -scale * action_dim
    config.log_std_min = -5.0
    config.log_std_max = 2.0

    config.sparse = ml_collections.ConfigDict(
        dict(method="rigl", sparsity=0.0,
             actor_sparsity=config_dict.placeholder(float), critic_sparsity=config_dict.placeholder(float),
             distribution="erk", dense_first_layer=False, dense_last_layer=False,
             update_period=1_000, update_end_fraction=0.75, drop_fraction=0.5,
             prune_start_fraction=0.2, prune_end_fraction=0.75, prune_frequency=1_000)
    )
    config.redo = ml_collections.ConfigDict(dict(enabled=False, tau=0.1, period=1_000, batch_size=256))
    return config


PRESETS = {
    "classic": {},
    "mujoco": {
        "env": "HalfCheetah-v5",
        "steps": 1_000_000,
        "eval_every": 10_000,
        "log_every": 5_000,
        "checkpoint_every": 50_000,
        "replay_capacity": 1_000_000,
        "learning_starts": 10_000,
    },
    "dmc": {
        "env": "dmc:cheetah-run",
        "steps": 500_000,
        "eval_every": 10_000,
        "log_every": 5_000,
        "checkpoint_every": 50_000,
        "replay_capacity": 500_000,
        "learning_starts": 10_000,
    },
}
