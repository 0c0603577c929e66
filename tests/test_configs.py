"""The configs: every preset against the reference values of Graesser et al. 2022's gin files
(google-research/rigl, `rigl/rl/`), each table row naming its file; the shared blocks of configs/base.py; the
presets."""

import jax
import ml_collections
import numpy as np
import pytest

from sparserl.configs import base, dqn as dqn_config, ppo as ppo_config, sac as sac_config
from sparserl.configs.base import kernels, network_module, off_policy_updates, remedy_period, sparsity_config
from sparserl.errors import ConfigError
from sparserl.sparse import condensed_native
from sparserl.sparse.config import Settings, Window
from tests.helpers import hidden_outputs

MODULES = {"dqn": dqn_config, "sac": sac_config, "ppo": ppo_config}


def preset(agent: str, family: str):
    """get_config(family): the family's preset applied, as the training entry point applies it."""
    return MODULES[agent].get_config(family)


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
    assert {name: getattr(resolved.settings, name) for name in expected} == expected


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


@pytest.mark.parametrize("agent", sorted(MODULES))
def test_every_agent_config_extends_the_base_blocks(agent):
    """The run, `sparse` and `redo` fields of configs/base.py, with their shared defaults, in every agent config."""
    config = MODULES[agent].get_config()
    assert config.agent == agent
    assert (config.seed, config.num_seeds, config.eval_episodes, config.checkpoints_to_keep) == (0, 1, 10, 2)
    assert (config.sparse.method, config.sparse.sparsity, config.sparse.distribution) == ("rigl", 0.0, "erk")
    assert (config.redo.enabled, config.redo.remedy, config.redo.tau, config.redo.period) == (False, "redo", 0.1, None)
    assert (config.redo.shrink, config.redo.perturb, config.redo.reset_layers) == (0.8, 0.2, 1)
    assert remedy_period(config.redo) == 1_000
    assert set(config.sparse.set) == set(config.sparse.rigl) == {"update_period", "drop_fraction", "start_fraction",
                                                                  "end_fraction"}
    assert ("actor_sparsity" in config.sparse) == (agent != "dqn")
    off_policy = agent != "ppo"
    assert ("redo.batch_size" in _fields(config)) == off_policy == ("dormancy.batch_size" in _fields(config))


def _fields(config, prefix=""):
    names = []
    for name, value in config.items():
        names += _fields(value, f"{prefix}{name}.") if isinstance(value, ml_collections.ConfigDict) else [f"{prefix}{name}"]
    return names


@pytest.mark.parametrize("agent", sorted(MODULES))
def test_a_preset_is_its_table_applied_to_the_bare_defaults(agent):
    module = MODULES[agent]
    for family, table in module.PRESETS.items():
        config = module.get_config(family)
        bare = module.get_config()
        for field in _fields(bare):
            expected = table.get(field, _get(bare, field))
            assert _get(config, field) == (tuple(expected) if isinstance(expected, list) else expected), (family, field)


def _get(config, field):
    for part in field.split("."):
        config = config[part]
    return config


def test_an_unknown_preset_or_a_preset_of_a_missing_field_is_refused():
    with pytest.raises(ValueError, match="unknown preset 'nope'; choose one of classic, minatar, atari"):
        dqn_config.get_config("nope")
    with pytest.raises(KeyError, match="no_such_field"):
        base.with_preset(dqn_config.get_config(), {"typo": {"no_such_field": 1}}, "typo")


def test_dormancy_is_measured_on_sokar_et_al_batch_of_256_with_or_without_redo():
    """Dopamine labs/redo: batch_size_statistics = 256, for the logged fractions as for recycling."""
    for agent in ("dqn", "sac"):
        config = MODULES[agent].get_config()
        assert config.dormancy.batch_size == config.redo.batch_size == 256 and not config.redo.enabled


def test_ppo_atari_network_is_cleanrl_nature_cnn_with_relu():
    """CleanRL ppo_atari.py: Conv(32, 8, 4), Conv(64, 4, 2), Conv(64, 3, 1), Linear(512), each followed by ReLU."""
    network = ppo_config.get_config("atari").network
    assert (network.kind, network.activation, tuple(network.conv_features), tuple(network.kernel_sizes),
            tuple(network.strides), tuple(network.dense_sizes)) == ("cnn", "relu", (32, 64, 64), (8, 4, 3), (4, 2, 1), (512,))


# What the agents build honours the network fields.


# What the agents read from their configs: network_module, sparsity_config and the kernels choice.

def test_cnn_takes_the_configured_activation():
    network = ml_collections.ConfigDict(dict(kind="cnn", width_multiplier=1.0, activation="tanh", conv_features=(4,),
                                             kernel_sizes=(2,), strides=(1,), dense_sizes=(8,)))
    hidden = hidden_outputs(network_module(network, 2), jax.random.normal(jax.random.key(1), (16, 3, 3, 1)))
    assert len(hidden) == 2
    for outputs in hidden:  # tanh: outputs in (-1, 1), some negative; ReLU gives none
        assert np.all(np.abs(outputs) < 1.0) and np.any(outputs < 0.0)
    with pytest.raises(ConfigError) as error:
        network_module(ml_collections.ConfigDict(dict(network.to_dict(), activation="gelu")), 2)
    assert error.value.field == "network.activation"
    assert error.value.reason.startswith("unknown activation 'gelu'; choose one of relu, tanh")
    with pytest.raises(ConfigError) as error:
        network_module(ml_collections.ConfigDict(dict(network.to_dict(), kind="rnn")), 2)
    assert (error.value.field, error.value.reason) == ("network.kind", "unknown kind 'rnn'; choose one of mlp, cnn")


def test_sparsity_config_lets_each_method_read_its_own_block():
    sparse = dqn_config.get_config().sparse
    schedule = lambda resolved: (resolved.settings.update_period, resolved.settings.update_start,  # noqa: E731
                                 resolved.settings.update_end)
    sparse.method = "srigl"
    resolved = sparsity_config(sparse, 1_000, 0.9)
    assert (resolved.method, resolved.structure, schedule(resolved), resolved.settings.drop_fraction) == (
        "srigl", "fan_in", (1_000, 0, 750), 0.5)
    assert resolved.settings.ablation_threshold == 0.3
    sparse.method = "prune"
    resolved = sparsity_config(sparse, 1_000, 0.9)
    assert (resolved.structure, schedule(resolved), type(resolved.settings)) == ("unstructured", (1_000, 200, 750), Window)
    sparse.method, sparse.structure = "srste", "nm:2:4"
    resolved = sparsity_config(sparse, 1_000, 0.5)
    assert (resolved.structure, schedule(resolved), resolved.settings.decay) == ("nm:2:4", (1, 0, 1_000), 2e-4)
    sparse.structure = "fan_in"
    with pytest.raises(ConfigError) as error:
        sparsity_config(sparse, 1_000, 0.5)
    assert error.value.field == "sparse.structure" and error.value.reason.startswith("--method=srste trains N:M")
    sparse.method, sparse.dense_layers = "static", ("q*/output",)
    resolved = sparsity_config(sparse, 1_000, 0.9)
    assert (resolved.structure, resolved.dense_layers, resolved.settings) == ("fan_in", ("q*/output",), Settings())
    assert sparsity_config(sparse, 1_000, 0.0).method == "dense"


def test_sparsity_config_names_the_field_of_a_wrong_method_block():
    sparse = dqn_config.get_config().sparse
    sparse.rigl.update_period = 0
    with pytest.raises(ConfigError) as error:
        sparsity_config(sparse, 1_000, 0.9)
    assert (error.value.field, error.value.reason) == ("sparse.rigl.update_period", "must be >= 1, got 0")
    sparse.method = "srigl"
    del sparse.srigl["ablation_threshold"]
    with pytest.raises(ConfigError) as error:
        sparsity_config(sparse, 1_000, 0.9)
    assert error.value.field == "sparse.srigl.ablation_threshold" and error.value.reason.startswith("missing")


@pytest.mark.parametrize("native_reason", [None, "native kernels need a C++ compiler: g++ is not on PATH"])
def test_auto_is_native_wherever_native_can_run(monkeypatch, native_reason):
    """The default "auto": native on fan_in masks of a constant-fan-in method where native can run; without it,
    XLA's rule (SRigL, whose ablated layers only native kernels run: masked); masked for other structures."""
    monkeypatch.setattr(condensed_native, "unavailable_reason", lambda: native_reason)
    config = dqn_config.get_config()
    config.sparse.sparsity = 0.9
    assert config.sparse.kernels == "auto"
    assert kernels(config.sparse) == "masked"  # unstructured masks
    config.sparse.structure = "fan_in"
    for method, expected in (("static", "auto"), ("rigl", "auto"), ("prune", "auto")):
        config.sparse.method = method
        assert kernels(config.sparse) == ("native" if native_reason is None else expected), method
    config.sparse.method = "srigl"
    assert kernels(config.sparse) == ("native" if native_reason is None else "masked")


def test_kernels_run_condensed_only_with_constant_fan_in():
    config = dqn_config.get_config()
    config.sparse.sparsity = 0.9
    config.sparse.structure = "fan_in"
    config.sparse.method = "srigl"
    config.sparse.kernels = "condensed"
    with pytest.raises(ConfigError) as error:
        kernels(config.sparse)
    assert error.value.field == "sparse.kernels" and error.value.reason == (
        "condensed cannot run --method=srigl, whose ablated layers keep different fan-ins that only native kernels "
        "run; choose native, masked or auto")
    config.sparse.method = "srste"
    with pytest.raises(ConfigError) as error:
        kernels(config.sparse)
    assert error.value.field == "sparse.kernels" and error.value.reason == (
        "condensed needs fan_in masks and one sparsity level (--config.sparse.structure=fan_in, --method one of "
        "static, set, rigl, prune, srigl)")
    config.sparse.kernels = "fast"
    with pytest.raises(ConfigError) as error:
        kernels(config.sparse)  # even where the masks would make it masked
    assert error.value.field == "sparse.kernels"
    assert error.value.reason.startswith("unknown kernels 'fast'; choose one of masked, ")


@pytest.mark.parametrize("fields, field, reason", [
    (dict(gradient_steps=0), "gradient_steps", "must be >= 1, got 0"),
    (dict(num_envs=0), "num_envs", "must be >= 1, got 0"),
    (dict(num_envs=3, train_every=4), "num_envs", "3 must divide --config.train_every (4) or be a multiple of it"),
])
def test_off_policy_updates_names_the_field_it_cannot_use(fields, field, reason):
    config = dqn_config.get_config()
    config.update(fields)
    with pytest.raises(ConfigError) as error:
        off_policy_updates(config)
    assert (error.value.field, error.value.reason) == (field, reason)
