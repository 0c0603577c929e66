"""Tests for sparserl.sparse.schedules (cosine drop fraction, cubic pruning, step predicates)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparserl.sparse import schedules


def test_cosine_drop_fraction_values():
    values = [float(schedules.cosine_drop_fraction(t, 0.3, 1000)) for t in (0, 500, 1000, 2000)]
    assert values == pytest.approx([0.3, 0.15, 0.0, 0.0], abs=1e-7)
    assert float(schedules.cosine_drop_fraction(250, 0.3, 1000)) == pytest.approx(0.3 * 0.5 * (1 + np.cos(np.pi / 4)), rel=1e-6)


def test_cubic_sparsity_values():
    values = [float(schedules.cubic_sparsity(t, 0.9, 0, 100)) for t in (0, 50, 100)]
    assert values == pytest.approx([0.0, 0.7875, 0.9], abs=1e-7)
    # Clipped outside [t0, t1].
    assert float(schedules.cubic_sparsity(300, 0.9, 0, 100)) == pytest.approx(0.9)
    assert float(schedules.cubic_sparsity(5, 0.9, 10, 110)) == 0.0
    assert float(schedules.cubic_sparsity(60, 0.9, 10, 110)) == pytest.approx(0.7875)


def test_schedules_jit_with_traced_step():
    f = jax.jit(lambda t: schedules.cosine_drop_fraction(t, 0.3, 1000))
    assert float(f(jnp.int32(500))) == pytest.approx(0.15, abs=1e-7)
    g = jax.jit(lambda t: schedules.cubic_sparsity(t, 0.9, 0, 100))
    assert float(g(jnp.int32(50))) == pytest.approx(0.7875, abs=1e-7)
    h = jax.jit(lambda t: schedules.is_periodic_step(t, 10, 0, 100))
    assert [bool(h(jnp.int32(t))) for t in (0, 10, 15, 90, 100)] == [False, True, False, True, False]


def test_is_periodic_step():
    steps = np.arange(0, 61)
    got = [int(t) for t in steps if bool(schedules.is_periodic_step(jnp.int32(t), 10, 0, 50))]
    assert got == [10, 20, 30, 40]
    got = [int(t) for t in steps if bool(schedules.is_periodic_step(jnp.int32(t), 10, 5, 60))]
    assert got == [15, 25, 35, 45, 55]


def test_is_pruning_step():
    steps = np.arange(0, 120)
    got = [int(t) for t in steps if bool(schedules.is_pruning_step(jnp.int32(t), 10, 20, 75))]
    assert got == [20, 30, 40, 50, 60, 70, 75]
    got = [int(t) for t in steps if bool(schedules.is_pruning_step(jnp.int32(t), 25, 0, 100))]
    assert got == [0, 25, 50, 75, 100]
