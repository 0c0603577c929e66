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

`autodiff_backward()` is the comparison's other side: what is traced inside it differentiates `matmul` as autodiff
differentiates `x @ kernel`, so one process can time both (the bench's `kernel_gradient` row).
"""

import contextlib
import contextvars
from typing import Iterator

import jax

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
    """(dx, d kernel) = (dy @ kernel^T, x^T @ dy), leading axes of x summed over, the kernel gradient [in, out].

    dx is the very dot autodiff emits (dy contracted with the kernel's output axis): written as
    `dy @ kernel.T`, XLA:CPU summed it in another order under the seed vmap than for one seed, and N
    vmapped seeds must equal single-seed runs bit for bit (tests/test_train.py, test_compiled_runner.py).
    """
    flat_x = x.reshape(-1, x.shape[-1])
    flat_grad = output_grad.reshape(-1, output_grad.shape[-1])
    input_grad = jax.lax.dot_general(output_grad, kernel, (((output_grad.ndim - 1,), (1,)), ((), ())))
    kernel_grad = jax.lax.dot_general(flat_x, flat_grad, (((0,), (0,)), ((), ())))
    return input_grad, kernel_grad


def _matmul_forward(x, kernel):
    return x @ kernel, (x, kernel)


def _matmul_backward(residuals, output_grad):
    return matmul_backward(*residuals, output_grad)


_kernel_layout_matmul.defvjp(_matmul_forward, _matmul_backward)

