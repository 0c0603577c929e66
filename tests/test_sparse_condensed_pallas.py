"""The Pallas condensed kernel (sparserl.sparse.condensed_pallas) in interpret mode on the CPU: forward against a
hand-computed layer, the masked dense matmul and a plain Python sum; gradients against masked dense; padding;
vmap over seeds; its Triton lowering; the GPU choice; and the `condensed_gpu` bench row, which times nothing here."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparserl.experiments.bench import condensed_gpu, timing
from sparserl.experiments.bench.table import Settings
from sparserl.sparse import condensed, condensed_pallas

# Jitted: interpret mode run eagerly dispatches every operation of its grid loop one by one (3x slower here).
interpreted = jax.jit(functools.partial(condensed_pallas.dense, interpret=True))


def _layer(seed, batch, in_features, out_features, k):
    """float32 (x, kernel zero off a random mask keeping k inputs per column, mask, indices [out, k] int32), drawn
    with NumPy: eager JAX random ops compile a program per shape, seconds on this machine."""
    rng = np.random.default_rng(seed)
    indices = np.sort([rng.choice(in_features, k, replace=False) for _ in range(out_features)], axis=1)
    mask = np.zeros((in_features, out_features), bool)
    mask[indices, np.arange(out_features)[:, None]] = True
    kernel = np.where(mask, rng.normal(size=mask.shape), 0.0).astype(np.float32)
    return rng.normal(size=(batch, in_features)).astype(np.float32), kernel, mask, indices.astype(np.int32)


def test_a_hand_computed_layer_with_a_padded_neuron():
    # [in=4, out=3], two kept inputs per neuron; neuron 2 keeps none: its indices point at zero weights (padding).
    kernel = jnp.array([[2.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.5, 0.0, 0.0], [0.0, 3.0, 0.0]])
    indices = jnp.array([[0, 2], [1, 3], [0, 1]], jnp.int32)
    x = jnp.array([[1.0, 2.0, 3.0, 4.0], [-1.0, 0.0, 2.0, 1.0]])
    # y[0] = [1*2 + 3*0.5, 2*-1 + 4*3, 0] = [3.5, 10, 0]; y[1] = [-1*2 + 2*0.5, 0*-1 + 1*3, 0] = [-1, 3, 0]
    np.testing.assert_array_equal(interpreted(x, kernel, indices), [[3.5, 10.0, 0.0], [-1.0, 3.0, 0.0]])


# Batches and outputs not multiples of condensed_pallas.BATCH_BLOCK (32) and OUTPUT_BLOCK (64): grids of several
# tiles whose last ones are padded (33 examples: 2 batch tiles; 70 and 130 outputs: 2 and 3 output tiles); a batch
# of 5 in one tile of 8 (the hand-computed layer above: one tile smaller than both blocks).
@pytest.mark.parametrize("batch, in_features, out_features", [(33, 20, 70), (5, 40, 130)])
def test_forward_equals_the_masked_dense_matmul_and_a_plain_python_sum(batch, in_features, out_features):
    x, kernel, _, indices = _layer(1, batch, in_features, out_features, 5)
    y = interpreted(x, kernel, indices)
    assert y.shape == (batch, out_features)
    np.testing.assert_allclose(y, x @ kernel, rtol=1e-5, atol=1e-5)
    expected = [[sum(x[b, i] * kernel[i, o] for i in indices[o]) for o in range(out_features)] for b in range(batch)]
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_gradients_equal_masked_dense_also_off_the_mask():
    x, kernel, mask, indices = _layer(2, 33, 16, 70, 4)
    target = np.random.default_rng(3).normal(size=(33, 70)).astype(np.float32)

    def loss(x, kernel):
        return jnp.sum(jnp.tanh(interpreted(x, kernel, indices)) * target)

    input_grad, kernel_grad = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, kernel)
    # The masked dense layer's gradients by hand: y = x W, dL/dy = (1 - tanh(y)^2) target.
    output_grad = (1 - np.tanh(x @ kernel) ** 2) * target
    np.testing.assert_allclose(input_grad, output_grad @ kernel.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(kernel_grad, x.T @ output_grad, rtol=1e-5, atol=1e-5)
    assert np.max(np.abs(np.where(mask, 0.0, kernel_grad))) > 0  # RigL grows from these


def test_vmap_over_three_seeds_equals_each_seed_alone():
    layers = [_layer(seed, 6, 16, 12, 4) for seed in range(3)]
    x, kernel, _, indices = (np.stack(parts) for parts in zip(*layers))

    batched = jax.jit(jax.vmap(interpreted))(x, kernel, indices)
    kernel_grads = jax.jit(jax.vmap(jax.grad(lambda x, w, i: jnp.sum(interpreted(x, w, i) ** 2), argnums=1)))(
        x, kernel, indices)
    for seed in range(3):
        np.testing.assert_array_equal(batched[seed], interpreted(x[seed], kernel[seed], indices[seed]))
        np.testing.assert_allclose(batched[seed], x[seed] @ kernel[seed], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(kernel_grads[seed], 2 * x[seed].T @ (x[seed] @ kernel[seed]), rtol=1e-5, atol=1e-5)


def test_the_kernel_lowers_to_triton_for_a_gpu_without_interpret_mode():
    # Lowering only (no GPU here): Pallas's Triton lowering rejects loads and stores of sizes that are not powers
    # of two and the operations Triton lacks. Odd shapes, and the vmapped gradient a training step takes.
    x, kernel, indices = jnp.zeros((2, 5, 40)), jnp.zeros((2, 40, 70)), jnp.zeros((2, 70, 4), jnp.int32)
    step = jax.jit(jax.vmap(jax.grad(lambda x, w, i: jnp.sum(condensed_pallas.dense(x, w, i, interpret=False) ** 2),
                                     argnums=(0, 1))))
    text = step.trace(x, kernel, indices).lower(lowering_platforms=("cuda",)).as_text()
    assert text.count("__gpu$xla.gpu.triton") == 1


@pytest.mark.parametrize("choice", ["xla", "pallas"])
def test_dense_on_gpu_runs_the_chosen_forward(monkeypatch, choice):
    calls = []
    monkeypatch.setattr(condensed_pallas, "GPU_FORWARD", choice)
    monkeypatch.setattr(condensed, "dense", lambda *arguments: calls.append(("xla", arguments)))
    monkeypatch.setattr(condensed_pallas, "dense", lambda *arguments, interpret: calls.append((interpret, arguments)))
    condensed_pallas.dense_on_gpu("x", "kernel", "indices")
    assert calls == [({"xla": "xla", "pallas": False}[choice], ("x", "kernel", "indices"))]


def test_the_bench_row_times_nothing_on_a_cpu(monkeypatch, capsys):
    def timed(*arguments, **keywords):
        raise AssertionError("the condensed_gpu row timed something on a CPU")

    monkeypatch.setattr(timing, "interleaved_ms", timed)
    assert condensed_gpu.rows(Settings(quick=True, peers=False)) == []
    assert capsys.readouterr().out == "condensed_gpu: not run, it needs a GPU (this process runs on cpu)\n"


def test_the_bench_programs_sum_kernel_gradients_over_the_scanned_batches():
    x, kernel, _, indices = _layer(4, 4, 8, 6, 2)
    xs, targets = np.stack([x, 2 * x]), np.ones((2, 4, 6), np.float32)
    programs = condensed_gpu.scanned_programs(condensed_gpu.LAYER_FUNCTIONS["masked"])
    np.testing.assert_allclose(programs["forward"](xs, kernel, indices), xs @ kernel, rtol=1e-5, atol=1e-5)
    kernel_gradient_sum, input_gradients = programs["forward+backward"](xs, targets, kernel, indices)
    output_gradients = 2 * (xs @ kernel - targets)
    np.testing.assert_allclose(kernel_gradient_sum, x.T @ output_gradients[0] + 2 * x.T @ output_gradients[1],
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(input_gradients, output_gradients @ kernel.T, rtol=1e-5, atol=1e-5)
