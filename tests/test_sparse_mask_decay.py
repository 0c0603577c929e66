"""Tests for sparserl.sparse.mask_decay: N:M sparsity by a linearly decaying pruning mask (Kao et al. 2022, MDGF-Linear)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sparserl.configs.base import sparsity_config
from sparserl.configs import dqn as dqn_config
from sparserl.errors import ConfigError
from sparserl.sparse import SparsityConfig, sparse_optimizer
from sparserl.sparse.config import Window
from sparserl.sparse.mask_decay import mask_value
from sparserl.sparse.structure import group_counts, parse
from sparserl.sparse.topology import TOPOLOGIES

T, F = True, False
METHOD = TOPOLOGIES["mask_decay"]


def _config(structure="nm:2:4", start=0, end=4, period=1):
    return SparsityConfig(method="mask_decay", sparsity=parse(structure).fixed_sparsity, structure=structure,
                          settings=Window(update_period=period, update_start=start, update_end=end))


def _kernel(tree):
    return tree["layer"]["kernel"]


def test_mask_value_falls_linearly_from_start_to_end():
    config = _config(start=10, end=30)
    steps = jnp.array([0, 10, 15, 20, 29, 30, 100])
    np.testing.assert_allclose(mask_value(steps, config.settings), [1.0, 1.0, 0.75, 0.5, 0.05, 0.0, 0.0], rtol=1e-6)


def test_masks_are_recomputed_on_the_period_and_at_the_windows_last_step():
    config = _config(start=10, end=30, period=4)
    assert [t for t in range(40) if bool(METHOD.is_update_step(jnp.int32(t), config))] == [10, 14, 18, 22, 26, 29]


def test_two_steps_by_hand():
    """SGD(0.1) on a 4x2 kernel, nm:2:4, beta = 1, 0.75, 0.5 at steps 0, 1, 2 (window [0, 4))."""
    opt = sparse_optimizer(optax.sgd(0.1), _config())
    params, state = opt.init(jax.random.key(0), {"layer": {"kernel": jnp.array(
        [[0.5, -0.2], [-0.1, 0.4], [0.7, 0.1], [0.3, -0.6]])}})
    # The network starts dense (beta_0 = 1): the wrapper's masks are all-True, the params the weights.
    assert bool(jnp.all(_kernel(state.masks)))
    np.testing.assert_array_equal(_kernel(params), _kernel(state.topology.weights))
    # Step 0: E is all-True (beta = 1), so W <- W - 0.1 g: columns [0.49, -0.12, 0.73, 0.7] and [-0.3, 0.4, 0.1, -0.7].
    # E then keeps the 2 largest |W| of each column; the params carry beta_1 = 0.75 off E.
    grads = {"layer": {"kernel": jnp.array([[0.1, 1.0], [0.2, 0.0], [-0.3, 0.0], [-4.0, 1.0]])}}
    params, state = jax.jit(opt.apply_gradients)(jnp.int32(0), params, grads, state, jax.random.key(1))
    np.testing.assert_allclose(_kernel(state.topology.weights), [[0.49, -0.3], [-0.12, 0.4], [0.73, 0.1], [0.7, -0.7]],
                               rtol=1e-6)
    np.testing.assert_array_equal(_kernel(state.topology.nm_masks), [[F, F], [F, T], [T, F], [T, T]])
    np.testing.assert_allclose(_kernel(params), [[0.3675, -0.225], [-0.09, 0.4], [0.73, 0.075], [0.7, -0.7]], rtol=1e-6)
    assert bool(jnp.all(_kernel(state.masks)))  # still dense: contract 3 holds, params are nonzero everywhere
    # Step 1: the gradient reaching a pruned weight is scaled by beta_1 = 0.75, so column 0 moves by
    # -0.1 * [0.75, 0.75, 1, 1] and column 1 by -0.1 * [1.5, 3 (active), 0, 0]: W = [0.415, -0.195, 0.63, 0.6] and
    # [-0.45, 0.1, 0.1, -0.7]. Column 1's E changes (|-0.45| > 0.1); the params carry beta_2 = 0.5 off E.
    grads = {"layer": {"kernel": jnp.array([[1.0, 2.0], [1.0, 3.0], [1.0, 0.0], [1.0, 0.0]])}}
    params, state = jax.jit(opt.apply_gradients)(jnp.int32(1), params, grads, state, jax.random.key(1))
    np.testing.assert_allclose(_kernel(state.topology.weights),
                               [[0.415, -0.45], [-0.195, 0.1], [0.63, 0.1], [0.6, -0.7]], rtol=1e-6)
    np.testing.assert_array_equal(_kernel(state.topology.nm_masks), [[F, T], [F, F], [T, F], [T, T]])
    np.testing.assert_allclose(_kernel(params), [[0.2075, -0.45], [-0.0975, 0.05], [0.63, 0.05], [0.6, -0.7]],
                               rtol=1e-6)


def test_the_update_is_the_chain_rule_through_the_decayed_mask():
    """W moves by -lr * dL/dW of L(W ⊙ (E + beta (1 - E))), the gradient jax.grad gives for the composition."""
    opt = sparse_optimizer(optax.sgd(0.1), _config(start=0, end=8))
    kernel = jax.random.normal(jax.random.key(0), (8, 3))
    params, state = opt.init(jax.random.key(0), {"layer": {"kernel": kernel}})
    inputs = jax.random.normal(jax.random.key(1), (5, 8))

    def loss(params):
        return jnp.sum(jnp.tanh(inputs @ _kernel(params)) ** 2)

    step = jax.jit(opt.apply_gradients)
    for t in range(3):  # E is set after step 0; steps 1 and 2 run with beta = 7/8 and 6/8
        weights, nm_mask = _kernel(state.topology.weights), _kernel(state.topology.nm_masks)
        beta = 1.0 - t / 8
        chain = jax.grad(lambda w: loss({"layer": {"kernel": jnp.where(nm_mask, w, beta * w)}}))(weights)
        params, state = step(jnp.int32(t), params, jax.grad(loss)(params), state, jax.random.key(t))
        np.testing.assert_allclose(_kernel(state.topology.weights), weights - 0.1 * chain, rtol=1e-5, atol=1e-6)
    assert not bool(jnp.all(_kernel(state.topology.nm_masks)))


def _random_run(steps, kernel_key=0, structure="nm:1:4", start=0, end=5, period=2):
    """(params, state) after every one of `steps` Adam steps on random gradients, an 8x3 kernel (2 groups of 4 per column)."""
    opt = sparse_optimizer(optax.adam(0.05), _config(structure, start, end, period))
    params, state = opt.init(jax.random.key(0), {"layer": {"kernel": jax.random.normal(jax.random.key(kernel_key), (8, 3))}})
    history = []
    for t in range(steps):
        grads = {"layer": {"kernel": jax.random.normal(jax.random.key(100 + t), (8, 3))}}
        params, state = jax.jit(opt.apply_gradients)(jnp.int32(t), params, grads, state, jax.random.key(t))
        history.append((params, state))
    return history


def test_exactly_nm_sparse_from_update_end_on_and_the_mask_then_fixed():
    """Window [0, 5): the params written by step 4 are the network of step 5, exactly 1:4 sparse."""
    history = _random_run(9)
    for params, state in history[:4]:  # dense until beta reaches 0
        assert bool(jnp.all(_kernel(state.masks))) and bool(jnp.all(_kernel(params) != 0.0))
    final = _kernel(history[4][1].masks)
    for params, state in history[4:]:
        mask = _kernel(state.masks)
        np.testing.assert_array_equal(mask, final)
        np.testing.assert_array_equal(mask, _kernel(state.topology.nm_masks))
        assert group_counts(parse("nm:1:4"), mask).tolist() == [1] * 6  # every group of 4 keeps exactly 1
        assert bool(jnp.all(jnp.where(mask, 0.0, _kernel(params)) == 0.0))
        assert bool(jnp.all(jnp.where(mask, _kernel(params), 1.0) != 0.0))


def test_the_final_mask_is_the_magnitude_mask_of_the_weights_at_the_windows_last_step():
    """E is recomputed at the window's last step even where the period does not land (period 3: steps 0, 3 and 4)."""
    params, state = _random_run(5, period=3)[-1]
    weights = jnp.abs(_kernel(state.topology.weights)).reshape(2, 4, 3)
    expected = (weights == weights.max(axis=1, keepdims=True)).reshape(8, 3)
    np.testing.assert_array_equal(_kernel(state.masks), expected)


def test_seeds_vmapped_equal_single_seed_runs():
    config = _config("nm:2:4", start=0, end=3, period=1)
    opt = sparse_optimizer(optax.adam(0.05), config)
    kernels = jax.random.normal(jax.random.key(0), (2, 4, 2))
    grads = jax.random.normal(jax.random.key(1), (4, 2, 4, 2))  # step, seed

    def run(kernel, seed_grads):
        params, state = opt.init(jax.random.key(0), {"layer": {"kernel": kernel}})
        for t in range(4):  # across the switch to the N:M masks after step 2
            params, state = opt.apply_gradients(jnp.int32(t), params, {"layer": {"kernel": seed_grads[t]}}, state,
                                                jax.random.key(t))
        return params, state

    batched = jax.jit(jax.vmap(run, in_axes=(0, 1)))(kernels, grads)
    for seed in range(2):
        single = run(kernels[seed], grads[:, seed])
        jax.tree.map(lambda b, s: np.testing.assert_allclose(b[seed], s, rtol=1e-6, atol=1e-7), batched, single)


def test_mask_decay_needs_an_nm_structure():
    with pytest.raises(ConfigError) as error:
        METHOD.structure_for("fan_in")
    assert error.value.field == "sparse.structure"
    assert error.value.reason.startswith("--method=mask_decay trains N:M sparsity")
    assert METHOD.structure_for("nm:2:4") == "nm:2:4"


def test_the_config_block_sets_the_window_in_gradient_steps():
    sparse = dqn_config.get_config().sparse
    sparse.method, sparse.structure = "mask_decay", "nm:1:4"
    resolved = sparsity_config(sparse, 10_000, 0.75)
    window = resolved.settings
    assert (window.update_period, window.update_start, window.update_end) == (1, 0, 5_000)
