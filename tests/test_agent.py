"""sparserl.agent: the agent registry, network_module, sparsity_config and the kernels choice."""

import jax
import ml_collections
import numpy as np
import pytest

from sparserl.agent import AGENTS, kernels, network_module, sparsity_config
from sparserl.configs import dqn as dqn_config, ppo as ppo_config, sac as sac_config
from tests.helpers import hidden_outputs

MODULES = {"dqn": dqn_config, "sac": sac_config, "ppo": ppo_config}


def test_every_agent_has_a_config_module():
    assert sorted(MODULES) == sorted(AGENTS)


def test_cnn_takes_the_configured_activation():
    network = ml_collections.ConfigDict(dict(kind="cnn", width_multiplier=1.0, activation="tanh", conv_features=(4,),
                                             kernel_sizes=(2,), strides=(1,), dense_sizes=(8,)))
    hidden = hidden_outputs(network_module(network, 2), jax.random.normal(jax.random.key(1), (16, 3, 3, 1)))
    assert len(hidden) == 2
    for outputs in hidden:  # tanh: outputs in (-1, 1), some negative; ReLU gives none
        assert np.all(np.abs(outputs) < 1.0) and np.any(outputs < 0.0)
    with pytest.raises(ValueError, match="--config.network.activation: unknown activation 'gelu'; choose one of relu, tanh"):
        network_module(ml_collections.ConfigDict(dict(network.to_dict(), activation="gelu")), 2)


def test_sparsity_config_lets_each_method_read_its_own_block():
    sparse = dqn_config.get_config().sparse
    schedule = lambda resolved: (resolved.update_period, resolved.update_start, resolved.update_end)  # noqa: E731
    sparse.method = "srigl"
    resolved = sparsity_config(sparse, 1_000, 0.9)
    assert (resolved.method, resolved.structure, schedule(resolved), resolved.drop_fraction) == ("srigl", "fan_in", (1_000, 0, 750), 0.5)
    assert resolved.options == (("ablation_threshold", 0.3),)
    sparse.method = "prune"
    resolved = sparsity_config(sparse, 1_000, 0.9)
    assert (resolved.structure, schedule(resolved), resolved.options) == ("unstructured", (1_000, 200, 750), ())
    sparse.method, sparse.structure = "srste", "nm:2:4"
    resolved = sparsity_config(sparse, 1_000, 0.5)
    assert (resolved.structure, schedule(resolved), resolved.options) == ("nm:2:4", (1, 0, 1_000), (("decay", 2e-4),))
    sparse.structure = "fan_in"
    with pytest.raises(ValueError, match="--structure: --method=srste trains N:M"):
        sparsity_config(sparse, 1_000, 0.5)
    sparse.method, sparse.dense_layers = "static", ("q*/output",)
    resolved = sparsity_config(sparse, 1_000, 0.9)
    assert (resolved.structure, resolved.dense_layers, resolved.options) == ("fan_in", ("q*/output",), ())
    assert sparsity_config(sparse, 1_000, 0.0).method == "dense"


def test_kernels_run_condensed_only_with_constant_fan_in():
    config = dqn_config.get_config()
    config.sparse.sparsity = 0.9
    config.sparse.kernels = "auto"
    assert kernels(config.sparse) == "masked"  # unstructured masks
    config.sparse.structure = "fan_in"
    assert kernels(config.sparse) == "auto"
    for method in ("prune", "srigl"):  # prune shrinks the fan-in; SRigL's ablation gives survivors more than k
        config.sparse.method = method
        assert kernels(config.sparse) == "masked"
    config.sparse.kernels = "condensed"
    with pytest.raises(ValueError, match="--config.sparse.kernels: condensed needs constant fan-in"):
        kernels(config.sparse)
    config.sparse.kernels = "fast"
    with pytest.raises(ValueError, match="--config.sparse.kernels: unknown kernels 'fast'; choose one of masked, "):
        kernels(config.sparse)  # even where the masks would make it masked
