"""PPO defaults (DESIGN section 5), with a preset per environment family.

`get_config()` holds the PPO paper's MuJoCo defaults (Schulman et al. 2017,
table 3; CleanRL `ppo_continuous_action.py`): separate 2x64 tanh actor and
critic, 2048 env steps per rollout, minibatches of 64, 10 epochs, clip 0.2,
GAE lambda 0.95, Adam 3e-4 (eps 1e-5) linearly decayed, grad-norm clip 0.5
(per network; `clip_grad_norm_jointly` for the references' joint clip).
`PRESETS[family]` holds what differs: classic control follows CleanRL's
CartPole PPO (`ppo.py`: 4 envs x 128 steps, 4 minibatches, 4 epochs, lr
2.5e-4, entropy 0.01); Atari follows the PPO paper's Atari settings (CleanRL
`ppo_atari.py`: 8 envs x 128 steps, 4 epochs, 4 minibatches, lr 2.5e-4, clip
0.1, Nature CNN). The training entry point applies the preset of the chosen
env, then flags, then `--config.<field>=value`.

Sparse training follows Graesser et al. 2022's PPO MuJoCo gin files (below),
counted in gradient (minibatch) steps. The actor and critic take
`sparse.actor_sparsity` / `sparse.critic_sparsity` when set, else
`sparse.sparsity`. Not matched yet: the gins' L2 weight decay (1e-6 dense,
1e-4 sparse) on rigl's TF-Agents PPO.
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.agent = "ppo"
    config.env = "CartPole-v1"
    config.steps = 1_000_000
    config.seed = 0
    config.num_seeds = 1
    config.eval_every = 50_000
    config.eval_episodes = 10
    config.log_every = 10_000
    config.checkpoint_every = 100_000
    config.checkpoints_to_keep = 2

    config.network = ml_collections.ConfigDict(
        dict(kind="mlp", hidden_sizes=(64, 64), width_multiplier=1.0, activation="tanh",
             conv_features=(32, 64, 64), kernel_sizes=(8, 4, 3), strides=(4, 2, 1), dense_sizes=(512,))
    )
    config.num_envs = 1  # envs per seed
    config.rollout_steps = 2_048  # steps per env in one rollout: a rollout holds num_envs * rollout_steps transitions
    config.num_minibatches = 32  # minibatch size = num_envs * rollout_steps / num_minibatches (64 here)
    config.update_epochs = 10
    config.learning_rate = 3e-4
    config.anneal_learning_rate = True  # linear decay to 0 over the run's gradient steps
    config.adam_eps = 1e-5
    config.max_grad_norm = 0.5
    # True clips the actor and critic gradients together, as CleanRL, SB3 and rigl's TF-Agents PPO
    # (ppo_train_eval.py: tf.clip_by_global_norm over all variables) do. Default False, each network on its
    # own: measured with joint clipping, the 90%-sparse actor of Acrobot-v1 seed 1 kept a uniform policy for
    # 20k steps (eval -500, entropy ln 3; -176 and -228 with per-network clipping): the critic's large
    # value gradients scale the sparse actor's small ones below Adam's eps (1e-5).
    config.clip_grad_norm_jointly = False
    config.gamma = 0.99
    config.gae_lambda = 0.95
    config.clip_coef = 0.2
    config.clip_value_loss = True
    config.vf_coef = 0.5
    config.ent_coef = 0.0
    config.normalize_advantages = True
    config.normalize_observations = False
    config.observation_clip = 10.0
    config.log_std_init = 0.0

    # Per-method schedules: rigl/rl/tfagents/configs/ppo_mujoco_sparse_config.gin (SET and RigL share its
    # mask_updater: update_freq 250, init_drop_fraction 0.3, cosine, last_update_step 120,000 of 156,480
    # gradient steps, "end at 75%") and ppo_mujoco_pruning_config.gin (begin_step 32,000, end_step 120,000,
    # "~20%" and "~75%", frequency 500). No reference gin for the other families: the same, ending at 80%
    # for Atari and MinAtar as the DQN Atari gins do.
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
             set=dict(update_period=250, drop_fraction=0.3, start_fraction=0.0, end_fraction=0.75),
             rigl=dict(update_period=250, drop_fraction=0.3, start_fraction=0.0, end_fraction=0.75),
             srigl=dict(update_period=250, drop_fraction=0.3, start_fraction=0.0, end_fraction=0.75, ablation_threshold=0.3),
             srste=dict(update_period=1, start_fraction=0.0, end_fraction=1.0, decay=2e-4),
             prune=dict(update_period=500, start_fraction=0.2, end_fraction=0.75))
    )
    config.redo = ml_collections.ConfigDict(dict(enabled=False, tau=0.1, period=1_000, batch_size=256))
    return config


PRESETS = {
    "classic": {
        "steps": 100_000,
        "eval_every": 10_000,
        "log_every": 2_048,
        "checkpoint_every": 10_000,
        "num_envs": 4,
        "rollout_steps": 128,
        "num_minibatches": 4,
        "update_epochs": 4,
        "learning_rate": 2.5e-4,
        "ent_coef": 0.01,
    },
    "mujoco": {
        "env": "HalfCheetah-v5",
        "steps": 1_000_000,
        "eval_every": 50_000,
        "normalize_observations": True,
    },
    "dmc": {
        "env": "dmc:cheetah-run",
        "steps": 1_000_000,
        "eval_every": 50_000,
        "normalize_observations": True,
    },
    "atari": {
        "env": "ALE/Pong-v5",
        "steps": 10_000_000,
        "eval_every": 250_000,
        "log_every": 10_000,
        "checkpoint_every": 250_000,
        "network.kind": "cnn",
        "num_envs": 8,
        "rollout_steps": 128,
        "num_minibatches": 4,
        "update_epochs": 4,
        "learning_rate": 2.5e-4,
        "clip_coef": 0.1,
        "ent_coef": 0.01,
        "sparse.set.end_fraction": 0.8,
        "sparse.rigl.end_fraction": 0.8,
        "sparse.srigl.end_fraction": 0.8,
        "sparse.prune.end_fraction": 0.8,
    },
    "minatar": {
        "env": "MinAtar/Breakout-v1",
        "steps": 10_000_000,
        "eval_every": 250_000,
        "log_every": 10_000,
        "network.kind": "cnn",
        "network.conv_features": (16,),
        "network.kernel_sizes": (3,),
        "network.strides": (1,),
        "network.dense_sizes": (128,),
        "num_envs": 8,
        "rollout_steps": 128,
        "num_minibatches": 4,
        "update_epochs": 4,
        "learning_rate": 2.5e-4,
        "clip_coef": 0.1,
        "ent_coef": 0.01,
        "sparse.set.end_fraction": 0.8,
        "sparse.rigl.end_fraction": 0.8,
        "sparse.srigl.end_fraction": 0.8,
        "sparse.prune.end_fraction": 0.8,
    },
}
