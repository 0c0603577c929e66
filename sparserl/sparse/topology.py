"""Topology methods by name: dense, static, SET, RigL and gradual magnitude pruning.

Each method says how masks start (`init_masks`), when they change
(`is_update_step`) and how (`update_masks`). The optimizer wrapper in
`sparserl.sparse.optimizer` calls them inside the jitted update; they only
return masks, and the wrapper zeroes grown weights and the optimizer moments
of every changed connection.

- SET (Mocanu et al. 2018): drop the smallest-magnitude active weights, grow
  as many connections uniformly at random among those not kept.
- RigL (Evci et al. 2020, Algorithm 1): drop the same way, grow where the
  dense gradient magnitude on the current batch is largest.
- prune (Zhu & Gupta 2017): from dense, keep the largest magnitudes at the
  cubic schedule's sparsity, per layer s_t^l = s_f^l * (1 - (1 - p)^3).
"""

from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp

from sparserl.sparse import masks as mask_lib
from sparserl.sparse import schedules
from sparserl.sparse.config import SparsityConfig


def _ranks(scores: jax.Array) -> jax.Array:
    """Rank of every entry in ascending order of score (ties broken by position)."""
    flat = scores.ravel()
    order = jnp.argsort(flat, stable=True)
    return jnp.zeros(flat.shape, jnp.int32).at[order].set(jnp.arange(flat.size, dtype=jnp.int32)).reshape(scores.shape)


def drop_and_grow(weights: jax.Array, mask: jax.Array, grow_scores: jax.Array, drop_fraction) -> jax.Array:
    """One SET/RigL mask update of a layer; the number of active connections is unchanged.

    Drops n = floor(f * nnz) active weights of smallest magnitude, then grows n
    connections with the largest `grow_scores` among those not kept (so a
    dropped connection may be grown back).
    """
    num_active = jnp.sum(mask)
    num_changed = jnp.floor(drop_fraction * num_active).astype(jnp.int32)
    drop_scores = jnp.where(mask, jnp.abs(weights), jnp.inf)
    kept = mask & (_ranks(drop_scores) >= num_changed)
    grow_scores = jnp.where(kept, -jnp.inf, grow_scores)
    grown = _ranks(-grow_scores) < num_changed
    return kept | grown


def magnitude_mask(weights: jax.Array, mask: jax.Array, sparsity) -> jax.Array:
    """Keeps the n - floor(s * n) largest-magnitude active weights; pruned weights stay pruned."""
    num_zeros = jnp.floor(sparsity * weights.size).astype(jnp.int32)
    scores = jnp.where(mask, jnp.abs(weights), -1.0)
    return _ranks(scores) >= num_zeros


def _map_masked_layers(fn: Callable, sparsities: Mapping[str, float], masks: Any, *trees: Any) -> Any:
    """Applies fn(layer_key, layer_sparsity, mask, *leaves) to masked kernels; other masks are returned as they are."""
    flat_masks, treedef = jax.tree_util.tree_flatten_with_path(masks)
    flat_trees = [jax.tree.leaves(tree) for tree in trees]
    new_masks = []
    for index, (path, mask) in enumerate(flat_masks):
        layer = mask_lib.layer_of(path)
        if layer in sparsities:
            new_masks.append(fn(index, sparsities[layer], mask, *(leaves[index] for leaves in flat_trees)))
        else:
            new_masks.append(mask)
    return jax.tree.unflatten(treedef, new_masks)


class Topology(NamedTuple):
    """A topology method: how masks start, when they change, how they change."""

    name: str
    init_masks: Callable[[jax.Array, Any, Mapping[str, float]], Any]
    is_update_step: Callable[[jax.Array, SparsityConfig], jax.Array]
    update_masks: Callable[..., Any]


def _never(step, config):
    del config
    return jnp.zeros_like(step, dtype=bool)


def _unchanged(key, step, params, dense_grads, masks, sparsities, config):
    del key, step, params, dense_grads, sparsities, config
    return masks


def _dense_init(key, params, sparsities):
    del key, sparsities
    return mask_lib.dense_masks(params)


def _drop_grow_step(step, config):
    return schedules.is_periodic_step(step, config.update_period, config.update_start, config.update_end)


def _set_update(key, step, params, dense_grads, masks, sparsities, config):
    del dense_grads
    fraction = schedules.cosine_drop_fraction(step - config.update_start, config.drop_fraction, config.update_end - config.update_start)
    keys = jax.random.split(key, len(jax.tree.leaves(masks)))

    def update(index, sparsity, mask, weights):
        del sparsity
        return drop_and_grow(weights, mask, jax.random.uniform(keys[index], mask.shape), fraction)

    return _map_masked_layers(update, sparsities, masks, params)


def _rigl_update(key, step, params, dense_grads, masks, sparsities, config):
    del key
    fraction = schedules.cosine_drop_fraction(step - config.update_start, config.drop_fraction, config.update_end - config.update_start)

    def update(index, sparsity, mask, weights, grads):
        del index, sparsity
        return drop_and_grow(weights, mask, jnp.abs(grads), fraction)

    return _map_masked_layers(update, sparsities, masks, params, dense_grads)


def _prune_step(step, config):
    return schedules.is_pruning_step(step, config.update_period, config.update_start, config.update_end)


def _prune_update(key, step, params, dense_grads, masks, sparsities, config):
    del key, dense_grads

    def update(index, final_sparsity, mask, weights):
        del index
        target = schedules.cubic_sparsity(step, final_sparsity, config.update_start, config.update_end)
        return magnitude_mask(weights, mask, target)

    return _map_masked_layers(update, sparsities, masks, params)


TOPOLOGIES: dict[str, Topology] = {
    "dense": Topology("dense", _dense_init, _never, _unchanged),
    "static": Topology("static", mask_lib.random_masks, _never, _unchanged),
    "set": Topology("set", mask_lib.random_masks, _drop_grow_step, _set_update),
    "rigl": Topology("rigl", mask_lib.random_masks, _drop_grow_step, _rigl_update),
    "prune": Topology("prune", _dense_init, _prune_step, _prune_update),
}


def get_topology(name: str) -> Topology:
    if name not in TOPOLOGIES:
        raise ValueError(f"unknown sparse training method {name!r}; choose one of {', '.join(TOPOLOGIES)}")
    return TOPOLOGIES[name]
