"""Per-layer sparsities: uniform and Erdos-Renyi-Kernel (ERK).

ERK follows Evci et al. 2020 (RigL), section 3 "Sparsity distribution", as
implemented in rigl's `sparse_utils.get_sparsities_erdos_renyi`: layer l keeps
a density eps * sum(shape_l) / prod(shape_l) (conv kernels: kh + kw + cin +
cout over kh * kw * cin * cout), with eps solved so that the kept weights
total (1 - s) * N over the masked layers. While a layer's density would exceed
1, the layer with the largest raw ratio is made dense and eps is solved again.

Only kernels (ndim >= 2) are masked; biases never are. Layers are named by
their module path in the params tree, e.g. `dense_0` or `q1/output`, and
layers kept dense are chosen by those paths (`dense_layer_paths`).
"""

import fnmatch
import math
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from sparserl.sparse.config import SparsityConfig
from sparserl.sparse.structure import is_concrete

Shape = tuple[int, ...]


def leaf_name(path) -> str:
    """'dense_0/kernel' for the key path of params['dense_0']['kernel']."""
    return "/".join(str(getattr(key, "key", getattr(key, "name", key))) for key in path)


def kernel_shapes(params: Any) -> dict[str, Shape]:
    """Layer path -> kernel shape, for every kernel (ndim >= 2), in tree order."""
    shapes = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = leaf_name(path)
        if name.endswith("kernel") and len(leaf.shape) >= 2:
            shapes[name.rsplit("/", 1)[0] if "/" in name else name] = tuple(leaf.shape)
    return shapes


def uniform_sparsities(shapes: Mapping[str, Shape], sparsity) -> dict[str, float]:
    """Every masked layer at the same sparsity."""
    return {name: sparsity for name in shapes}


def erk_sparsities(shapes: Mapping[str, Shape], sparsity) -> dict[str, float]:
    """ERK sparsities (Evci et al. 2020, section 3), with the dense-fallback loop.

    The loop makes dense, one step at a time, the layers of the largest raw
    density, so the dense set after k steps is the layers in the k largest raw
    densities. Each candidate k is solved here in turn; a concrete `sparsity`
    returns the first valid one (what the loop stops at). A traced `sparsity`
    (a sweep vmapped over levels) gets every candidate solved with traced
    arithmetic and the first valid one chosen with `jnp`.
    """
    sizes = {name: math.prod(shape) for name, shape in shapes.items()}
    raw = {name: sum(shape) / sizes[name] for name, shape in shapes.items()}
    raw_levels = sorted(set(raw.values()), reverse=True)
    epsilons, valids = [], []
    for num_dense_levels in range(len(raw_levels) + 1):
        dense = {name for name in shapes if num_dense_levels and raw[name] >= raw_levels[num_dense_levels - 1]}
        if len(dense) == len(shapes):
            epsilons.append(0.0)
            valids.append(True)
            break
        kept_budget = 0.0
        divisor = 0.0
        for name in shapes:
            if name in dense:
                kept_budget -= sizes[name] * sparsity
            else:
                kept_budget += sizes[name] * (1.0 - sparsity)
                divisor += raw[name] * sizes[name]
        epsilon = kept_budget / divisor
        valid = raw_levels[num_dense_levels] * epsilon <= 1.0
        if is_concrete(sparsity) and valid:
            return {name: 0.0 if name in dense else 1.0 - epsilon * raw[name] for name in shapes}
        epsilons.append(epsilon)
        valids.append(valid)
    if is_concrete(sparsity):
        return {name: 0.0 for name in shapes}
    chosen = jnp.argmax(jnp.stack([jnp.asarray(valid) for valid in valids]))  # the first valid candidate
    epsilon = jnp.stack([jnp.asarray(value, jnp.float32) for value in epsilons])[chosen]
    level_of = {name: raw_levels.index(raw[name]) for name in shapes}  # dense once chosen > this index
    return {name: jnp.where(level_of[name] < chosen, 0.0, 1.0 - epsilon * raw[name]) for name in shapes}


DISTRIBUTIONS: dict[str, Callable[[Mapping[str, Shape], float], dict[str, float]]] = {
    "erk": erk_sparsities,
    "uniform": uniform_sparsities,
}


def sub_networks(layers: list[str]) -> dict[str, list[str]]:
    """Layer paths grouped by their parent path, in tree order: {'q1': ['q1/dense_0', ...], 'q2': [...]}.

    An agent's network is one sub-network (parent ''); SAC's TwinCritic has two, `q1` and `q2`.
    """
    groups: dict[str, list[str]] = {}
    for layer in layers:
        groups.setdefault(layer.rpartition("/")[0], []).append(layer)
    return groups


def first_and_last_layers(layers: list[str]) -> tuple[list[str], list[str]]:
    """The input and output layer of every sub-network: the first and last of its layers in tree order.

    The params tree orders a sub-network's layers by name, and the networks of
    `sparserl.networks` name them `conv_i`, `dense_i` (i < 10 in every config here),
    `output`: so the first is `conv_0` (CNN) or `dense_0` (MLP), the last `output`.
    """
    groups = sub_networks(layers).values()
    return [group[0] for group in groups], [group[-1] for group in groups]


def dense_layer_paths(layers: list[str], config: SparsityConfig) -> list[str]:
    """The layer paths kept dense: those matching a `config.dense_layers` pattern (fnmatch), plus the input
    layer of every sub-network when `dense_first_layer` and its output layer when `dense_last_layer`.

    Example: TwinCritic with both flags keeps q1/dense_0, q2/dense_0, q1/output and q2/output dense;
    the Nature CNN keeps conv_0 and output.
    """
    first, last = first_and_last_layers(layers)
    chosen = set(first if config.dense_first_layer else []) | set(last if config.dense_last_layer else [])
    return [layer for layer in layers
            if layer in chosen or any(fnmatch.fnmatchcase(layer, pattern) for pattern in config.dense_layers)]


def masked_layers(params: Any, config: SparsityConfig) -> dict[str, tuple[int, ...]]:
    """The kernel shape of every layer of `params` that `config` masks: every kernel but the layers kept dense
    (`dense_layer_paths`); none with `method='dense'`. Every other leaf's mask is all-True for the whole run."""
    shapes = kernel_shapes(params)
    if config.method == "dense":
        return {}
    for layer in dense_layer_paths(list(shapes), config):
        del shapes[layer]
    return shapes


def layer_sparsities(params: Any, config: SparsityConfig) -> dict[str, float]:
    """Target sparsity of every masked layer of `params` (`masked_layers`; static: depends on shapes only).

    An N:M structure fixes every masked layer at 1 - N/M (Zhou et al. 2021), whatever the distribution.
    """
    shapes = masked_layers(params, config)
    if not shapes:
        return {}
    fixed = config.parsed_structure.fixed_sparsity
    if fixed is not None:
        return {name: fixed for name in shapes}
    return DISTRIBUTIONS[config.distribution](shapes, config.sparsity)
