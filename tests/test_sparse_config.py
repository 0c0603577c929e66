"""sparserl.sparse.config: SparsityConfig's checks, options and structure."""

import jax
import jax.numpy as jnp
import pytest

from sparserl.sparse import SparsityConfig
from sparserl.sparse.config import is_concrete
from sparserl.sparse.structure import Structure


@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5])
def test_a_concrete_sparsity_outside_zero_to_one_is_refused(sparsity):
    with pytest.raises(ValueError, match=rf"^sparsity must be in \[0, 1\), got {sparsity}$"):
        SparsityConfig(method="rigl", sparsity=sparsity)


def test_a_traced_sparsity_is_accepted_unchecked_under_jit():
    levels = jax.jit(lambda level: jnp.asarray(is_concrete(SparsityConfig(method="rigl", sparsity=level).sparsity)))
    assert not bool(levels(jnp.float32(0.9)))  # traced: checked where it is made concrete, never here
    assert is_concrete(SparsityConfig(method="rigl", sparsity=0.9).sparsity)


def test_update_period_and_structure_are_checked():
    with pytest.raises(ValueError, match="^update_period must be >= 1, got 0$"):
        SparsityConfig(method="rigl", sparsity=0.5, update_period=0)
    with pytest.raises(ValueError, match="unknown structure 'nm:4:2'"):
        SparsityConfig(method="rigl", sparsity=0.5, structure="nm:4:2")


def test_structure_and_options_read_back():
    config = SparsityConfig(method="srigl", sparsity=0.9, structure="nm:2:4", options=(("ablation_threshold", 0.5),))
    assert config.parsed_structure == Structure("nm", 2, 4)
    assert config.option("ablation_threshold", 0.3) == 0.5 and config.option("decay", 2e-4) == 2e-4
