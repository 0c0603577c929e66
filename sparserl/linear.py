"""The matmul of every dense layer, with a backward pass that writes the kernel gradient in the kernel's layout.

`matmul(x, kernel)` is `x @ kernel` for x [..., in] and kernel [in, out]. Its
gradient is the usual one (dx = dy @ kernel^T, d kernel = x^T @ dy, Goodfellow
et al. 2016, section 6.5.9); only how it is written differs from autodiff's.

Why: JAX's transpose rule for the kernel operand of a dot computes
dy^T-by-x as an [out, in] product and transposes it. On the 2-core CPU
(jaxlib 0.10.2) XLA kept that [out, in] product and fused the transpose into
each consumer: the weight decay and Adam's two moment updates each re-read the
gradient in column order. For DQN's 512x512 layer at batch 128, those two
fusions took about 0.8 ms each against about 0.1 ms with the gradient written
as x^T @ dy, [in, out] (`jax.profiler` traces of one update). A DQN update of
Graesser et al.'s 2x512 network at batch 128 runs about 1.2x faster with
this matmul, a SAC 2x256 update about 1.08x and a Nature CNN DQN update about
1.06x (`python -m sparserl.bench --rows=kernel_gradient`), and DQN CartPole
end to end at Graesser's protocol about 1.3x (README, Performance). `networks.Im2colConv` keeps autodiff's product: its
patches have far more rows (batch x positions) than the kernel has entries,
so transposing them cost more (a Nature CNN DQN update about 1.1x slower).

A narrow output layer (out <= `NARROW_OUTPUT`: Q-value, policy and value heads) is the exception. There XLA:CPU's
x^T @ dy, an [in, out] product with out of 2 to 16, took 0.07-0.21 ms for 0.03-2M multiply-adds (DQN's
512 -> 2 head at batch 128: 0.095 ms), where the [out, in] product dy^T @ x, kept from being folded back into the
same dot by an optimization barrier and then transposed, took 0.013-0.04 ms (3-7x faster; out = 1 and
out >= 32 gain nothing or lose; `jax.profiler` traces of a DQN update, then timed alone at batch 32-256,
in 64-1,024, one seed and two vmapped). Its transpose is a few thousand floats.

`autodiff_backward()` is the comparison's other side: what is traced inside it differentiates `matmul` as autodiff
differentiates `x @ kernel`, so one process can time both (the bench's `kernel_gradient` row).
"""

import contextlib
import contextvars
from typing import Iterator

import jax

NARROW_OUTPUT = 16  # up to this many outputs, the kernel gradient is the [out, in] product, transposed

_AUTODIFF_BACKWARD = contextvars.ContextVar("sparserl_linear_autodiff_backward", default=False)


def matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """x [..., in] @ kernel [in, out]; the backward pass is `matmul_backward` (autodiff's inside `autodiff_backward`)."""
    return x @ kernel if _AUTODIFF_BACKWARD.get() else _kernel_layout_matmul(x, kernel)


@contextlib.contextmanager
def autodiff_backward() -> Iterator[None]:
    """Inside, `matmul` is the plain `x @ kernel`, differentiated by autodiff. It counts when a function is traced:
    one traced inside (a jitted function: on its first call) keeps autodiff's product after the block ends, and one
    JAX traced before, outside, keeps `matmul_backward` inside it (JAX caches a trace per function)."""
    token = _AUTODIFF_BACKWARD.set(True)
    try:
        yield
    finally:
        _AUTODIFF_BACKWARD.reset(token)


@jax.custom_vjp
def _kernel_layout_matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """`x @ kernel` whose backward pass is `matmul_backward`."""
    return x @ kernel


def matmul_backward(x: jax.Array, kernel: jax.Array, output_grad: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(dx, d kernel) = (dy @ kernel^T, x^T @ dy), leading axes of x summed over, the kernel gradient [in, out]
    (for 2 to `NARROW_OUTPUT` outputs computed as (dy^T @ x)^T, see the module docstring).

    dx is the very dot autodiff emits (dy contracted with the kernel's output axis): written as
    `dy @ kernel.T`, XLA:CPU summed it in another order under the seed vmap than for one seed, and N
    vmapped seeds must equal single-seed runs bit for bit (tests/test_train.py, test_compiled_runner.py).
    """
    flat_x = x.reshape(-1, x.shape[-1])
    flat_grad = output_grad.reshape(-1, output_grad.shape[-1])
    input_grad = jax.lax.dot_general(output_grad, kernel, (((output_grad.ndim - 1,), (1,)), ((), ())))
    if 2 <= kernel.shape[-1] <= NARROW_OUTPUT:
        by_outputs = jax.lax.dot_general(flat_grad, flat_x, (((0,), (0,)), ((), ())))
        return input_grad, jax.lax.optimization_barrier(by_outputs).T
    kernel_grad = jax.lax.dot_general(flat_x, flat_grad, (((0,), (0,)), ((), ())))
    return input_grad, kernel_grad


def _matmul_forward(x, kernel):
    return x @ kernel, (x, kernel)


def _matmul_backward(residuals, output_grad):
    return matmul_backward(*residuals, output_grad)


_kernel_layout_matmul.defvjp(_matmul_forward, _matmul_backward)

