"""Tests for sparserl.sparse.optimizer: the optax wrapper that keeps masks, moments and params consistent."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sparserl.networks import MLP
from sparserl.sparse import SparseOptState, SparsityConfig, apply_masks, layer_sparsities, sparse_optimizer, zero_moments
from sparserl.sparse.config import Window
from sparserl.sparse.distributions import masked_layers
from sparserl.sparse.schedules import cubic_sparsity
from sparserl.sparse.topology import DropAndGrowSettings
from tests.test_sparse_structure import settings_for

T, F = True, False
NET = MLP((16, 16), 2)
IN_DIM = 4


def _params(seed=0):
    return NET.init(jax.random.key(seed), jnp.zeros((1, IN_DIM)))["params"]


def _loss(params, batch):
    x, y = batch
    return jnp.mean((NET.apply({"params": params}, x) - y) ** 2)


def _batch(key, size=32):
    x = jax.random.normal(key, (size, IN_DIM))
    y = jnp.stack([jnp.sin(x[:, 0]) + x[:, 1], x[:, 2] * x[:, 3]], axis=-1)
    return x, y


def _adam_moments(inner_state):
    adam = inner_state[0]
    assert isinstance(adam, optax.ScaleByAdamState)
    return adam


def _make_step(inner, opt):
    """One jitted update returning the sparse result and, from the same inputs, what the inner adam alone produced
    (grads and updates zeroed off the masks of the masked layers: every other mask is all-True)."""

    @jax.jit
    def step(t, params, state, batch, key):
        grads = jax.grad(_loss)(params, batch)
        layers = masked_layers(params, opt.config)
        ref_updates, ref_inner = inner.update(apply_masks(grads, state.masks, layers), state.inner, params)
        ref_params = optax.apply_updates(params, apply_masks(ref_updates, state.masks, layers))
        new_params, new_state = opt.apply_gradients(t, params, grads, state, key)
        return new_params, new_state, ref_params, ref_inner

    return step


def _kernel_nnz(masks):
    return {layer: int(masks[layer]["kernel"].sum()) for layer in masks}


@pytest.mark.parametrize("method", ["set", "rigl"])
def test_drop_grow_invariants_through_optimizer(method):
    inner = optax.adam(1e-2)
    config = SparsityConfig(method=method, sparsity=0.8, distribution="erk", settings=DropAndGrowSettings(
        update_period=4, update_start=0, update_end=22, drop_fraction=0.3))
    opt = sparse_optimizer(inner, config)
    params, state = opt.init(jax.random.key(0), _params())
    nnz0 = _kernel_nnz(state.masks)
    sparsities = layer_sparsities(params, config)
    for layer, s in sparsities.items():
        assert nnz0[layer] == state.masks[layer]["kernel"].size - math.floor(s * state.masks[layer]["kernel"].size)
    step = _make_step(inner, opt)
    key = jax.random.key(1)
    topology_changes = 0
    for t in range(1, 31):
        key, k_batch, k_opt = jax.random.split(key, 3)
        old_masks = state.masks
        params, state, ref_params, ref_inner = step(jnp.int32(t), params, state, _batch(k_batch), k_opt)
        assert _kernel_nnz(state.masks) == nnz0
        # Masked weights are exact zeros, biases never masked.
        for layer in params:
            assert not bool(jnp.any(jnp.where(state.masks[layer]["kernel"], 0.0, params[layer]["kernel"])))
            assert bool(jnp.all(state.masks[layer]["bias"]))
        changed = jax.tree.map(jnp.not_equal, state.masks, old_masks)
        grown = jax.tree.map(lambda new, old: new & ~old, state.masks, old_masks)
        num_changed = sum(int(c.sum()) for c in jax.tree.leaves(changed))
        is_update = t % 4 == 0 and t < 22
        if not is_update:
            assert num_changed == 0, t
            # Off-schedule the wrapper is exactly "inner adam on masked grads, masked updates".
            jax.tree.map(np.testing.assert_array_equal, params, ref_params)
        topology_changes += num_changed
        adam, ref_adam = _adam_moments(state.inner), _adam_moments(ref_inner)
        np.testing.assert_array_equal(adam.count, ref_adam.count)
        for moment, ref in ((adam.mu, ref_adam.mu), (adam.nu, ref_adam.nu)):
            for got, want, c in zip(jax.tree.leaves(moment), jax.tree.leaves(ref), jax.tree.leaves(changed)):
                # Changed connections: moments zeroed. Others: bit-identical to the inner adam.
                np.testing.assert_array_equal(np.where(c, 0.0, want), got)
        for w, g in zip(jax.tree.leaves(params), jax.tree.leaves(grown)):
            assert not bool(jnp.any(jnp.where(g, w, 0.0))), "grown weights must start at 0"
        # Kept connections keep the inner update's value exactly.
        for w, ref, m, c in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params), jax.tree.leaves(state.masks), jax.tree.leaves(changed)):
            np.testing.assert_array_equal(np.where(m & ~c, ref, 0.0), np.where(m & ~c, w, 0.0))
    assert topology_changes > 0


def _hand_case(drop_fraction, grads_01=-0.2):
    weights = jnp.array([[0.5, -0.1, 0.0], [-2.0, 0.3, 0.0]])
    mask = jnp.array([[T, T, F], [T, T, F]])
    params = {"layer": {"kernel": weights, "bias": jnp.array([0.1, 0.2, 0.3])}}
    grads = {"layer": {"kernel": jnp.array([[0.0, grads_01, 0.9], [0.1, 0.05, -0.4]]), "bias": jnp.array([1.0, 1.0, 1.0])}}
    masks = {"layer": {"kernel": mask, "bias": jnp.ones(3, bool)}}
    inner = optax.adam(0.0)  # no inner move: the topology step alone changes params
    config = SparsityConfig(method="rigl", sparsity=1 / 3, distribution="uniform", settings=DropAndGrowSettings(
        update_period=10, update_start=0, update_end=10**9, drop_fraction=drop_fraction))
    opt = sparse_optimizer(inner, config)
    state = SparseOptState(inner.init(params), masks)
    return opt, params, grads, state


def test_rigl_hand_case_through_optimizer():
    # f_10 just below 0.6 -> n = 2: drop -0.1 and 0.3, grow (0,2) (|g| 0.9) and (1,2) (|g| 0.4).
    opt, params, grads, state = _hand_case(0.6)
    new_params, new_state = jax.jit(opt.apply_gradients)(jnp.int32(10), params, grads, state, jax.random.key(0))
    np.testing.assert_array_equal(new_state.masks["layer"]["kernel"], [[T, F, T], [T, F, T]])
    np.testing.assert_array_equal(new_params["layer"]["kernel"], [[0.5, 0.0, 0.0], [-2.0, 0.0, 0.0]])
    np.testing.assert_array_equal(new_params["layer"]["bias"], np.float32([0.1, 0.2, 0.3]))
    adam = _adam_moments(new_state.inner)
    # mu = 0.1 * g on kept connections; dropped (0,1), (1,1) and grown (0,2), (1,2) zeroed.
    np.testing.assert_allclose(adam.mu["layer"]["kernel"], [[0.0, 0.0, 0.0], [0.1 * 0.1, 0.0, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(adam.nu["layer"]["kernel"], [[0.0, 0.0, 0.0], [0.001 * 0.01, 0.0, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(adam.mu["layer"]["bias"], [0.1, 0.1, 0.1], rtol=1e-6)
    # Not an update step (11): nothing changes.
    _, off_state = jax.jit(opt.apply_gradients)(jnp.int32(11), params, grads, state, jax.random.key(0))
    np.testing.assert_array_equal(off_state.masks["layer"]["kernel"], state.masks["layer"]["kernel"])


def test_dropped_and_regrown_connection_keeps_weight_and_moments():
    # |g(0,1)| = 1.0 is the largest: (0,1) is dropped (|w| = 0.1) and grown back in the same update.
    opt, params, grads, state = _hand_case(0.6, grads_01=-1.0)
    new_params, new_state = jax.jit(opt.apply_gradients)(jnp.int32(10), params, grads, state, jax.random.key(0))
    np.testing.assert_array_equal(new_state.masks["layer"]["kernel"], [[T, T, T], [T, F, F]])
    np.testing.assert_array_equal(new_params["layer"]["kernel"], np.float32([[0.5, -0.1, 0.0], [-2.0, 0.0, 0.0]]))
    adam = _adam_moments(new_state.inner)
    np.testing.assert_allclose(adam.mu["layer"]["kernel"], [[0.0, -0.1, 0.0], [0.01, 0.0, 0.0]], rtol=1e-6)


def test_no_topology_change_after_update_end():
    inner = optax.adam(1e-2)
    config = SparsityConfig(method="rigl", sparsity=0.8, settings=DropAndGrowSettings(
        update_period=2, update_start=0, update_end=20, drop_fraction=0.5))
    opt = sparse_optimizer(inner, config)
    params, state = opt.init(jax.random.key(0), _params())
    step = _make_step(inner, opt)
    key = jax.random.key(3)
    before_end_changes = 0
    for t in range(1, 31):
        key, k_batch, k_opt = jax.random.split(key, 3)
        old = state.masks
        params, state, ref_params, _ = step(jnp.int32(t), params, state, _batch(k_batch), k_opt)
        n = sum(int(c.sum()) for c in jax.tree.leaves(jax.tree.map(jnp.not_equal, state.masks, old)))
        if t >= 20:
            assert n == 0
            jax.tree.map(np.testing.assert_array_equal, params, ref_params)
        else:
            before_end_changes += n
    assert before_end_changes > 0


@pytest.mark.parametrize("distribution", ["erk", "uniform"])
def test_prune_schedule(distribution):
    inner = optax.adam(1e-2)
    t0, t1, freq = 5, 45, 10
    config = SparsityConfig(method="prune", sparsity=0.9, distribution=distribution,
                            settings=Window(update_period=freq, update_start=t0, update_end=t1))
    opt = sparse_optimizer(inner, config)
    params, state = opt.init(jax.random.key(0), _params())
    assert all(bool(jnp.all(m)) for m in jax.tree.leaves(state.masks))  # masks start dense
    final = layer_sparsities(params, config)
    assert set(final) == {"dense_0", "dense_1", "output"}

    @jax.jit
    def step(t, params, state, batch):
        grads = jax.grad(_loss)(params, batch)
        updates, _ = inner.update(apply_masks(grads, state.masks), state.inner, params)
        pre_prune = optax.apply_updates(params, apply_masks(updates, state.masks))
        new_params, new_state = opt.apply_gradients(t, params, grads, state, jax.random.key(0))
        return new_params, new_state, pre_prune

    pruning_steps = {5, 15, 25, 35, 45}
    pruned_somewhere = False
    expected = {layer: 0.0 for layer in final}
    key = jax.random.key(2)
    for t in range(0, 70):
        key, k_batch = jax.random.split(key)
        old = state.masks
        params, state, pre_prune = step(jnp.int32(t), params, state, _batch(k_batch))
        if t in pruning_steps:
            p = (t - t0) / (t1 - t0)
            expected = {layer: s * (1 - (1 - p) ** 3) for layer, s in final.items()}
        for layer, s_t in expected.items():
            kernel_mask = np.asarray(state.masks[layer]["kernel"])
            n = kernel_mask.size
            assert int((~kernel_mask).sum()) == math.floor(s_t * n), (t, layer)
            assert bool(jnp.all(state.masks[layer]["bias"]))
            assert not np.any(np.where(kernel_mask, 0.0, np.asarray(params[layer]["kernel"])))
            if t in pruning_steps and t > t0:
                newly_pruned = np.asarray(old[layer]["kernel"]) & ~kernel_mask
                magnitudes = np.abs(np.asarray(pre_prune[layer]["kernel"]))
                if newly_pruned.any():  # the count itself is checked above
                    # Smallest magnitudes pruned: nothing pruned is larger than anything kept.
                    assert magnitudes[newly_pruned].max() <= magnitudes[kernel_mask].min()
                    pruned_somewhere = True
            elif t not in pruning_steps:
                np.testing.assert_array_equal(kernel_mask, old[layer]["kernel"])
    assert pruned_somewhere
    for layer, s in final.items():  # final sparsity reached at t1 and then fixed
        assert int((~np.asarray(state.masks[layer]["kernel"])).sum()) == math.floor(s * state.masks[layer]["kernel"].size)


def test_cubic_per_layer_target_matches_float64_formula():
    # The jitted float32 schedule must floor to the same count as the exact formula on realistic layer sizes.
    for n in (64, 256, 4096, 262144, 1605632):
        for s_f in (0.5, 0.8, 0.9, 0.95, 0.99):
            for t in range(0, 101, 5):
                got = math.floor(float(cubic_sparsity(jnp.int32(t), s_f, 0, 100)) * n)
                want = math.floor(s_f * (1 - (1 - t / 100) ** 3) * n)
                assert abs(got - want) <= 1


@pytest.mark.parametrize("method", ["rigl", "static"])
def test_sparse_training_reduces_loss_and_keeps_zeros(method):
    inner = optax.adam(3e-3)
    net = MLP((64, 64), 2)
    config = SparsityConfig(method=method, sparsity=0.9,
                            settings=settings_for(method, update_period=10, update_start=0, update_end=80, drop_fraction=0.3))
    opt = sparse_optimizer(inner, config)

    def loss_fn(params, batch):
        x, y = batch
        return jnp.mean((net.apply({"params": params}, x) - y) ** 2)

    params, state = opt.init(jax.random.key(0), net.init(jax.random.key(1), jnp.zeros((1, IN_DIM)))["params"])
    initial_masks = state.masks

    @jax.jit
    def train_step(t, params, state, key):
        k_batch, k_opt = jax.random.split(key)
        batch = _batch(k_batch, 128)
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        params, state = opt.apply_gradients(t, params, grads, state, k_opt)
        leaks = [jnp.any(jnp.where(m, 0.0, w) != 0.0) for w, m in zip(jax.tree.leaves(params), jax.tree.leaves(state.masks))]
        return params, state, jnp.any(jnp.stack(leaks))

    eval_batch = _batch(jax.random.key(99), 512)
    first = float(loss_fn(params, eval_batch))
    key = jax.random.key(5)
    for t in range(1, 101):
        key, sub = jax.random.split(key)
        params, state, leaked = train_step(jnp.int32(t), params, state, sub)
        assert not bool(leaked), f"a masked weight is nonzero after step {t}"
    last = float(loss_fn(params, eval_batch))
    assert last < 0.8 * first
    masks_changed = any(bool(jnp.any(a != b)) for a, b in zip(jax.tree.leaves(state.masks), jax.tree.leaves(initial_masks)))
    assert masks_changed == (method == "rigl")
    total = sum(m.size for m in jax.tree.leaves(state.masks) if m.ndim == 2)
    zeros = sum(int((~m).sum()) for m in jax.tree.leaves(state.masks) if m.ndim == 2)
    assert abs(zeros / total - 0.9) < 3 / total


def test_dense_method_equals_plain_adam():
    inner = optax.adam(1e-2)
    opt = sparse_optimizer(inner, SparsityConfig(method="dense"))
    params0 = _params()
    params, state = opt.init(jax.random.key(0), params0)
    jax.tree.map(np.testing.assert_array_equal, params, params0)
    ref_params, ref_state = params0, inner.init(params0)

    @jax.jit
    def both(t, params, state, ref_params, ref_state):
        grads = jax.grad(_loss)(params, _batch(jax.random.fold_in(jax.random.key(0), t)))
        params, state = opt.apply_gradients(t, params, grads, state, jax.random.key(1))
        updates, ref_state = inner.update(grads, ref_state, ref_params)
        return params, state, optax.apply_updates(ref_params, updates), ref_state

    for t in range(1, 6):
        params, state, ref_params, ref_state = both(jnp.int32(t), params, state, ref_params, ref_state)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), params, ref_params)


def test_zero_moments_leaves_count():
    params = {"a": jnp.ones((2, 2)), "b": jnp.ones(3)}
    inner = optax.adam(1e-2)
    state = inner.init(params)
    _, state = inner.update(params, state, params)
    reset = {"a": jnp.array([[True, False], [False, False]]), "b": jnp.zeros(3, bool)}
    out = zero_moments(state, params, reset)
    assert int(out[0].count) == 1
    np.testing.assert_allclose(out[0].mu["a"], [[0.0, 0.1], [0.1, 0.1]], rtol=1e-6)
    np.testing.assert_array_equal(out[0].mu["b"], state[0].mu["b"])


@functools.lru_cache(maxsize=None)
def _vmap_setup(method):
    """Jitted init (vmapped and single) and update (single) for `method`; cached so the tests share compilations."""
    inner = optax.adam(1e-2)
    config = SparsityConfig(method=method, sparsity=0.8, settings=settings_for(
        method, update_period=3, update_start=0, update_end=100, drop_fraction=0.3))
    opt = sparse_optimizer(inner, config)

    def init(key):
        k_net, k_mask = jax.random.split(key)
        return opt.init(k_mask, NET.init(k_net, jnp.zeros((1, IN_DIM)))["params"])

    def update(t, params, state, key):
        k_batch, k_opt = jax.random.split(key)
        grads = jax.grad(_loss)(params, _batch(k_batch))
        return opt.apply_gradients(t, params, grads, state, k_opt)

    return init, update, jax.jit(jax.vmap(init)), jax.jit(init), jax.jit(update)


def _assert_trees_match(a, b):
    def check(x, y):
        if x.dtype == jnp.bool_ or jnp.issubdtype(x.dtype, jnp.integer):
            np.testing.assert_array_equal(x, y)
        else:
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)

    jax.tree.map(check, a, b)


@pytest.mark.parametrize("method, batched_step", [("rigl", True), ("rigl", False)], ids=["batched_step", "unbatched_step"])
def test_vmap_over_seeds_equals_separate_runs(method, batched_step):
    _, update, v_init, s_init, s_update = _vmap_setup(method)
    keys = jax.random.split(jax.random.key(42), 3)
    v_params, v_state = v_init(keys)
    separate = [s_init(k) for k in keys]
    for i in range(3):
        _assert_trees_match(jax.tree.map(lambda x: x[i], (v_params, v_state)), separate[i])
    step_axis = 0 if batched_step else None
    v_update = jax.jit(jax.vmap(update, in_axes=(step_axis, 0, 0, 0)))
    changed = 0
    for t in range(1, 5):  # topology update at 3
        step_keys = jax.vmap(lambda k: jax.random.fold_in(k, t))(keys)
        step = jnp.full((3,), t, jnp.int32) if batched_step else jnp.int32(t)
        old = v_state.masks
        v_params, v_state = v_update(step, v_params, v_state, step_keys)
        changed += sum(int(c.sum()) for c in jax.tree.leaves(jax.tree.map(jnp.not_equal, v_state.masks, old)))
        for i in range(3):
            separate[i] = s_update(jnp.int32(t), *separate[i], step_keys[i])
    assert changed > 0  # the run crossed a topology update
    for i in range(3):
        _assert_trees_match(jax.tree.map(lambda x: x[i], (v_params, v_state)), separate[i])
    # Seeds really differ.
    assert not bool(jnp.all(v_state.masks["dense_1"]["kernel"][0] == v_state.masks["dense_1"]["kernel"][1]))
