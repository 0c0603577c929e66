"""Condensed kernels on a GPU: the constant fan-in forward pass as a Pallas kernel, the backward pass masked.

For a kernel W [in, out] whose mask keeps the same k inputs per output neuron, listed in indices idx [out, k]
(constant fan-in: Lasby et al. 2023, SRigL, section 3.1 and their condensed linear layer), `dense` computes

    y[b, o] = sum_j x[b, idx[o, j]] * W[idx[o, j], o]

in batch * out * k multiply-adds instead of batch * in * out, the kept values gathered once per call as
values[o, j] = W[idx[o, j], o] (`condensed._kept_values`), like `sparserl.sparse.condensed.dense`.

Tiling (`forward`), written for Pallas's Triton lowering: a grid of (output block, batch block) programs, each
computing an `OUTPUT_BLOCK` x `BATCH_BLOCK` tile of y^T (smaller powers of two for small layers) in registers,
with a `lax.fori_loop` over the k kept inputs: step j gathers the tile's `OUTPUT_BLOCK` rows x^T[idx[o, j]]
(each `BATCH_BLOCK` examples long and contiguous, so a GPU's loads coalesce) and adds them, scaled by
values[o, j]. Every array a program loads or stores has a power-of-two size, as Triton requires. Shapes that
are not multiples of the blocks are padded: the batch with zero examples, the outputs with neurons whose
indices point at input 0 with value 0; the padding is cut off the result. The block sizes are untuned.

Backward: a custom VJP that is the masked-dense one (`linear.matmul_backward`: dx = dy W^T, dW = x^T dy), as
in `condensed.dense`, so the gradients are the masked network's, also off the mask, where RigL's growth reads
them: a network running this kernel trains exactly like the masked one.

On a GPU, `dense_on_gpu` runs the forward that measured faster there (`GPU_FORWARD`): this kernel or
`condensed.dense`'s XLA gathers. On a CPU the kernel runs only in Pallas's interpret mode (`interpret=True`),
for tests: it is never timed there.
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pallas_triton

from sparserl import linear
from sparserl.sparse import condensed

# Tile of y^T one program computes: outputs x examples (at most; the next power of two of a smaller dimension).
OUTPUT_BLOCK = 64
BATCH_BLOCK = 32

# The condensed forward `dense_on_gpu` runs on a GPU: "xla" (`condensed.dense`, gathers) or "pallas" (`dense`),
# whichever `python -m sparserl.bench --rows=condensed_gpu` measures faster there. No GPU has run that row yet, so
# it stays "xla" until a device run of the row says otherwise.
GPU_FORWARD = "xla"


def _block(size: int, largest: int) -> int:
    """The block along a dimension of `size`: `largest`, or the next power of two of a smaller `size`."""
    return min(largest, pl.next_power_of_2(size))


def _padded(size: int, block: int) -> int:
    return pl.cdiv(size, block) * block


def _tile_kernel(transposed_x_ref, transposed_indices_ref, transposed_values_ref, transposed_y_ref):
    """One tile: y^T[o, b] = sum_j values^T[j, o] * x^T[idx^T[j, o], b], a `fori_loop` over the k kept inputs.

    Refs: x^T [in, batch block], indices^T and values^T [k, output block], y^T [output block, batch block].
    """

    def add_kept_input(j, accumulator):
        rows = transposed_indices_ref[j, :]
        return accumulator + transposed_x_ref[rows, :] * transposed_values_ref[j, :][:, None]

    initial = jnp.zeros(transposed_y_ref.shape, transposed_y_ref.dtype)
    transposed_y_ref[...] = jax.lax.fori_loop(0, transposed_indices_ref.shape[0], add_kept_input, initial)


def forward(x: jax.Array, values: jax.Array, indices: jax.Array, *, interpret: bool) -> jax.Array:
    """y [batch, out] = sum_j x[:, idx[o, j]] * values[o, j], the Pallas kernel on x [batch, in], values and
    indices [out, k] (see the module docstring for the tiling and padding). `interpret`: Pallas's interpret mode
    (runs anywhere, slowly; the CPU's tests), else the kernel compiled for the GPU."""
    (batch, in_features), (out_features, k) = x.shape, indices.shape
    batch_block, output_block = _block(batch, BATCH_BLOCK), _block(out_features, OUTPUT_BLOCK)
    padded_batch, padded_out = _padded(batch, batch_block), _padded(out_features, output_block)
    dtype = jnp.result_type(x, values)
    transposed_x = jnp.pad(x.T.astype(dtype), ((0, 0), (0, padded_batch - batch)))
    padding = ((0, 0), (0, padded_out - out_features))  # padded neurons: input 0 at value 0
    transposed_indices, transposed_values = jnp.pad(indices.T, padding), jnp.pad(values.T.astype(dtype), padding)
    transposed_y = pl.pallas_call(
        _tile_kernel,
        out_shape=jax.ShapeDtypeStruct((padded_out, padded_batch), dtype),
        grid=(padded_out // output_block, padded_batch // batch_block),
        in_specs=[pl.BlockSpec((in_features, batch_block), lambda o, b: (0, b)),
                  pl.BlockSpec((k, output_block), lambda o, b: (0, o)),
                  pl.BlockSpec((k, output_block), lambda o, b: (0, o))],
        out_specs=pl.BlockSpec((output_block, batch_block), lambda o, b: (o, b)),
        compiler_params=pallas_triton.CompilerParams(),  # Triton, not Mosaic GPU (jax 0.10's default)
        interpret=interpret,
    )(transposed_x, transposed_indices, transposed_values)
    return transposed_y[:out_features, :batch].T


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _dense(x: jax.Array, kernel: jax.Array, indices: jax.Array, interpret: bool) -> jax.Array:
    return forward(x, condensed._kept_values(kernel, indices), indices, interpret=interpret)


def _dense_forward(x, kernel, indices, interpret):
    return _dense(x, kernel, indices, interpret), (x, kernel)


def _dense_backward(interpret, residuals, output_grad):
    del interpret  # the backward pass is the masked one whichever way the forward ran
    return *linear.matmul_backward(*residuals, output_grad), None


_dense.defvjp(_dense_forward, _dense_backward)


def dense(x: jax.Array, kernel: jax.Array, indices: jax.Array, *, interpret: bool) -> jax.Array:
    """x [batch, in] times the kernel [in, out] restricted to `indices` [out, k]: the Pallas forward (`forward`),
    the masked backward (dx = dy @ kernel^T, d kernel = x^T @ dy: `linear.matmul_backward`).

    Equal to `x @ kernel` in value and gradient when the kernel is zero off the indices (the masked params of
    `sparserl.sparse_network`), like `condensed.dense`. Vmappable over leading (seed) axes of all three.
    `interpret`: run in Pallas's interpret mode (CPU tests) instead of compiling for the GPU.
    """
    return _dense(x, kernel, indices, interpret)


def dense_on_gpu(x: jax.Array, kernel: jax.Array, indices: jax.Array) -> jax.Array:
    """The condensed layer on a GPU: `GPU_FORWARD`'s forward ("pallas": `dense`, "xla": `condensed.dense`), both
    with the masked backward pass."""
    layers = {"xla": condensed.dense, "pallas": functools.partial(dense, interpret=False)}
    return layers[GPU_FORWARD](x, kernel, indices)
