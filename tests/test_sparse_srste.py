"""Tests for sparserl.sparse.srste: N:M masks from dense weights trained with SR-STE (Zhou et al. 2021, eq. 6)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sparserl.errors import ConfigError
from sparserl.sparse import SparsityConfig, sparse_optimizer
from sparserl.sparse.srste import SRSTESettings
from sparserl.sparse.topology import TOPOLOGIES

T, F = True, False


def test_one_sr_ste_step_by_hand():
    config = SparsityConfig(method="srste", sparsity=0.5, structure="nm:2:4",
                            settings=SRSTESettings(update_period=1, update_start=0, update_end=100, decay=0.5))
    opt = sparse_optimizer(optax.sgd(0.1), config)
    params, state = opt.init(jax.random.key(0), {"layer": {"kernel": jnp.array([[0.5], [-0.1], [0.7], [0.3]])}})
    # The initial mask keeps the 2 largest |w| of the group of 4; the dense weights live in the method's state.
    np.testing.assert_array_equal(state.masks["layer"]["kernel"][:, 0], [T, F, T, F])
    np.testing.assert_allclose(params["layer"]["kernel"][:, 0], [0.5, 0.0, 0.7, 0.0])
    np.testing.assert_allclose(state.topology["layer"]["kernel"][:, 0], [0.5, -0.1, 0.7, 0.3])
    # g + lambda_W * (mask complement ⊙ W) = [0.1, 0.2 - 0.05, -0.3, -4.0 + 0.15]; W <- W - 0.1 * that:
    # [0.49, -0.115, 0.73, 0.685]. The mask is recomputed from |W|: 0.73 and 0.685 now.
    grads = {"layer": {"kernel": jnp.array([[0.1], [0.2], [-0.3], [-4.0]])}}
    params, state = jax.jit(opt.apply_gradients)(jnp.int32(1), params, grads, state, jax.random.key(1))
    np.testing.assert_allclose(state.topology["layer"]["kernel"][:, 0], [0.49, -0.115, 0.73, 0.685], rtol=1e-6)
    np.testing.assert_array_equal(state.masks["layer"]["kernel"][:, 0], [F, F, T, T])
    np.testing.assert_allclose(params["layer"]["kernel"][:, 0], [0.0, 0.0, 0.73, 0.685], rtol=1e-6)
    # Active weights come from the params (what ReDo writes there holds); pruned ones from the dense state.
    params = {"layer": {"kernel": params["layer"]["kernel"].at[2, 0].set(2.0)}}
    zero = {"layer": {"kernel": jnp.zeros((4, 1))}}
    params, state = jax.jit(opt.apply_gradients)(jnp.int32(2), params, zero, state, jax.random.key(1))
    # Only the decay moves the pruned weights: 0.49 * (1 - 0.05), -0.115 * 0.95.
    np.testing.assert_allclose(state.topology["layer"]["kernel"][:, 0], [0.4655, -0.10925, 2.0, 0.685], rtol=1e-6)
    np.testing.assert_array_equal(state.masks["layer"]["kernel"][:, 0], [F, F, T, T])


def test_srste_needs_an_nm_structure():
    with pytest.raises(ConfigError) as error:
        TOPOLOGIES["srste"].structure_for("fan_in")
    assert error.value.field == "sparse.structure"
    assert error.value.reason.startswith("--method=srste trains N:M sparsity")
    assert TOPOLOGIES["srste"].structure_for("nm:2:4") == "nm:2:4"
