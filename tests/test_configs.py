"""Every preset against the reference values of Graesser et al. 2022's gin files (google-research/rigl,
`rigl/rl/`), each table row naming its file."""

import pytest

from configs import dqn as dqn_config, ppo as ppo_config, sac as sac_config
from sparserl.agent import sparsity_config

MODULES = {"dqn": dqn_config, "sac": sac_config, "ppo": ppo_config}


def preset(agent: str, family: str):
    """get_config() with the family's preset applied, as the training entry point applies it."""
    module = MODULES[agent]
    config = module.get_config()
    for field, value in module.PRESETS[family].items():
        *parents, name = field.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        node[name] = value
    return config


# (agent, family): per method (update period, initial drop fraction, start, end as fractions of the run's
# gradient steps), from the file in the comment. SET and RigL share one mask_updater block in every gin.
SPARSE_REFERENCE = {
    # tfagents/configs/dqn_gym_sparse_config.gin: update_freq 1000, init_drop_fraction 0.5, last_update_step
    # 75,000 of num_iterations 100,000; dqn_gym_pruning_config.gin: begin 20,000, end 75,000, frequency 1000.
    ("dqn", "classic"): {"set": (1000, 0.5, 0.0, 0.75), "rigl": (1000, 0.5, 0.0, 0.75), "prune": (1000, None, 0.2, 0.75)},
    # sparsetrain_configs/dqn_atari_{set,rigl}.gin: frequency 5000, drop_fraction 0.3, end_step 2M of 2.5M;
    # dqn_atari_prune.gin: begin_step 500k, end_step 2M of 2.5M, frequency 5000.
    ("dqn", "atari"): {"set": (5000, 0.3, 0.0, 0.8), "rigl": (5000, 0.3, 0.0, 0.8), "prune": (5000, None, 0.2, 0.8)},
    # tfagents/configs/sac_mujoco_sparse_config.gin: update_freq 1000, init_drop_fraction 0.5, last_update_step
    # 800,000 of 1M; sac_mujoco_pruning_config.gin: begin 200,000, end 800,000, frequency 1000.
    ("sac", "mujoco"): {"set": (1000, 0.5, 0.0, 0.8), "rigl": (1000, 0.5, 0.0, 0.8), "prune": (1000, None, 0.2, 0.8)},
    # tfagents/configs/ppo_mujoco_sparse_config.gin: update_freq 250, init_drop_fraction 0.3, "end at 75%"
    # (last_update_step 120,000 of 156,480); ppo_mujoco_pruning_config.gin: "start at ~20%, end at ~75%"
    # (32,000 and 120,000), frequency 500.
    ("ppo", "mujoco"): {"set": (250, 0.3, 0.0, 0.75), "rigl": (250, 0.3, 0.0, 0.75), "prune": (500, None, 0.2, 0.75)},
}


@pytest.mark.parametrize("agent, family", sorted(SPARSE_REFERENCE))
def test_sparse_schedules_match_the_gin_files(agent, family):
    sparse = preset(agent, family).sparse
    for method, (period, drop_fraction, start, end) in SPARSE_REFERENCE[(agent, family)].items():
        block = sparse[method]
        assert (block.update_period, block.start_fraction, block.end_fraction) == (period, start, end), method
        if drop_fraction is not None:
            assert block.drop_fraction == drop_fraction, method
    assert sparse.sparse_init_rescale  # every sparse gin sets init_masks.fixed_sparse_init = True
    assert not sparse.dense_first_layer and not sparse.dense_last_layer  # wrap_all_layers, sparse_output_layer
    assert sparse.distribution == "erk"  # mask_init_method = 'erdos_renyi_kernel'


@pytest.mark.parametrize("method, expected", [
    ("set", dict(update_period=5000, drop_fraction=0.3, update_start=0, update_end=2_000_000)),
    ("rigl", dict(update_period=5000, drop_fraction=0.3, update_start=0, update_end=2_000_000)),
    ("prune", dict(update_period=5000, update_start=500_000, update_end=2_000_000)),
])
def test_atari_schedules_in_gradient_steps(method, expected):
    """dqn_atari_*.gin count 2.5M optimizer steps (10M agent steps, one update every 4): the windows in steps."""
    config = preset("dqn", "atari")
    config.sparse.method = method
    resolved = sparsity_config(config.sparse, 2_500_000, 0.9)
    assert {name: getattr(resolved, name) for name in expected} == expected


def test_dqn_classic_control_protocol():
    """tfagents/configs/dqn_gym_dense_config.gin and dqn_train_eval.py's train_eval defaults."""
    config = preset("dqn", "classic")
    assert config.steps == 100_000  # num_iterations, one env step per train step
    assert tuple(config.network.hidden_sizes) == (512, 512)  # fc_layer_params
    assert config.target_update_period == 100 and config.batch_size == 128
    assert config.learning_rate == 1e-3 and config.adam_eps == 1e-7  # keras Adam's default epsilon
    assert config.weight_decay == 1e-6  # an L2 penalty (agents/dqn.py hidden_kernel_l2)
    assert config.gamma == 0.99 and config.replay_capacity == 100_000 and config.learning_starts == 1_000
    assert config.train_every == 1
    assert config.td_loss == "mse"  # element_wise_squared_loss
    assert (config.epsilon_end, config.epsilon_decay_steps, config.eval_epsilon) == (0.01, 1, 0.0)  # epsilon_greedy
    assert not config.reward_clip


def test_redo_recycles_the_online_networks_only_by_default():
    """Dopamine labs/redo: recycled DQN never touches the target; SAC's reset_target_models defaults to False."""
    for agent in ("dqn", "sac"):
        assert MODULES[agent].get_config().redo.reset_target is False
