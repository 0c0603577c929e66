"""Masks: pytrees of booleans that mirror the params pytree (docs/design.md contract 3).

Sparse weights live dense, with zeros at pruned positions. A masked kernel's
mask has exactly floor(s * n) False entries; every other leaf (biases, layers
kept dense) has an all-True mask, so masks and params always share one tree
structure and vmap over a seed axis like any other pytree.
"""

import math
from typing import Any, Container, Mapping

import jax
import jax.numpy as jnp

from sparserl.sparse import structure as structure_lib
from sparserl.sparse.distributions import leaf_name
from sparserl.sparse.structure import zero_count


def layer_of(path) -> str | None:
    """The layer path of a kernel leaf ('q1/dense_0' for q1/dense_0/kernel), else None."""
    name = leaf_name(path)
    if not name.endswith("kernel"):
        return None
    return name.rsplit("/", 1)[0] if "/" in name else name



def kernels_of(tree: Any, layers: Container[str]) -> dict[str, jax.Array]:
    """{layer path: its kernel leaf} in a params-shaped `tree`, for the layers in `layers`."""
    return {layer_of(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
            if layer_of(path) in layers}


def with_kernels(tree: Any, kernels: Mapping[str, jax.Array]) -> Any:
    """A params-shaped `tree` with the kernel of each layer of `kernels` replaced by `kernels[layer]`."""
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: kernels[layer_of(path)] if layer_of(path) in kernels else leaf, tree)

def random_mask(key: jax.Array, shape: tuple[int, ...], sparsity) -> jax.Array:
    """A uniformly random mask with exactly floor(sparsity * n) zeros (`sparsity` concrete or traced)."""
    size = math.prod(shape)
    num_zeros = zero_count(sparsity, size)
    ranks = jax.random.permutation(key, size)
    return (ranks >= num_zeros).reshape(shape)


def random_masks(key: jax.Array, params: Any, sparsities: Mapping[str, float],
                 structure: structure_lib.Structure = structure_lib.Structure()) -> Any:
    """Random exact-count masks for the layers in `sparsities`, all-True elsewhere.

    Unstructured: `random_mask`; fan_in and nm: every group keeps its exact
    count (`sparserl.sparse.structure.random_mask`). Each leaf draws from its own key.
    """
    paths_and_leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    keys = jax.random.split(key, max(1, len(paths_and_leaves)))
    masks = []
    for leaf_key, (path, leaf) in zip(keys, paths_and_leaves):
        layer = layer_of(path)
        if layer in sparsities:
            if structure.kind == structure_lib.UNSTRUCTURED:
                masks.append(random_mask(leaf_key, leaf.shape, sparsities[layer]))
            else:
                masks.append(structure_lib.random_mask(structure, leaf_key, leaf.shape, sparsities[layer]))
        else:
            masks.append(jnp.ones(leaf.shape, bool))
    return jax.tree.unflatten(treedef, masks)


def dense_masks(params: Any) -> Any:
    """All-True masks: every connection active."""
    return jax.tree.map(lambda leaf: jnp.ones(leaf.shape, bool), params)


def apply_masks(tree: Any, masks: Any, layers: Container[str] | None = None) -> Any:
    """Zeroes the entries of `tree` (params, grads, updates) where the mask is False.

    `layers`: the layers whose masks may hold a False (`distributions.masked_layers`); the other leaves' masks are
    all-True, and those leaves are returned as they are, with no op in the program. None: every leaf.
    """
    def apply(path, leaf, mask):
        if layers is not None and layer_of(path) not in layers:
            return leaf
        return jnp.where(mask, leaf, jnp.zeros_like(leaf))

    return jax.tree_util.tree_map_with_path(apply, tree, masks)


def sparsity_metrics(masks: Any, prefix: str = "sparsity") -> dict[str, jax.Array]:
    """`{prefix}/<layer>` per kernel and `{prefix}/total` over all kernels (docs/design.md contract 6)."""
    metrics = {}
    zeros = 0
    total = 0
    for path, mask in jax.tree_util.tree_flatten_with_path(masks)[0]:
        layer = layer_of(path)
        if layer is None or mask.ndim < 2:
            continue
        layer_zeros = mask.size - jnp.sum(mask)
        metrics[f"{prefix}/{layer}"] = layer_zeros / mask.size
        zeros = zeros + layer_zeros
        total += mask.size
    metrics[f"{prefix}/total"] = zeros / max(total, 1)
    return metrics


def multiply_add_metrics(masks: Any, positions: Mapping[str, int], prefix: str = "multiply_adds") -> dict[str, jax.Array]:
    """`{prefix}/<layer>` and `{prefix}/total`: the multiply-adds of one example's forward pass at the kept weights,
    each kernel's kept entries times the positions it is applied at (`networks.layer_positions`). What a kernel that
    skipped every zero would compute; for a dense network, its dense cost (docs/design.md contract 6)."""
    counts = {layer_of(path): positions[layer_of(path)] * jnp.sum(mask, dtype=jnp.float32)
              for path, mask in jax.tree_util.tree_flatten_with_path(masks)[0] if mask.ndim >= 2}
    return {**{f"{prefix}/{layer}": count for layer, count in counts.items()}, f"{prefix}/total": sum(counts.values())}
