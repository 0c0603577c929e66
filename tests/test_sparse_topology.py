"""Tests for sparserl.sparse.topology called directly: drop_and_grow (SET/RigL), magnitude pruning, schedules of change."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparserl.errors import ConfigError
from sparserl.sparse import SparsityConfig
from sparserl.sparse.config import Window
from sparserl.sparse.topology import TOPOLOGIES, DropAndGrowSettings, drop_and_grow, get_topology, magnitude_mask

T, F = True, False
# Active magnitudes: 0.5, 0.1, 2.0, 0.3 (sign must not matter: -0.1 is small, -2.0 is large).
WEIGHTS = jnp.array([[0.5, -0.1, 0.0], [-2.0, 0.3, 0.0]])
MASK = jnp.array([[T, T, F], [T, T, F]])
GRADS = jnp.array([[0.0, -0.2, 0.9], [0.1, 0.05, -0.4]])


def test_rigl_drop_two_grow_two_by_hand():
    # n = floor(0.5 * 4) = 2: drop |-0.1| and |0.3|; keep 0.5 and -2.0.
    # Grow among (0,1), (0,2), (1,1), (1,2) with |g| 0.2, 0.9, 0.05, 0.4 -> (0,2) and (1,2).
    new = drop_and_grow(WEIGHTS, MASK, jnp.abs(GRADS), 0.5)
    np.testing.assert_array_equal(new, [[T, F, T], [T, F, T]])


def test_rigl_drop_one_grow_one_by_hand():
    # n = floor(0.25 * 4) = 1: drop |-0.1|; grow the largest |g| among (0,1), (0,2), (1,2): (0,2) = 0.9.
    new = drop_and_grow(WEIGHTS, MASK, jnp.abs(GRADS), 0.25)
    np.testing.assert_array_equal(new, [[T, F, T], [T, T, F]])


def test_rigl_dropped_connection_can_regrow():
    grads = GRADS.at[0, 1].set(-1.0)  # the dropped (0,1) now has the largest gradient
    new = drop_and_grow(WEIGHTS, MASK, jnp.abs(grads), 0.5)
    np.testing.assert_array_equal(new, [[T, T, T], [T, F, F]])


def test_zero_fraction_changes_nothing():
    np.testing.assert_array_equal(drop_and_grow(WEIGHTS, MASK, jnp.abs(GRADS), 0.0), MASK)
    np.testing.assert_array_equal(drop_and_grow(WEIGHTS, MASK, jnp.abs(GRADS), 0.2), MASK)  # floor(0.8) = 0


def test_rigl_through_topology_update_masks():
    params = {"layer": {"kernel": WEIGHTS, "bias": jnp.zeros(3)}}
    grads = {"layer": {"kernel": GRADS, "bias": jnp.full(3, 5.0)}}
    masks = {"layer": {"kernel": MASK, "bias": jnp.ones(3, bool)}}
    # Step 10 of [0, 1e9): f_t is just below 0.6, n = floor(2.39..) = 2.
    config = SparsityConfig(method="rigl", sparsity=0.3, settings=DropAndGrowSettings(
        update_period=10, update_start=0, update_end=10**9, drop_fraction=0.6))
    new = TOPOLOGIES["rigl"].update_masks(jax.random.key(0), jnp.int32(10), params, grads, masks, {"layer": 0.3}, config)
    np.testing.assert_array_equal(new["layer"]["kernel"], [[T, F, T], [T, F, T]])
    np.testing.assert_array_equal(new["layer"]["bias"], [T, T, T])
    # The cosine decay reaches the fraction: at T_end / 2 with f0 = 0.6, f = 0.3, n = 1.
    config = SparsityConfig(method="rigl", sparsity=0.3, settings=DropAndGrowSettings(
        update_period=10, update_start=0, update_end=20, drop_fraction=0.6))
    new = TOPOLOGIES["rigl"].update_masks(jax.random.key(0), jnp.int32(10), params, grads, masks, {"layer": 0.3}, config)
    np.testing.assert_array_equal(new["layer"]["kernel"], [[T, F, T], [T, T, F]])


def test_set_drops_smallest_and_grows_at_random():
    params = {"layer": {"kernel": WEIGHTS}}
    masks = {"layer": {"kernel": MASK}}
    config = SparsityConfig(method="set", sparsity=0.3, settings=DropAndGrowSettings(
        update_period=10, update_start=0, update_end=10**9, drop_fraction=0.6))
    update = jax.jit(lambda key: TOPOLOGIES["set"].update_masks(key, jnp.int32(10), params, None, masks, {"layer": 0.3}, config))
    outcomes = set()
    for seed in range(30):
        new = np.asarray(update(jax.random.key(seed))["layer"]["kernel"])
        # The two largest magnitudes (0.5, -2.0) are always kept; -0.1 and 0.3 are the ones dropped;
        # 2 connections are grown at random among the 4 not kept (dropped ones included).
        assert new[0, 0] and new[1, 0]
        assert new.sum() == 4
        outcomes.add(tuple(new.ravel()))
    assert len(outcomes) >= 4  # at most 6 possible choices of 2 among 4; random growth hits several


def test_set_drop_removes_smallest_magnitudes_large_layer():
    key_w, key_m, key_u = jax.random.split(jax.random.key(1), 3)
    weights = jax.random.normal(key_w, (40, 50))
    mask = jax.random.uniform(key_m, (40, 50)) > 0.8
    nnz = int(mask.sum())
    n = math.floor(0.3 * nnz)
    new = drop_and_grow(weights, mask, jax.random.uniform(key_u, (40, 50)), 0.3)
    assert int(new.sum()) == nnz
    removed = np.asarray(mask & ~new)
    active_magnitudes = np.sort(np.abs(np.asarray(weights))[np.asarray(mask)])
    threshold = active_magnitudes[n - 1]  # n-th smallest active magnitude
    assert removed.sum() > 0
    assert np.all(np.abs(np.asarray(weights))[removed] <= threshold)
    # Every active weight above the threshold is kept.
    assert np.all(np.asarray(new)[np.asarray(mask) & (np.abs(np.asarray(weights)) > threshold)])


@pytest.mark.parametrize("method", ["set", "rigl"])
def test_nnz_unchanged_over_many_direct_updates(method):
    shapes = {"a": (12, 20), "b": (20, 20), "c": (3, 3, 4, 6)}
    key = jax.random.key(0)
    params, masks = {}, {}
    for name, shape in shapes.items():
        key, k1, k2 = jax.random.split(key, 3)
        params[name] = {"kernel": jax.random.normal(k1, shape)}
        masks[name] = {"kernel": jax.random.uniform(k2, shape) > 0.7}
    initial = {name: int(masks[name]["kernel"].sum()) for name in shapes}
    config = SparsityConfig(method=method, sparsity=0.7, settings=DropAndGrowSettings(
        update_period=1, update_start=0, update_end=1000, drop_fraction=0.5))
    sparsities = {name: 0.7 for name in shapes}

    @jax.jit
    def step(key, t, params, masks):
        k1, k2, k3 = jax.random.split(key, 3)
        grads = jax.tree.map(lambda p: jax.random.normal(k1, p.shape), params)
        new = TOPOLOGIES[method].update_masks(k2, t, params, grads, masks, sparsities, config)
        # Weights move, so the next drop sees other magnitudes.
        params = jax.tree.map(lambda p: p + 0.5 * jax.random.normal(k3, p.shape), params)
        return params, new

    changed = 0
    for t in range(1, 60):
        key, sub = jax.random.split(key)
        params, new_masks = step(sub, jnp.int32(t), params, masks)
        for name in shapes:
            assert int(new_masks[name]["kernel"].sum()) == initial[name]
            changed += int((new_masks[name]["kernel"] != masks[name]["kernel"]).sum())
        masks = new_masks
    assert changed > 0


def test_magnitude_mask_by_hand():
    weights = jnp.array([[0.5, -0.1, 0.0], [-2.0, 0.3, 0.7]])
    # floor(0.5 * 6) = 3 zeros: prune 0.0, -0.1, 0.3.
    np.testing.assert_array_equal(magnitude_mask(weights, jnp.ones((2, 3), bool), 0.5), [[T, F, F], [T, F, T]])
    # Pruned entries stay pruned even when large (-2.0 was masked): it counts as one of the 3 zeros.
    mask = jnp.array([[T, T, T], [F, T, T]])
    np.testing.assert_array_equal(magnitude_mask(weights, mask, 0.5), [[T, F, F], [F, T, T]])


def test_prune_update_masks_by_hand():
    weights = jnp.array([[0.5, -0.1, 0.0], [-2.0, 0.3, 0.7]])
    params = {"layer": {"kernel": weights}}
    masks = {"layer": {"kernel": jnp.ones((2, 3), bool)}}
    config = SparsityConfig(method="prune", sparsity=0.9, settings=Window(update_period=10, update_start=0, update_end=100))
    # s_50 = 0.9 * (1 - 0.5^3) = 0.7875 -> floor(4.725) = 4 zeros: keep -2.0 and 0.7.
    new = TOPOLOGIES["prune"].update_masks(jax.random.key(0), jnp.int32(50), params, None, masks, {"layer": 0.9}, config)
    np.testing.assert_array_equal(new["layer"]["kernel"], [[F, F, F], [T, F, T]])
    # Before t0 / at t0 nothing is pruned.
    new = TOPOLOGIES["prune"].update_masks(jax.random.key(0), jnp.int32(0), params, None, masks, {"layer": 0.9}, config)
    np.testing.assert_array_equal(new["layer"]["kernel"], np.ones((2, 3), bool))


def test_update_step_predicates():
    config = SparsityConfig(method="rigl", sparsity=0.9, settings=Window(update_period=10, update_start=0, update_end=35))
    for name in ("set", "rigl"):
        got = [t for t in range(50) if bool(TOPOLOGIES[name].is_update_step(jnp.int32(t), config))]
        assert got == [10, 20, 30]
    for name in ("dense", "static"):
        assert not any(bool(TOPOLOGIES[name].is_update_step(jnp.int32(t), config)) for t in range(50))
    got = [t for t in range(50) if bool(TOPOLOGIES["prune"].is_update_step(jnp.int32(t), config))]
    assert got == [0, 10, 20, 30, 35]


def test_prunes_kept_count_changes_only_on_the_step_after_each_pruning_step():
    """Pruning steps 5, 15, 25 and t1 = 32 (`test_update_step_predicates`): `sparsity_steps` names 0 and the step
    after each; `sparsity_at` takes a new value at 16, 26 and 33 alone (the pruning step at t0 prunes nothing)."""
    config = SparsityConfig(method="prune", sparsity=0.9, settings=Window(update_period=10, update_start=5, update_end=32))
    prune = TOPOLOGIES["prune"]
    assert prune.sparsity_steps(config) == (0, 6, 16, 26, 33)
    sparsities = [float(prune.sparsity_at(jnp.int32(t), 0.9, config)) for t in range(45)]
    assert [t for t in range(1, 45) if sparsities[t] != sparsities[t - 1]] == [16, 26, 33]


def test_unknown_method():
    with pytest.raises(ConfigError, match="unknown sparse training method 'foo'") as error:
        get_topology("foo")
    assert error.value.field == "sparse.method"
    assert error.value.reason.startswith("unknown sparse training method 'foo'; choose one of dense, static, set, rigl")
