"""PPO defaults (DESIGN section 5), with a preset per environment family.

`get_config()` holds the PPO paper's MuJoCo defaults (Schulman et al. 2017,
table 3; CleanRL `ppo_continuous_action.py`): separate 2x64 tanh actor and
critic, 2048 env steps per rollout, minibatches of 64, 10 epochs, clip 0.2,
GAE lambda 0.95, Adam 3e-4 (eps 1e-5) linearly decayed, grad-norm clip 0.5
(per network; `clip_grad_norm_jointly` for the references' joint clip).
`get_config(family)` applies `PRESETS[family]`, what differs
(`--config=configs/ppo.py:atari`): classic control follows CleanRL's
CartPole PPO (`ppo.py`: 4 envs x 128 steps, 4 minibatches, 4 epochs, lr
2.5e-4, entropy 0.01); Atari follows the PPO paper's Atari settings (CleanRL
`ppo_atari.py`: 8 envs x 128 steps, 4 epochs, 4 minibatches, lr 2.5e-4, clip
0.1, Nature CNN, ReLU). The training entry point takes the preset of the
env's family unless one is named, then flags, then `--config.<field>=value`.

Sparse training follows Graesser et al. 2022's PPO MuJoCo gin files (below),
counted in gradient (minibatch) steps. The actor and critic take
`sparse.actor_sparsity` / `sparse.critic_sparsity` when set, else
`sparse.sparsity`. Not matched yet: the gins' L2 weight decay (1e-6 dense,
1e-4 sparse) on rigl's TF-Agents PPO.
"""

import ml_collections

from sparserl.configs import base


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
    config = base.get_config(agent="ppo", env="CartPole-v1", steps=1_000_000, eval_every=50_000, log_every=10_000,
                             checkpoint_every=100_000, per_network_sparsity=True)

    base.add_network(config, hidden_sizes=(64, 64), activation="tanh", cnn=True)  # the actor and the critic each
    config.num_envs = 1  # envs per seed
    config.rollout_steps = 2_048  # steps per env in one rollout: a rollout holds num_envs * rollout_steps transitions
    config.num_minibatches = 32  # minibatch size = num_envs * rollout_steps / num_minibatches (64 here)
    config.update_epochs = 10  # passes over each rollout
    config.learning_rate = 3e-4  # Adam, actor and critic
    config.anneal_learning_rate = True  # linear decay to 0 over the run's gradient steps
    config.adam_eps = 1e-5  # CleanRL's (PyTorch's default is 1e-8)
    config.max_grad_norm = 0.5  # global-norm gradient clip
    # True clips the actor and critic gradients together, as CleanRL, SB3 and rigl's TF-Agents PPO
    # (ppo_train_eval.py: tf.clip_by_global_norm over all variables) do. Default False, each network on its
    # own: measured with joint clipping, the 90%-sparse actor of Acrobot-v1 seed 1 kept a uniform policy for
    # 20k steps (eval -500, entropy ln 3; -176 and -228 with per-network clipping): the critic's large
    # value gradients scale the sparse actor's small ones below Adam's eps (1e-5).
    config.clip_grad_norm_jointly = False
    config.gamma = 0.99  # discount
    config.gae_lambda = 0.95  # GAE lambda (Schulman et al. 2016)
    config.clip_coef = 0.2  # the surrogate's probability-ratio clip
    config.clip_value_loss = True  # clip the value loss around the old values, with clip_coef
    config.vf_coef = 0.5  # value-loss weight
    config.ent_coef = 0.0  # entropy-bonus weight
    config.normalize_advantages = True  # per minibatch
    config.normalize_observations = False  # running mean/variance (continuous control presets)
    config.observation_clip = 10.0  # normalised observations are clipped to +-this
    config.log_std_init = 0.0  # the Gaussian policy's initial log std (continuous actions)

    # Per-method schedules: rigl/rl/tfagents/configs/ppo_mujoco_sparse_config.gin (SET and RigL share its
    # mask_updater: update_freq 250, init_drop_fraction 0.3, cosine, last_update_step 120,000 of 156,480
    # gradient steps, "end at 75%") and ppo_mujoco_pruning_config.gin (begin_step 32,000, end_step 120,000,
    # "~20%" and "~75%", frequency 500). No reference gin for the other families: the same, ending at 80%
    # for Atari and MinAtar as the DQN Atari gins do.
    base.add_schedules(config, update_period=250, drop_fraction=0.3, end_fraction=0.75, prune_update_period=500)
    # ReDo scores neurons on the whole rollout (no replay): no redo.batch_size.
    return base.with_preset(config, PRESETS, preset)


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
        "network.activation": "relu",  # CleanRL ppo_atari.py's nn.ReLU
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
        "network.activation": "relu",  # CleanRL ppo_atari.py's nn.ReLU
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
