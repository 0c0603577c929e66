"""SAC defaults (DESIGN section 5), with a preset per environment family.

Soft actor-critic with a learned temperature (Haarnoja et al. 2018, "Soft
Actor-Critic Algorithms and Applications"): 2x256 ReLU MLPs for the actor and
each of the twin critics, Adam 3e-4, gamma 0.99, batch 256, Polyak tau 0.005,
one gradient step per env step after `learning_starts` uniformly random steps,
target entropy -|A|. Sparse training follows Graesser et al. 2022's MuJoCo
gin files (below) for every family. `get_config()` gives the classic-control (Pendulum-v1) defaults;
`PRESETS[family]` holds what differs for MuJoCo and the DeepMind Control Suite.
Actor and critic take `sparse.sparsity` unless `sparse.actor_sparsity` /
`sparse.critic_sparsity` are set (`--actor_sparsity`, `--critic_sparsity`).

Not matched yet (rigl `rl/tfagents/sac_train_eval.py` and its gins, for a study that needs them):
rewards scaled by reward_scale_factor 0.1; an L2 weight decay (1e-4 dense, 1e-6 sparse gins);
initial_collect_steps 1000 on MuJoCo where the preset here collects 10,000.
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

    # Per-method schedules: rigl/rl/tfagents/configs/sac_mujoco_sparse_config.gin (SET and RigL share its
    # mask_updater: update_freq 1000, init_drop_fraction 0.5, cosine, last_update_step 800,000 of 1M) and
    # sac_mujoco_pruning_config.gin (begin_step 200,000, end_step 800,000 of 1M, frequency 1000). No
    # reference gin for Pendulum or the DeepMind Control Suite: the same fractions.
    # sparse_init_rescale: init at each unit's sparse fan-in (the gins' init_masks.fixed_sparse_init = True).
    # structure (--structure): unstructured, fan_in (every neuron keeps the same number of inputs) or nm:N:M
    # (N of every M consecutive inputs; fixes the sparsity at 1 - N/M). dense_layers: layer paths kept dense
    # (fnmatch patterns, e.g. "q*/output"; dense_first_layer/dense_last_layer add each sub-network's first/last).
    # srigl: RigL's schedule plus gamma_sal, the neuron-ablation threshold (Lasby et al. 2023's default 0.3).
    # srste: N:M masks from |W| every step over the whole run and the pruned-weight decay lambda_W = 2e-4
    # (Zhou et al. 2021, eq. 6).
    config.sparse = ml_collections.ConfigDict(
        dict(method="rigl", sparsity=0.0,
             actor_sparsity=config_dict.placeholder(float), critic_sparsity=config_dict.placeholder(float),
             distribution="erk", dense_first_layer=False, dense_last_layer=False,
             structure="unstructured", dense_layers=(), sparse_init_rescale=True,
             set=dict(update_period=1_000, drop_fraction=0.5, start_fraction=0.0, end_fraction=0.8),
             rigl=dict(update_period=1_000, drop_fraction=0.5, start_fraction=0.0, end_fraction=0.8),
             srigl=dict(update_period=1_000, drop_fraction=0.5, start_fraction=0.0, end_fraction=0.8, ablation_threshold=0.3),
             srste=dict(update_period=1, start_fraction=0.0, end_fraction=1.0, decay=2e-4),
             prune=dict(update_period=1_000, start_fraction=0.2, end_fraction=0.8))
    )
    # ReDo recycles the online networks only (Dopamine labs/redo/tfagents/sac_train_eval.py:
    # reset_target_models=False); reset_target=True also gives the target critic the online values of every
    # rewritten entry. The studies use the default.
    config.redo = ml_collections.ConfigDict(
        dict(enabled=False, tau=0.1, period=1_000, batch_size=256, reset_target=False)
    )
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
