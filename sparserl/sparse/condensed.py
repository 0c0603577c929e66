"""Condensed kernels: a dense layer whose mask has constant fan-in k, its forward pass run as gathers.

With constant fan-in (every output neuron o keeps exactly k inputs; SRigL,
Lasby et al. 2023, section 3.1 and their "condensed" linear layer), a kernel
W [in, out] under its mask is described by indices [out, k] (the kept inputs
of each neuron) and the values W[idx[o, j], o], and

    y[b, o] = sum_j x[b, idx[o, j]] * W[idx[o, j], o]            (`dense`)

costs batch * out * k multiply-adds instead of batch * in * out.

Where things live (docs/design.md contract 3 is unchanged: weights stay dense with
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
  from the `kernels` setting: "masked" (never), "condensed" (always),
  "auto" (`is_faster`, a rule measured with `python -m sparserl.bench
  --rows=condensed`) or "native" (`native_is_faster`: C++ forward and
  backward passes, `sparserl.sparse.condensed_native`, under the collection
  `condensed_native`). The config's "auto" is native wherever native can run
  (`sparserl.configs.base.kernels`), and this XLA rule only where it cannot.

Methods whose fan-in changes: prune's layers store indices at the largest
capacity of a `ladder` and run at the `bucket` that holds the step's kept
count (`run_bucket`, masked above `MAX_CONDENSED_DENSITY`); SRigL's ablating
layers keep k' inputs per active neuron and none per ablated one within the
budget out * k, as slots with offsets (`variable_fan_in`, native only).

Backward: a custom VJP (`dense`) that is the masked-dense backward pass
(two dense matmuls), so the gradients, also the dense gradient RigL grows
from, are those of the masked network at every step.
"""

import functools
import math
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp

from sparserl import linear
from sparserl.errors import ConfigError
from sparserl.sparse import structure as structure_lib
from sparserl.sparse.masks import layer_of

CONSTANT_FAN_IN = structure_lib.Structure(structure_lib.FAN_IN)

COLLECTION = "condensed"
NATIVE_COLLECTION = "condensed_native"  # the indices of layers that run `sparserl.sparse.condensed_native.dense`
KERNELS = ("masked", "condensed", "auto", "native")
# Under kernels=native, the smallest batch that runs native (`native_is_faster`).
NATIVE_MIN_BATCH = 16

# The forward formulation: scalar gathers below this batch size, row gathers from it on (`dense`).
ROW_MIN_BATCH = 16
# `is_faster`'s bound on the gathered elements batch * out * k of one layer (see its docstring).
AUTO_MAX_GATHERED = 2048
# While a layer's fan-in shrinks (prune), it runs condensed only at capacities up to this fraction of its dense
# fan-in, masked above. Native forward + backward costs batch * out * k multiply-adds at c_n each, masked
# batch * out * f at c_m, so native wins while k / f < c_m / c_n. Measured (`native_is_faster`, 512x512 at 10%
# density, batch 128): 2.41-2.99x as fast as masked, so c_m / c_n = 0.1 * (2.41..2.99) = 0.24..0.30 is the
# break-even density; 0.25, its lower end, keeps condensed where it does not lose.
MAX_CONDENSED_DENSITY = 0.25


def check_kernels(kernels: str) -> str:
    """`kernels` if it is one of `KERNELS`, else ConfigError (field `sparse.kernels`)."""
    if kernels not in KERNELS:
        raise ConfigError("sparse.kernels", f"unknown kernels {kernels!r}; choose one of {', '.join(KERNELS)}")
    return kernels


def fan_in(in_features: int, sparsity: float) -> int:
    """Kept inputs per output neuron of a constant-fan-in layer: k = in - floor(s * in), the count
    `structure.kept_per_group` gives every neuron of a `fan_in` mask.

    A mask with fewer kept inputs is still computed exactly (the extra indices
    point at zero weights); one with more would not be.
    """
    return structure_lib.kept_per_group(CONSTANT_FAN_IN, (in_features, 1), sparsity)


def ladder(in_features: int, final_k: int) -> tuple[int, ...]:
    """The capacities, ascending, that a layer whose kept count falls from `in_features` to `final_k` (prune)
    runs its condensed kernels at: `final_k`, then doubling up to floor(MAX_CONDENSED_DENSITY * in_features).

    A kept count k runs at the smallest capacity c >= k (padding positions point at zero weights), so padding
    costs at most c / k < 2 times the multiply-adds of k; a count above the last capacity runs masked. The final
    count always has its capacity, whatever its density (as a static layer at that sparsity runs condensed).
    """
    largest = math.floor(MAX_CONDENSED_DENSITY * in_features)
    capacities = [final_k]
    while capacities[-1] < largest:
        capacities.append(min(2 * capacities[-1], largest))
    return tuple(capacities)


def bucket(kept, capacities: tuple[int, ...]) -> jax.Array:
    """Index of the smallest capacity that holds `kept` inputs (traced int32); len(capacities) runs masked."""
    return sum((kept > capacity).astype(jnp.int32) for capacity in capacities)


class Ladder(NamedTuple):
    """A layer whose kept count changes (prune): its fan-in, final sparsity, capacities (`ladder`) and stored index
    node (`layer_indices`, gradual)."""
    in_features: int
    final_sparsity: float
    capacities: tuple[int, ...]
    stored: dict


def ladders(indices: dict, params: Any, sparsities: Mapping[str, float]) -> dict[str, Ladder]:
    """{layer path: its `Ladder`} of the layers with stored `indices` (prune's) not yet at a step: given no bucket
    (`with_buckets`) and no kept values (`sparserl.kept_counts.kept_slot_layers`). Slots with offsets (native
    kernels) run exactly k_t multiply-adds at any capacity; their ladder still sizes the slots' arrays (gathers,
    scatters and Adam's step on them: a ladder of its ends alone ran the 4x MinAtar update at k_t = 283 in 16.6-18.3
    ms against 10.7-11.0)."""
    found = {}

    def collect(index_node, param_node, path):
        if "indices" not in index_node:
            for name, child in index_node.items():
                collect(child, param_node[name], f"{path}/{name}" if path else name)
        elif "bucket" not in index_node and "values" not in index_node:  # not yet at a step
            in_features = fan_in_view(param_node["kernel"]).shape[0]
            found[path] = Ladder(in_features, sparsities[path],
                                 ladder(in_features, fan_in(in_features, sparsities[path])), index_node)

    collect(indices, params, "")
    return found


def with_buckets(indices: dict, layers: Mapping[str, Ladder], buckets: Mapping[str, Any]) -> dict:
    """`indices` with each layer of `layers` as {"indices": its ladder's slices of its stored indices, "bucket":
    `buckets[path]`} (`run_bucket`)."""
    def at_bucket(node, path):
        if path in layers:
            return {**node, "indices": tuple(at_capacity(node, capacity)["indices"] for capacity in layers[path].capacities),
                    "bucket": buckets[path]}
        if "indices" in node:
            return node
        return {name: at_bucket(child, f"{path}/{name}" if path else name) for name, child in node.items()}

    return at_bucket(indices, "")


def at_capacity(stored: dict, capacity: int) -> dict:
    """A prune layer's stored index node (`layer_indices`, gradual) at `capacity`: {"indices": the first `capacity`
    columns of [out, c]}, or, laid out as slots with offsets, {"indices": its first out * capacity slots as
    [out, capacity], "offsets": clamped to them} (masks that keep more, which no step runs at this capacity, leave
    the slots beyond to no neuron: the native kernels never read past the slots they are given)."""
    indices = stored["indices"]
    if "offsets" not in stored:
        return {"indices": indices[..., :capacity]}
    *seeds, out, width = indices.shape
    return {"indices": indices.reshape(*seeds, out * width)[..., :out * capacity].reshape(*seeds, out, capacity),
            "offsets": jnp.minimum(stored["offsets"], out * capacity)}


def run_bucket(product: Callable, x: jax.Array, kernel: jax.Array, ladder_indices: tuple, index,
               offsets: jax.Array | None = None) -> jax.Array:
    """`product(x, kernel, ladder_indices[index])` (with `offsets`, when the indices are slots), or the masked matmul
    at index len(ladder_indices).

    A `lax.switch`: with an unbatched index (a function of the shared gradient step, also under the seeds'
    vmap) only the chosen branch runs, taking its capacity of the largest capacity's indices (the stored ones)
    itself: slices made outside would all be materialised as the switch's operands. An index given as a Python
    int (a phase's, `sparserl.kept_counts.phases`) picks the branch in Python.
    """
    stored = {"indices": ladder_indices[-1], **({} if offsets is None else {"offsets": offsets})}

    def branch(x, kernel, capacity):
        node = at_capacity(stored, capacity)
        return product(x, kernel, node["indices"], *([node["offsets"]] if offsets is not None else []))

    branches = [functools.partial(branch, capacity=indices.shape[-1]) for indices in ladder_indices]
    branches.append(linear.matmul)
    if isinstance(index, int):
        return branches[index](x, kernel)
    return jax.lax.switch(index, branches, x, kernel)


def variable_fan_in(mask: jax.Array, k: int) -> dict:
    """A fan_in layer whose neurons keep any numbers k'_o of inputs within the budget out * k (SRigL's ablation:
    k' = floor(out k / A) for each of A active neurons, 0 for each ablated one): `indices` [out, k], read as out * k
    slots, with neuron o's kept inputs (ascending) in the slots [offsets[o], offsets[o + 1]), and `offsets`
    [out + 1], the running sum of the k'_o. The slots from offsets[out] on belong to no neuron (index 0, value 0).
    The native kernels (`condensed_native`) run it at the cost of a constant fan-in layer of k, whatever the
    ablation, and its kept values train like any other (`sparse_network.kept_layers`). The mask must keep at most
    out * k inputs (SRigL's budget; more would not fit and raise nothing)."""
    in_features, out = mask.shape
    counts = jnp.sum(mask, axis=0, dtype=jnp.int32)
    offsets = jnp.concatenate([jnp.zeros(1, jnp.int32), jnp.cumsum(counts, dtype=jnp.int32)])
    kept_first = jnp.argsort(~mask.T, axis=1, stable=True).astype(jnp.int32)  # [out, f]
    slots = jnp.arange(out * k, dtype=jnp.int32)
    neurons = jnp.clip(jnp.searchsorted(offsets, slots, side="right") - 1, 0, out - 1)
    positions = jnp.minimum(slots - offsets[neurons], in_features - 1)
    indices = jnp.where(slots < offsets[-1], kept_first[neurons, positions], 0)
    return {"indices": indices.reshape(out, k).astype(jnp.int32), "offsets": offsets}


def _flat_indices(kernel: jax.Array, indices: jax.Array) -> jax.Array:
    """Positions of W[idx[o, j], o] in the flattened kernel, [out, k]."""
    out = kernel.shape[1]
    return indices * out + jnp.arange(out, dtype=indices.dtype)[:, None]


def _sum_last(values: jax.Array) -> jax.Array:
    """Sum over the last axis as a matrix-vector product (on CPU, XLA runs it several times faster than a reduce)."""
    return (values.reshape(-1, values.shape[-1]) @ jnp.ones(values.shape[-1], values.dtype)).reshape(values.shape[:-1])


def _kept_values(kernel: jax.Array, indices: jax.Array) -> jax.Array:
    """values[o, j] = W[idx[o, j], o], [out, k]."""
    return jnp.take(kernel.reshape(-1), _flat_indices(kernel, indices), mode="clip")


def _element_forward(x: jax.Array, values: jax.Array, indices: jax.Array) -> jax.Array:
    """Gathers batch * out * k scalars x[b, idx[o, j]], multiplies and sums over j (small batches)."""
    gathered = jnp.take(x, indices, axis=1, mode="clip")  # [batch, out, k]
    return _sum_last(gathered * values)


def _row_forward(x: jax.Array, values: jax.Array, indices: jax.Array) -> jax.Array:
    """y^T[o] = sum_j values[o, j] * x^T[idx[o, j]], a `lax.scan` over the k kept inputs (larger batches).

    Each step gathers `out` whole rows of x^T (a batch-long contiguous vector
    per kept connection, not one scalar) and adds them, scaled, into the
    [out, batch] accumulator: on the 2-core CPU about 6x cheaper per
    multiply-add than `_element_forward`'s scalar gathers at batch 128.
    `unroll` 4 was the fastest of 1, 4, 13, 26 and 52 at batch 16-256.
    """
    transposed = x.T  # [in, batch]

    def add_kept_input(accumulator, column):
        rows, scale = column
        return accumulator + transposed.at[rows].get(mode="promise_in_bounds") * scale[:, None], None

    initial = jnp.zeros((indices.shape[0], x.shape[0]), jnp.result_type(x, values))
    accumulator, _ = jax.lax.scan(add_kept_input, initial, (indices.T, values.T), unroll=min(4, indices.shape[1]))
    return accumulator.T


def _forward(x: jax.Array, kernel: jax.Array, indices: jax.Array) -> jax.Array:
    values = _kept_values(kernel, indices)
    if x.shape[0] >= ROW_MIN_BATCH:
        return _row_forward(x, values, indices)
    return _element_forward(x, values, indices)


@jax.custom_vjp
def dense(x: jax.Array, kernel: jax.Array, indices: jax.Array) -> jax.Array:
    """x [batch, in] times the kernel [in, out] restricted to `indices` [out, k], in batch * out * k multiply-adds.

    Equal to `x @ kernel` when every weight off the indices is zero (the
    masked params of sparserl.sparse_network), in value and in gradient: the
    backward pass (a custom VJP) is the masked-dense one, dx = dy @ kernel^T
    and d kernel = x^T @ dy, two dense matmuls. So a condensed network trains
    exactly like the masked one (same gradients, also off the mask, where the
    sparse optimizer masks them and RigL's growth reads them), and only the
    forward pass is condensed: `_element_forward` below `ROW_MIN_BATCH`,
    `_row_forward` from it on. Gathered backward passes measured slower than
    these matmuls on the 2-core CPU, beside them at batch 128: the kept
    weights' gradient as a gathered product 1.3x slower, dx as scatter-adds
    2x; and the previous gathered backward left a DQN update at 0.43x of the
    masked one (`python -m sparserl.bench --rows=condensed` before this
    change). Vmappable like any jnp function.
    """
    return _forward(x, kernel, indices)


def _dense_forward(x, kernel, indices):
    return _forward(x, kernel, indices), (x, kernel)


def _dense_backward(residuals, output_grad):
    return *linear.matmul_backward(*residuals, output_grad), None


dense.defvjp(_dense_forward, _dense_backward)


def layer_indices(masks: Any, sparsities: Mapping[str, float], gradual: bool = False,
                  variable: frozenset = frozenset()) -> dict:
    """Indices of every masked kernel in `sparsities` (dense [in, out], conv as `fan_in_view`), nested like the params tree.

    `{"q1": {"dense_0": {"indices": [out, k]}}}` for the mask of
    `q1/dense_0/kernel`; k = `fan_in(in, layer sparsity)` (static). Layers kept
    dense (not in `sparsities`, or every input kept) have no entry and run as
    plain matmuls. `gradual` (a fan-in that falls to k over training: prune):
    [out, c] with c the largest capacity of `ladder(in, k)`, each neuron's kept
    inputs first, so their first c' columns are the indices at capacity c'
    (`at_capacity`). Layers in `variable` (SRigL's ablating ones; under native
    kernels, prune's, whose first out * c' slots are then those at capacity c')
    get `variable_fan_in` in that budget.
    """
    tree: dict = {}
    for path, mask in jax.tree_util.tree_flatten_with_path(masks)[0]:
        layer = layer_of(path)
        if layer not in sparsities or mask.ndim < 2:
            continue
        mask = fan_in_view(mask)
        if fan_in(mask.shape[0], sparsities[layer]) == mask.shape[0]:
            continue  # not masked, or kept dense (ERK gives small layers sparsity 0)
        node = tree
        for part in layer.split("/"):
            node = node.setdefault(part, {})
        k = fan_in(mask.shape[0], sparsities[layer])
        width = ladder(mask.shape[0], k)[-1] if gradual else k
        if layer in variable:
            node.update(variable_fan_in(mask, width))
        else:
            node["indices"] = structure_lib.fan_in_indices(mask, width)
    return tree


def fan_in_view(kernel: jax.Array) -> jax.Array:
    """A kernel (or its mask) as [fan-in, out]: a conv kernel [kh, kw, in, out] as [kh * kw * in, out], the rows of
    `networks.Im2colConv`'s product (and `structure.fan_in_indices`' positions)."""
    return kernel.reshape(-1, kernel.shape[-1])


def refresh(indices: dict, masks: Any) -> dict:
    """`indices` recomputed from new `masks` (same layers, same k): call it whenever the masks change."""

    def recompute(index_node, mask_node):
        if "offsets" in index_node:
            return variable_fan_in(fan_in_view(mask_node["kernel"]), index_node["indices"].shape[-1])
        if "indices" in index_node:
            return {"indices": structure_lib.fan_in_indices(mask_node["kernel"], index_node["indices"].shape[-1])}
        return {name: recompute(child, mask_node[name]) for name, child in index_node.items()}

    return recompute(indices, masks)


def is_faster(batch: int, in_features: int, out_features: int, k: int) -> bool:
    """The "auto" rule: condensed only on layers that gather at most `AUTO_MAX_GATHERED` scalars (batch * out * k).

    The backward pass is the masked one (`dense`), so only the forward pass
    decides. Measured on the 2-core CPU (jaxlib 0.10.2, 90% constant fan-in,
    `python -m sparserl.bench --rows=condensed`): scalar gathers cost about
    1-4 ns per element against about 0.01-0.25 ns per multiply-add of a dense
    matmul plus some 10 us per op, so `_element_forward` wins only on layers
    that gather little (512x2 at batch 1-16, 4x512 at batch 1). Alone,
    `_row_forward` beats the 512x512 matmul from batch 128 on (about 1.8x at
    128, 2.2x at 256), but inside a DQN update at batch 128 its transposes and
    loop made the update slower than the masked one (0.93-0.96x, same run),
    so "auto" leaves it out. `in_features` is unused by this rule; it is in
    the signature for a rule measured elsewhere.
    """
    del in_features
    return batch * out_features * k <= AUTO_MAX_GATHERED


def native_is_faster(batch: int, in_features: int, k: int) -> bool:
    """The "native" rule: C++ kernels on a layer of fan-in `in_features` that runs `k` inputs per output, from
    batch `NATIVE_MIN_BATCH` on and at densities k / in_features up to `MAX_CONDENSED_DENSITY`; masked matmuls
    elsewhere.

    Measured on the 2-core CPU (90% constant fan-in, 512x512 layer, `python -m
    sparserl.bench --rows=condensed`, two runs): forward + backward 1.60-1.70x
    as fast as masked at batch 16, 2.41-2.99x at 128, 2.61-2.69x at 256; at
    batch 1 the forward pass 0.66-0.91x (gathering 26k scalars loses to the
    matrix-vector product). The density bound is the break-even of those
    figures (`MAX_CONDENSED_DENSITY`): a layer ERK leaves denser than that runs
    masked.
    """
    return batch >= NATIVE_MIN_BATCH and k <= MAX_CONDENSED_DENSITY * in_features


def native_runs(rows: int, kernel: jax.Array, indices: Any) -> bool:
    """`native_is_faster` for one product of `rows` input rows (a batch; a conv's batch x positions patches) with a
    layer's stored indices (an array, or a ladder's tuple: its largest capacity counts)."""
    largest = max(leaf.shape[-1] for leaf in jax.tree.leaves(indices))
    return native_is_faster(rows, kernel.shape[0], largest)


def select(indices: dict, params: Any, batch: int, kernels: str) -> dict:
    """The part of `indices` to run condensed at this batch size under `kernels` (one of `KERNELS`); native
    layers are all kept here, and each product decides from its own rows (`native_runs`, `networks.Dense`)."""
    if kernels == "masked":
        return {}
    if kernels in ("condensed", "native"):  # native decides per product, from its rows (`native_runs`)
        return indices

    def chosen(index_node, param_node):
        if "indices" in index_node:
            in_features, out_features = fan_in_view(param_node["kernel"]).shape
            largest = max(indices.shape[-1] for indices in jax.tree.leaves(index_node["indices"]))
            return index_node if is_faster(batch, in_features, out_features, largest) else {}
        children = {name: chosen(child, param_node[name]) for name, child in index_node.items()}
        return {name: child for name, child in children.items() if child}

    return chosen(indices, params)
