"""Parameter counts of an agent's trained networks, and the width multiplier of a parameter-matched dense baseline.

Graesser et al. 2022 compare sparse networks with dense networks of the same
parameter count. Here the dense network's hidden widths are scaled down
(`network.width_multiplier`, `sparserl.networks.scaled_width`) until it has no
more parameters than the sparse network keeps. Counts cover every trained network of the agent (DQN's online
Q-network; SAC's actor and twin critics; PPO's actor and critic), biases
included, target networks excluded (`sparserl.metrics_log.network_params`).
"""

import math

import jax
import ml_collections

from sparserl import metrics_log
from sparserl.agent_contract import agent_module
from sparserl.envs import EnvSpec


def _agent(config: ml_collections.ConfigDict, env_spec: EnvSpec):
    """The agent `config` makes on `env_spec` (`make` of agents/<agent>.py)."""
    return agent_module(config.agent).make(config, env_spec)


def dense_parameters(config: ml_collections.ConfigDict, env_spec: EnvSpec) -> int:
    """Every weight and bias of the agent's trained networks at `config.network.width_multiplier` (shapes only)."""
    state = jax.eval_shape(_agent(config, env_spec).init, jax.random.key(0))
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(metrics_log.network_params(state)))


def sparse_parameters(config: ml_collections.ConfigDict, env_spec: EnvSpec) -> int:
    """The weights the agent keeps at its target sparsity: active mask entries of its trained networks.

    The masks are those a static network starts with (the same per-layer
    distribution every method reaches; `prune` starts dense and ends there).
    """
    config = config.copy_and_resolve_references()
    config.sparse.method = "static"
    state = jax.jit(_agent(config, env_spec).init)(jax.random.key(0))
    masks = {name: getattr(state, name).opt_state.masks for name in metrics_log.network_params(state)}
    return int(sum(int(mask.sum()) for mask in jax.tree.leaves(masks)))


def matched_width_multiplier(config: ml_collections.ConfigDict, env_spec: EnvSpec) -> tuple[float, int, int]:
    """(multiplier, dense parameters at it, sparse parameters): the widest dense network with at most as many
    parameters as `config`'s sparse one.

    Hidden widths are round(width * multiplier); the multiplier is k / W for
    the widest hidden layer W, so that layer gets exactly k units. k is found
    by bisection (the count grows with k).
    """
    target = sparse_parameters(config, env_spec)
    network = config.network
    widest = max([*network.conv_features, *network.dense_sizes] if network.kind == "cnn" else network.hidden_sizes)

    def count(units: int) -> int:
        dense = config.copy_and_resolve_references()
        dense.sparse.method, dense.sparse.sparsity = "dense", 0.0
        for name in ("actor_sparsity", "critic_sparsity"):
            if name in dense.sparse:
                dense.sparse[name] = None
        dense.network.width_multiplier = units / widest
        return dense_parameters(dense, env_spec)

    low, high = 1, widest  # count(low) <= target is assumed; count(high) is the full dense network
    if count(high) <= target:
        return 1.0, count(high), target
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if count(middle) <= target else (low, middle)
    return low / widest, count(low), target
