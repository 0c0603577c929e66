"""Mask structures, orthogonal to the topology method: unstructured, constant fan-in, N:M.

A structure says which groups of a kernel's entries each hold a fixed number
of kept connections. Kernels are [fan_in, out] (dense) or [h, w, in, out]
(conv, whose fan-in is h * w * in in that row-major order); an output neuron
is a kernel column.

- `unstructured`: the whole kernel is one group of n entries; it keeps
  n - floor(s * n) (docs/design.md section 4).
- `fan_in` (Lasby et al. 2023, "constant fan-in"): each output
  neuron is a group of its f inputs and keeps the same k = f - floor(s_l * f)
  of them, s_l the layer's sparsity from the distribution (ERK or uniform).
  So every column has exactly floor(s_l * f) zeros, the per-column form of the
  unstructured count; the layer's sparsity is floor(s_l * f) / f, at most s_l
  and less than 1 / f below it (tests/test_sparse_structure.py works ERK
  examples by hand).
- `nm:N:M` (Zhou et al. 2021, "N:M fine-grained structured sparsity"): the fan-in of each neuron is cut
  into groups of M consecutive inputs, each keeping N. The sparsity is fixed
  at 1 - N/M on every masked layer (the distribution does not apply). A
  trailing group of r < M inputs (f not a multiple of M) keeps min(N, r), as
  if padded with M - r inputs that are never kept.

Every mask operation works on a grouped view: `to_groups` reshapes a kernel
to [groups, group size] (padding N:M's last group), the operation ranks within
rows, and `from_groups` reshapes back. The unstructured view is one row in the
kernel's row-major order, so unstructured results are the flat ones.

Condensed kernels read a `fan_in` mask as columns of exactly k True entries:
`kept_per_group(Structure("fan_in"), shape, layer sparsity)` gives k and
`fan_in_indices(mask, k)` each neuron's kept input positions. SRigL changes k
when it ablates neurons (k' <= f; `sparserl.sparse.srigl`).
"""

import dataclasses
import math
import re

import jax
import jax.numpy as jnp

from sparserl.errors import ConfigError

UNSTRUCTURED = "unstructured"
FAN_IN = "fan_in"
NM = "nm"
ALLOWED = "unstructured, fan_in or nm:N:M with 1 <= N < M"
PAIRWISE_MAX = 16  # rows up to this long are ranked by pairwise comparison (`group_ranks`)


@dataclasses.dataclass(frozen=True)
class Structure:
    kind: str = UNSTRUCTURED
    n: int = 0  # N of N:M
    m: int = 0  # M of N:M

    @property
    def fixed_sparsity(self) -> float | None:
        """1 - N/M for N:M, None where the distribution decides."""
        return 1.0 - self.n / self.m if self.kind == NM else None

    def __str__(self) -> str:
        return f"nm:{self.n}:{self.m}" if self.kind == NM else self.kind


def is_concrete(value) -> bool:
    """True for a Python number; False for a traced value (a sparsity level vmapped over in a sweep)."""
    return isinstance(value, (int, float))


def parse(text: str) -> Structure:
    """'unstructured', 'fan_in' or 'nm:N:M'; raises ConfigError (field `sparse.structure`) naming the allowed values."""
    if text in (UNSTRUCTURED, FAN_IN):
        return Structure(text)
    match = re.fullmatch(r"nm:(\d+):(\d+)", text)
    if match and 1 <= int(match.group(1)) < int(match.group(2)):
        return Structure(NM, int(match.group(1)), int(match.group(2)))
    raise ConfigError("sparse.structure", f"unknown structure {text!r}; choose {ALLOWED}")


def zero_count(sparsity, size: int):
    """floor(sparsity * size): a Python int for a concrete sparsity, a traced int32 for a traced one."""
    if is_concrete(sparsity):
        return math.floor(sparsity * size)
    return jnp.floor(sparsity * size).astype(jnp.int32)


def fan_in(shape: tuple[int, ...]) -> int:
    return math.prod(shape[:-1])


def group_shape(structure: Structure, shape: tuple[int, ...]) -> tuple[int, int]:
    """[number of groups, group size] of the grouped view of a kernel of `shape`."""
    if structure.kind == UNSTRUCTURED:
        return 1, math.prod(shape)
    if structure.kind == FAN_IN:
        return shape[-1], fan_in(shape)
    return shape[-1] * -(-fan_in(shape) // structure.m), structure.m


def to_groups(structure: Structure, x: jax.Array, fill=0) -> jax.Array:
    """The [groups, group size] view of a kernel-shaped array; N:M's padding entries hold `fill`.

    fan_in: row j is column j's inputs. nm: row j * G + g is inputs g*M .. g*M + M - 1 of neuron j.
    """
    if structure.kind == UNSTRUCTURED:
        return x.reshape(1, -1)
    columns = x.reshape(fan_in(x.shape), x.shape[-1]).T  # [out, f]
    if structure.kind == FAN_IN:
        return columns
    groups, size = group_shape(structure, x.shape)
    padding = groups // x.shape[-1] * size - columns.shape[1]
    padded = jnp.pad(columns, ((0, 0), (0, padding)), constant_values=fill)
    return padded.reshape(groups, size)


def from_groups(structure: Structure, grouped: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """The inverse of `to_groups` (N:M's padding dropped), laid out row-major (`row_major`)."""
    if structure.kind == UNSTRUCTURED:
        return grouped.reshape(shape)
    columns = grouped.reshape(shape[-1], -1)[:, : fan_in(shape)]
    return row_major(columns.T.reshape(shape))


def row_major(x: jax.Array) -> jax.Array:
    """`x`, materialised in row-major order where it is computed.

    XLA makes the transposes of the grouped view free by giving their result a transposed layout. A mask computed
    that way inside a `lax.cond` (a topology update in a traced step: the compiled loop, an update without a plan)
    gives the cond's result that layout, so the branch that keeps the masks copied them into it on every step, and
    every masked update read them strided: the 4x MinAtar prune update ran at half speed. A 1-D view behind an
    optimization barrier has one layout, so the transpose happens here, in the branch that computes new masks.
    """
    return jax.lax.optimization_barrier(x.reshape(-1)).reshape(x.shape)


def valid(structure: Structure, shape: tuple[int, ...]) -> jax.Array:
    """True on the grouped view's real entries, False on N:M's padding."""
    return to_groups(structure, jnp.ones(shape, bool), fill=False)


def kept_per_group(structure: Structure, shape: tuple[int, ...], sparsity) -> jax.Array:
    """Connections each group keeps at `sparsity`: [groups] int32 (a Python int for concrete unstructured/fan_in).

    unstructured: n - floor(s * n); fan_in: k = f - floor(s * f). nm: a group of
    r real inputs keeps r - floor(p * (r - min(N, r))), p = s / (1 - N/M), so
    at s = 1 - N/M (p = 1 exactly in floating point) every full group keeps N,
    and gradual pruning (p from 0 to 1 on the cubic schedule) removes
    floor(p * (M - N)) per group.
    """
    groups, size = group_shape(structure, shape)
    if structure.kind != NM:
        kept = size - zero_count(sparsity, size)
        return kept if is_concrete(sparsity) else jnp.broadcast_to(kept, (groups,))
    real = jnp.sum(valid(structure, shape), axis=1)
    final_zeros = real - jnp.minimum(structure.n, real)
    progress = sparsity / structure.fixed_sparsity
    return (real - jnp.floor(progress * final_zeros).astype(jnp.int32)).astype(jnp.int32)


def group_ranks(scores: jax.Array) -> jax.Array:
    """Rank of every entry within its row, ascending by score (ties broken by position); [groups, size].

    Rows of up to `PAIRWISE_MAX` entries (N:M groups, small fan-ins) count, for
    each entry, the entries before it in that order: O(size^2) elementwise work
    that beats XLA's CPU sort by far. Longer rows use a stable argsort. Both
    give the same ranks.
    """
    size = scores.shape[1]
    if size <= PAIRWISE_MAX:
        mine, other = scores[:, :, None], scores[:, None, :]
        index = jnp.arange(size)
        earlier = index[None, :] < index[:, None]
        return jnp.sum((other < mine) | ((other == mine) & earlier), axis=2, dtype=jnp.int32)
    order = jnp.argsort(scores, axis=1, stable=True)
    rows = jnp.arange(scores.shape[0])[:, None]
    return jnp.zeros(scores.shape, jnp.int32).at[rows, order].set(jnp.arange(size, dtype=jnp.int32))


def keep_largest(structure: Structure, scores: jax.Array, kept) -> jax.Array:
    """A kernel-shaped mask keeping, in each group, the `kept` (scalar or [groups]) entries of largest score.

    Ranks ascend and the smallest (size - kept) ranks are dropped, so ties keep
    the later position; N:M's padding scores -inf and is never kept.
    """
    grouped = jnp.where(valid(structure, scores.shape), to_groups(structure, scores), -jnp.inf)
    size = grouped.shape[1]
    kept = jnp.reshape(jnp.asarray(kept), (-1, 1))
    return from_groups(structure, group_ranks(grouped) >= size - kept, scores.shape)


def random_mask(structure: Structure, key: jax.Array, shape: tuple[int, ...], sparsity) -> jax.Array:
    """A uniformly random structured mask: each group keeps `kept_per_group` entries."""
    return keep_largest(structure, jax.random.uniform(key, shape), kept_per_group(structure, shape, sparsity))


def column_counts(mask: jax.Array) -> jax.Array:
    """Kept inputs of every output neuron: [out] (conv: over h * w * in)."""
    return jnp.sum(mask.reshape(-1, mask.shape[-1]), axis=0)


def group_counts(structure: Structure, mask: jax.Array) -> jax.Array:
    """Kept entries of every group of the grouped view: [groups]."""
    return jnp.sum(to_groups(structure, mask, fill=False), axis=1)


def fan_in_indices(mask: jax.Array, k: int) -> jax.Array:
    """[out, k] int32: for each neuron (kernel column), the fan-in positions of its kept inputs, ascending.

    Positions index the flattened fan-in (h * w * in, row-major). For a
    `fan_in` mask every column has exactly k kept inputs. A column with fewer
    (a neuron SRigL ablated) is filled up with its first inactive positions,
    whose weights are 0 in the masked params, so a gather of params at these
    indices computes the same outputs as the masked dense kernel.
    """
    return jnp.argsort(~to_groups(Structure(FAN_IN), mask), axis=1, stable=True)[:, :k].astype(jnp.int32)
