"""Condensed kernels: a dense layer whose mask has constant fan-in k, run as a gather and a reduction.

With constant fan-in (every output neuron o keeps exactly k inputs; SRigL,
Lasby et al. 2023, section 3.1 and their "condensed" linear layer), a kernel
W [in, out] under its mask is described by indices [out, k] (the kept inputs
of each neuron) and the values W[idx[o, j], o], and

    y[b, o] = sum_j x[b, idx[o, j]] * W[idx[o, j], o]            (`dense`)

costs batch * out * k multiply-adds instead of batch * in * out.

Where things live (DESIGN contract 3 is unchanged: weights stay dense with
zeros, so masks, the optimizer wrapper, topology updates, ReDo and checkpoints
see the same pytrees as before):

- the *indices* of every masked kernel are computed from its mask by
  `layer_indices` when the masks change, never in a forward pass: at init
  (`sparse_network.init`) and on topology-update steps (`sparse_network.apply_gradients`,
  under the same schedule predicate as the mask change). They live in
  `sparse_network.NetworkState.indices`, a dict mirroring the params tree with an
  `indices` leaf per layer (`{"dense_1": {"indices": [out, k] int32}}`), so they
  are vmapped over seeds and checkpointed with the rest of the TrainState.
  ReDo never changes masks, so it keeps them.
- the *values* are gathered from the dense kernel inside `dense` (26k scalars
  for a 512x512 layer at k = 52), so they can never be stale.
- a forward pass takes the indices as the flax collection `condensed`
  (`networks.Dense` reads it); layers left out of it run as plain dense
  matmuls. `select` decides per layer and batch size (static at trace time)
  from the `kernels` setting: "masked" (never), "condensed" (always) or
  "auto" (`is_faster`, a rule measured with `python -m sparserl.bench
  --rows=condensed`).

Backward: a custom VJP (`dense`). Its gradient w.r.t. the dense kernel is
nonzero only at the kept connections, so RigL's growth, which ranks the dense
gradient of the connections not kept, gets it from a masked-dense pass on
topology-update steps only (`sparse_network.value_and_grad`).
"""

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from sparserl.sparse import structure as structure_lib
from sparserl.sparse.masks import layer_of

CONSTANT_FAN_IN = structure_lib.Structure(structure_lib.FAN_IN)

COLLECTION = "condensed"
KERNELS = ("masked", "condensed", "auto")

# `is_faster`'s bound on the gathered elements batch * out * k of one layer (see its docstring).
AUTO_MAX_GATHERED = 2048


def check_kernels(kernels: str) -> str:
    """`kernels` if it is one of `KERNELS`, else ValueError naming the flag (reported as bad input)."""
    if kernels not in KERNELS:
        raise ValueError(f"--config.sparse.kernels: unknown kernels {kernels!r}; choose one of {', '.join(KERNELS)}")
    return kernels


def fan_in(in_features: int, sparsity: float) -> int:
    """Kept inputs per output neuron of a constant-fan-in layer: k = in - floor(s * in), the count
    `structure.kept_per_group` gives every neuron of a `fan_in` mask.

    A mask with fewer kept inputs is still computed exactly (the extra indices
    point at zero weights); one with more would not be.
    """
    return structure_lib.kept_per_group(CONSTANT_FAN_IN, (in_features, 1), sparsity)


def _flat_indices(kernel: jax.Array, indices: jax.Array) -> jax.Array:
    """Positions of W[idx[o, j], o] in the flattened kernel, [out, k]."""
    out = kernel.shape[1]
    return indices * out + jnp.arange(out, dtype=indices.dtype)[:, None]


def _sum_last(values: jax.Array) -> jax.Array:
    """Sum over the last axis as a matrix-vector product (on CPU, XLA runs it several times faster than a reduce)."""
    return (values.reshape(-1, values.shape[-1]) @ jnp.ones(values.shape[-1], values.dtype)).reshape(values.shape[:-1])


def _forward(x: jax.Array, kernel: jax.Array, indices: jax.Array) -> jax.Array:
    values = jnp.take(kernel.reshape(-1), _flat_indices(kernel, indices), mode="clip")  # [out, k]
    gathered = jnp.take(x, indices, axis=1, mode="clip")  # [batch, out, k]
    return _sum_last(gathered * values)


@jax.custom_vjp
def dense(x: jax.Array, kernel: jax.Array, indices: jax.Array) -> jax.Array:
    """x [batch, in] times the kernel [in, out] restricted to `indices` [out, k]: the gather + reduction.

    Equal to `x @ kernel`, in value and in gradient, when every weight off the
    indices is zero (the masked params of sparserl.sparse_network), except that the kernel's
    gradient is zero off the indices. Vmappable like any jnp function.

    Backward (a custom VJP, measured about 3x faster than autodiff's
    scatter-adds on the 2-core CPU at batch 128 and 1.7x at batch 1):
    dx = dy @ kernel^T (a dense matmul, exact because the kernel is zero off
    the indices), d values[o, j] = sum_b dy[b, o] x[b, idx[o, j]] (a gather),
    written into a dense zero kernel at the indices.
    """
    return _forward(x, kernel, indices)


def _dense_forward(x, kernel, indices):
    return _forward(x, kernel, indices), (x, kernel, indices)


def _dense_backward(residuals, output_grad):
    x, kernel, indices = residuals
    input_grad = output_grad @ kernel.T
    # The barrier keeps x's producer (bias, activation) out of the gather's fusion: fused, XLA's CPU backend
    # recomputes it per gathered element (about 5x slower for the 512x512 layer at batch 128).
    gathered = jnp.take(jax.lax.optimization_barrier(x), indices, axis=1, mode="clip")  # [batch, out, k]
    batch = x.shape[0]
    value_grad = (jnp.ones(batch, x.dtype) @ (output_grad[:, :, None] * gathered).reshape(batch, -1)).reshape(indices.shape)
    kernel_grad = jnp.zeros(kernel.size, kernel.dtype).at[_flat_indices(kernel, indices)].set(
        value_grad, mode="promise_in_bounds", unique_indices=True)
    return input_grad, kernel_grad.reshape(kernel.shape), None


dense.defvjp(_dense_forward, _dense_backward)


def layer_indices(masks: Any, sparsities: Mapping[str, float]) -> dict:
    """Indices of every masked 2-D kernel in `sparsities`, nested like the params tree.

    `{"q1": {"dense_0": {"indices": [out, k]}}}` for the mask of
    `q1/dense_0/kernel`; k = `fan_in(in, layer sparsity)` (static). Layers kept
    dense (not in `sparsities`, or every input kept) have no entry and run as
    plain matmuls.
    """
    tree: dict = {}
    for path, mask in jax.tree_util.tree_flatten_with_path(masks)[0]:
        layer = layer_of(path)
        if layer not in sparsities or mask.ndim != 2 or fan_in(mask.shape[0], sparsities[layer]) == mask.shape[0]:
            continue  # not masked, or kept dense (ERK gives small layers sparsity 0)
        node = tree
        for part in layer.split("/"):
            node = node.setdefault(part, {})
        node["indices"] = structure_lib.fan_in_indices(mask, fan_in(mask.shape[0], sparsities[layer]))
    return tree


def refresh(indices: dict, masks: Any) -> dict:
    """`indices` recomputed from new `masks` (same layers, same k): call it whenever the masks change."""

    def recompute(index_node, mask_node):
        if "indices" in index_node:
            return {"indices": structure_lib.fan_in_indices(mask_node["kernel"], index_node["indices"].shape[-1])}
        return {name: recompute(child, mask_node[name]) for name, child in index_node.items()}

    return recompute(indices, masks)


def is_faster(batch: int, in_features: int, out_features: int, k: int) -> bool:
    """The "auto" rule: condensed when the layer gathers at most `AUTO_MAX_GATHERED` elements (batch * out * k).

    Measured on a 2-core CPU (jaxlib 0.10.2, `python -m sparserl.bench
    --rows=condensed`, three runs): XLA's CPU gathers cost about 1-4 ns per
    element while a dense matmul runs at about 0.02-0.25 ns per multiply-add
    with a fixed cost of some 10-40 us per op, so condensed wins only on
    layers that gather little: 4x512 (k = 1) and 512x2 (k = 52) at batch 1
    (forward about 5x; 104 and 512 elements), 512x2 at batch 16 (1.1-1.75x;
    1,664 elements); it ties or loses on 4x512 at batch 16 and up (8,192+)
    and loses on the 512x512 layer at 90% (k = 52) at every batch size
    (forward 0.3-0.4x at batch 1, 0.15-0.2x at 128). `in_features` is unused
    by this rule; it is in the signature for a rule measured elsewhere.
    """
    del in_features
    return batch * out_features * k <= AUTO_MAX_GATHERED


def select(indices: dict, params: Any, batch: int, kernels: str) -> dict:
    """The part of `indices` to run condensed at this batch size under `kernels` ("masked", "condensed", "auto")."""
    if kernels == "masked":
        return {}
    if kernels == "condensed":
        return indices

    def chosen(index_node, param_node):
        if "indices" in index_node:
            in_features, out_features = param_node["kernel"].shape
            keep = is_faster(batch, in_features, out_features, index_node["indices"].shape[-1])
            return index_node if keep else {}
        children = {name: chosen(child, param_node[name]) for name, child in index_node.items()}
        return {name: child for name, child in children.items() if child}

    return chosen(indices, params)
