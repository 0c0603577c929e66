"""SAC defaults (docs/design.md section 5), with a preset per environment family.

Soft actor-critic with a learned temperature (Haarnoja et al. 2018, "Soft
Actor-Critic Algorithms and Applications"): 2x256 ReLU MLPs for the actor and
each of the twin critics, Adam 3e-4, gamma 0.99, batch 256, Polyak tau 0.005,
one gradient step per env step after `learning_starts` uniformly random steps,
target entropy -|A|. Sparse training follows Graesser et al. 2022's MuJoCo
gin files (below) for every family. `get_config()` gives the classic-control (Pendulum-v1) defaults;
`get_config(family)` applies `PRESETS[family]`, what differs for MuJoCo and the DeepMind Control Suite
(`--config=configs/sac.py:mujoco`).
Actor and critic take `sparse.sparsity` unless `sparse.actor_sparsity` /
`sparse.critic_sparsity` are set (`--actor_sparsity`, `--critic_sparsity`).

Not matched yet (rigl `rl/tfagents/sac_train_eval.py` and its gins, for a study that needs them):
rewards scaled by reward_scale_factor 0.1; an L2 weight decay (1e-4 dense, 1e-6 sparse gins);
initial_collect_steps 1000 on MuJoCo where the preset here collects 10,000.
"""

import ml_collections

from sparserl.configs import base


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
    config = base.get_config(agent="sac", env="Pendulum-v1", steps=15_000, eval_every=2_500, log_every=1_000,
                             checkpoint_every=5_000, per_network_sparsity=True)

    # The actor's trunk and each critic head (MLPs only: the critic reads the observation and the action); the
    # actor's output layer gives mean and log-std per action.
    base.add_network(config, hidden_sizes=(256, 256), activation="relu", cnn=False)
    config.learning_rate = 3e-4  # actor and critics
    config.temperature_learning_rate = 3e-4  # the temperature alpha's Adam
    config.gamma = 0.99  # discount
    config.tau = 0.005  # Polyak averaging of the target critic, every gradient step
    base.add_off_policy(config, batch_size=256)
    config.init_temperature = 1.0  # alpha at the start
    config.target_entropy_scale = 1.0  # target entropy = -scale * action_dim
    config.log_std_min = -5.0  # the actor's log-std range (tanh-rescaled into it)
    config.log_std_max = 2.0  # its upper end

    # Per-method schedules: rigl/rl/tfagents/configs/sac_mujoco_sparse_config.gin (SET and RigL share its
    # mask_updater: update_freq 1000, init_drop_fraction 0.5, cosine, last_update_step 800,000 of 1M) and
    # sac_mujoco_pruning_config.gin (begin_step 200,000, end_step 800,000 of 1M, frequency 1000). No
    # reference gin for Pendulum or the DeepMind Control Suite: the same fractions.
    base.add_schedules(config, update_period=1_000, drop_fraction=0.5, end_fraction=0.8, prune_update_period=1_000)
    # ReDo recycles the online networks only (Dopamine labs/redo/tfagents/sac_train_eval.py:
    # reset_target_models=False); the studies use the default redo.reset_target = False.
    return base.with_preset(config, PRESETS, preset)


def _continuous_control(env: str, steps: int) -> dict:
    """The MuJoCo and DeepMind Control Suite presets, which differ in env and length only: a replay buffer that
    holds the whole run (10^6 transitions, Haarnoja et al. 2018's table of hyperparameters, for a 10^6-step
    MuJoCo run), 10,000 random steps first, an evaluation every 10,000 steps."""
    return {
        "env": env,
        "steps": steps,
        "replay_capacity": steps,
        "learning_starts": 10_000,
        "eval_every": 10_000,
        "log_every": 5_000,
        "checkpoint_every": 50_000,
    }


PRESETS = {
    "classic": {},
    "mujoco": _continuous_control("HalfCheetah-v5", steps=1_000_000),
    "dmc": _continuous_control("dmc:cheetah-run", steps=500_000),
}
