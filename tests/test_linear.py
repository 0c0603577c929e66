"""sparserl.linear.matmul: x @ kernel with its gradients written as x^T @ dy (narrow outputs: (dy^T @ x)^T) and
dy @ kernel^T."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparserl import linear


def _autodiff_and_ours(x, kernel, target):
    def loss(product):
        return lambda x, kernel: jnp.sum(jnp.tanh(product(x, kernel)) * target)

    ours = jax.value_and_grad(loss(linear.matmul), argnums=(0, 1))(x, kernel)
    autodiff = jax.value_and_grad(loss(jnp.matmul), argnums=(0, 1))(x, kernel)
    return ours, autodiff


@pytest.mark.parametrize("x_shape", [(7, 5), (2, 3, 4, 5)])  # a dense layer's batch; im2col's [batch, h, w, patch]
@pytest.mark.parametrize("outputs", [1, 3, linear.NARROW_OUTPUT + 1])  # x^T @ dy; (dy^T @ x)^T for narrow outputs
def test_value_and_gradients_equal_autodiff_of_the_plain_matmul(x_shape, outputs):
    x = jax.random.normal(jax.random.key(0), x_shape)
    kernel = jax.random.normal(jax.random.key(1), (5, outputs))
    target = jax.random.normal(jax.random.key(2), (*x_shape[:-1], outputs))
    (value, (x_grad, kernel_grad)), (expected_value, (expected_x_grad, expected_kernel_grad)) = _autodiff_and_ours(x, kernel, target)
    np.testing.assert_allclose(value, expected_value, rtol=1e-6)
    np.testing.assert_allclose(x_grad, expected_x_grad, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(kernel_grad, expected_kernel_grad, rtol=1e-5, atol=1e-6)
    # d kernel[i, o] = sum over the leading axes of x[..., i] * dy[..., o], by hand
    output_grad = target * (1 - jnp.tanh(x @ kernel) ** 2)
    by_hand = np.einsum("ni,no->io", np.asarray(x).reshape(-1, 5), np.asarray(output_grad).reshape(-1, outputs))
    np.testing.assert_allclose(kernel_grad, by_hand, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("outputs", [2, linear.NARROW_OUTPUT + 1])
def test_vmap_over_seeds_and_jit_equal_each_seed_alone(outputs):
    x = jax.random.normal(jax.random.key(3), (3, 6, 4))
    kernel = jax.random.normal(jax.random.key(4), (3, 4, outputs))
    grad = jax.grad(lambda x, kernel: jnp.sum(linear.matmul(x, kernel) ** 2), argnums=(0, 1))
    batched = jax.jit(jax.vmap(grad))(x, kernel)
    for seed in range(3):
        alone = jax.grad(lambda x, kernel: jnp.sum((x @ kernel) ** 2), argnums=(0, 1))(x[seed], kernel[seed])
        np.testing.assert_allclose(batched[0][seed], alone[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(batched[1][seed], alone[1], rtol=1e-5, atol=1e-6)


def _primitives(function, *arguments) -> set[str]:
    return {equation.primitive.name for equation in jax.make_jaxpr(function)(*arguments).jaxpr.eqns}


def test_inside_autodiff_backward_matmul_is_the_plain_product_with_autodiffs_gradient():
    x = jax.random.normal(jax.random.key(5), (4, 6))
    kernel = jax.random.normal(jax.random.key(6), (6, 3))
    product = lambda x, kernel: linear.matmul(x, kernel)  # a fresh function per trace: JAX caches traces per function
    gradient = lambda: jax.jit(jax.grad(lambda x, kernel: jnp.sum(jnp.tanh(linear.matmul(x, kernel))), argnums=(0, 1)))
    assert "custom_vjp_call" in _primitives(product, x, kernel)
    ours = gradient()(x, kernel)
    with linear.autodiff_backward():
        assert _primitives(lambda x, kernel: product(x, kernel), x, kernel) == {"dot_general"}
        traced_inside = gradient()
        autodiff = traced_inside(x, kernel)
    assert "custom_vjp_call" in _primitives(lambda x, kernel: product(x, kernel), x, kernel)  # the block has ended
    assert "custom_vjp_call" not in str(jax.make_jaxpr(traced_inside)(x, kernel))  # what was traced inside keeps it
    for expected, actual in zip(ours, autodiff):
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)
