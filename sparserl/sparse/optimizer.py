"""The optax wrapper that keeps a network sparse (docs/design.md contract 3).

One step, all inside jit and vmappable over seeds:

    dense grads (kept for RigL growth) -> grads * mask -> inner optax ->
    updates * mask -> apply -> on schedule (lax.cond): new masks from the
    topology method, optimizer moments of every changed connection zeroed
    (grown weights are already 0) -> params * mask.

Like jaxpruner, sparsity wraps an optax transformation; the wrapper also owns
the masks, which live in its state next to the inner optimizer state and the
topology method's own state. The method's hooks (`Topology.train_params_and_grads`,
`masked_updates`, `finish`) decide which weights the inner optimizer trains;
the defaults are the steps above, SR-STE and mask decay train dense weights
behind the mask.
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from sparserl.sparse import masks as mask_lib
from sparserl.sparse.config import SparsityConfig
from sparserl.sparse.distributions import layer_sparsities, masked_layers
from sparserl.sparse.topology import get_topology


class SparseOptState(NamedTuple):
    inner: optax.OptState
    masks: Any
    topology: Any = ()  # the topology method's own state (`Topology.init_state`); () for most methods


def map_moments(opt_state: Any, params_like: Any, fn: Callable[..., Any], *others: Any) -> Any:
    """`fn` applied to every params-shaped part of an optax state (Adam's mu and nu, ...), a tree shaped like
    `params_like`, and to the same parts of the optax states `others`: fn(part, *others' parts). Scalars such as
    Adam's step count are left as `opt_state` holds them."""
    return _map_params_shaped(opt_state, params_like, fn, others, lambda node: node)


def map_moment_parts(opt_state: Any, params_like: Any, fn: Callable[..., Any], *others: Any) -> Any:
    """`map_moments` with an empty tuple in place of everything but the params-shaped parts (Adam's step count): a
    store of values per moment (`sparserl.kept_counts`' slots) that shares no leaf with the state it came from (and
    no None, which a checkpoint would take for a leaf)."""
    return _map_params_shaped(opt_state, params_like, fn, others, lambda node: ())


def _map_params_shaped(opt_state: Any, params_like: Any, fn: Callable[..., Any], others: tuple,
                       elsewhere: Callable[[Any], Any]) -> Any:
    params_structure = jax.tree.structure(params_like)

    def is_params_shaped(node) -> bool:
        return jax.tree.structure(node) == params_structure

    return jax.tree.map(lambda node, *other: fn(node, *other) if is_params_shaped(node) else elsewhere(node),
                        opt_state, *others, is_leaf=is_params_shaped)


def zero_moments(opt_state: Any, params_like: Any, reset: Any) -> Any:
    """Zeroes, in every params-shaped part of an optax state (Adam's mu and nu, ...), the entries where `reset` is True.

    Scalars such as Adam's step count are left untouched.
    """
    return map_moments(opt_state, params_like, lambda node: jax.tree.map(
        lambda moment, zero: jnp.where(zero, jnp.zeros_like(moment), moment), node, reset))


class SparseOptimizer(NamedTuple):
    """`init(key, params) -> (masked params, state)`;
    `apply_gradients(step, params, dense_grads, state, key) -> (params, state)`; `inner`, the wrapped optax
    transformation (which `sparserl.sparse_network` also runs on kept values alone)."""

    init: Callable[[jax.Array, Any], tuple[Any, SparseOptState]]
    apply_gradients: Callable[[jax.Array, Any, Any, SparseOptState, jax.Array], tuple[Any, SparseOptState]]
    config: SparsityConfig
    inner: optax.GradientTransformation


def sparse_optimizer(inner: optax.GradientTransformation, config: SparsityConfig) -> SparseOptimizer:
    """Wraps `inner` so that params, updates and moments stay on the masks chosen by `config.method`.

    Raises TypeError unless `config.settings` are of the method's `Topology.settings_type`."""
    topology = get_topology(config.method)
    if type(config.settings) is not topology.settings_type:
        raise TypeError(f"method {config.method!r} takes {topology.settings_type.__name__} settings, "
                        f"not {type(config.settings).__name__}")

    def init(key: jax.Array, params: Any) -> tuple[Any, SparseOptState]:
        masks = topology.init_masks(key, params, layer_sparsities(params, config), config.parsed_structure)
        topology_state = topology.init_state(params, masks)
        params = mask_lib.apply_masks(params, masks)
        return params, SparseOptState(inner.init(params), masks, topology_state)

    def apply_gradients(step, params, dense_grads, state: SparseOptState, key):
        masks = state.masks
        trained, grads = topology.train_params_and_grads(step, params, dense_grads, masks, state.topology, config)
        updates, inner_state = inner.update(grads, state.inner, trained)
        if topology.masked_updates:
            updates = mask_lib.apply_masks(updates, masks, masked_layers(trained, config))
        trained = optax.apply_updates(trained, updates)

        def change_topology(operands):
            trained, inner_state, masks, topology_state = operands
            # Grown connections start at 0 without a write: inactive weights are 0 and their updates are masked.
            new_masks, topology_state = topology.update(
                key, step, trained, dense_grads, masks, topology_state, layer_sparsities(trained, config), config)
            if topology.reset_moments:
                inner_state = zero_moments(inner_state, trained, jax.tree.map(jnp.not_equal, new_masks, masks))
            return trained, inner_state, new_masks, topology_state

        trained, inner_state, masks, topology_state = jax.lax.cond(
            topology.is_update_step(step, config), change_topology, lambda operands: operands,
            (trained, inner_state, masks, state.topology),
        )
        params, topology_state = topology.finish(step, trained, masks, topology_state, config)
        return params, SparseOptState(inner_state, masks, topology_state)

    return SparseOptimizer(init, apply_gradients, config, inner)
