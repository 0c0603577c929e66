"""A sparse network and its training state: the part every agent shares (Dopamine-style shared parts).

`SparseNetwork` is the static definition (flax module, sparse optimizer and a
metric name); `NetworkState` is its pytree state (params and the sparse
optimizer state, which holds the masks). Agents build their TrainState from
NetworkStates and call these functions for gradient steps, sparsity and
dormancy metrics, and ReDo, so no agent holds sparsity logic of its own
(DESIGN contract 4).
"""

from typing import Any, NamedTuple

import flax.linen as nn
import flax.struct
import jax
import optax

from sparserl import dormancy, networks
from sparserl.sparse import SparseOptimizer, SparseOptState, SparsityConfig, sparse_optimizer, sparsity_metrics


class SparseNetwork(NamedTuple):
    """A network definition. `name` prefixes its metrics ('' for an agent's only network, else 'actor', 'critic')."""

    module: nn.Module
    optimizer: SparseOptimizer
    name: str = ""

    def metric_name(self, kind: str) -> str:
        return f"{kind}/{self.name}" if self.name else kind


class NetworkState(flax.struct.PyTreeNode):
    params: Any
    opt_state: SparseOptState


def make_network(module: nn.Module, inner: optax.GradientTransformation, sparsity: SparsityConfig, name: str = "") -> SparseNetwork:
    return SparseNetwork(module, sparse_optimizer(inner, sparsity), name)


def init(network: SparseNetwork, key: jax.Array, *sample_inputs) -> NetworkState:
    """Initial params from the module's initializers, masked by the topology method's initial masks."""
    init_key, mask_key = jax.random.split(key)
    params = network.module.init(init_key, *sample_inputs)["params"]
    params, opt_state = network.optimizer.init(mask_key, params)
    return NetworkState(params, opt_state)


def apply(network: SparseNetwork, params: Any, *inputs):
    return network.module.apply({"params": params}, *inputs)


def apply_gradients(network: SparseNetwork, state: NetworkState, dense_grads: Any, step: jax.Array, key: jax.Array) -> NetworkState:
    params, opt_state = network.optimizer.apply_gradients(step, state.params, dense_grads, state.opt_state, key)
    return NetworkState(params, opt_state)


def scores(network: SparseNetwork, params: Any, *inputs) -> dict[str, jax.Array]:
    """Dormancy scores of every hidden layer on a batch of inputs (Sokar et al. 2023, eq. 1)."""
    _, captured = network.module.apply({"params": params}, *inputs, mutable=[networks.ACTIVATIONS])
    return dormancy.layer_scores(captured[networks.ACTIVATIONS])


def metrics(network: SparseNetwork, state: NetworkState, *inputs) -> dict[str, jax.Array]:
    """Per-layer and total sparsity and dormant fractions, named as in DESIGN contract 6."""
    return {
        **sparsity_metrics(state.opt_state.masks, network.metric_name("sparsity")),
        **dormancy.dormant_fractions(scores(network, state.params, *inputs), network=network.name or None),
    }


def recycle(network: SparseNetwork, state: NetworkState, key: jax.Array, tau: float, *inputs) -> tuple[NetworkState, dormancy.RecycleResult]:
    """ReDo (Sokar et al. 2023, Algorithm 1) on this network, scored on `inputs`."""
    result = dormancy.recycle(
        state.params,
        state.opt_state,
        scores(network, state.params, *inputs),
        key,
        init_params=lambda k: network.module.init(k, *inputs)["params"],
        chains=network.module.chains(),
        tau=tau,
    )
    return NetworkState(result.params, result.opt_state), result
