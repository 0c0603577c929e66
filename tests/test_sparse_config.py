"""sparserl.sparse.config: SparsityConfig's checks and structure; each method's settings and how its config block
is read into them (`read_settings`)."""

import jax
import jax.numpy as jnp
import optax
import pytest

from sparserl.errors import ConfigError
from sparserl.sparse import SparsityConfig, TOPOLOGIES, sparse_optimizer
from sparserl.sparse.config import Settings, Window, read_settings
from sparserl.sparse.srigl import SRigLSettings
from sparserl.sparse.structure import Structure, is_concrete

RIGL_BLOCK = dict(update_period=1_000, drop_fraction=0.5, start_fraction=0.0, end_fraction=0.75)


def _error(call, *args, **kwargs) -> tuple[str, str]:
    """(field, reason) of the ConfigError `call` raises."""
    with pytest.raises(ConfigError) as error:
        call(*args, **kwargs)
    return error.value.field, error.value.reason


@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5])
def test_a_concrete_sparsity_outside_zero_to_one_is_refused(sparsity):
    field, reason = _error(SparsityConfig, method="rigl", sparsity=sparsity)
    assert (field, reason) == ("sparse.sparsity", f"must be in [0, 1), got {sparsity}")


def test_a_traced_sparsity_is_accepted_unchecked_under_jit():
    levels = jax.jit(lambda level: jnp.asarray(is_concrete(SparsityConfig(method="rigl", sparsity=level).sparsity)))
    assert not bool(levels(jnp.float32(0.9)))  # traced: checked where it is made concrete, never here
    assert is_concrete(SparsityConfig(method="rigl", sparsity=0.9).sparsity)


def test_update_period_and_structure_are_checked():
    assert _error(Window, update_period=0, update_start=0, update_end=10) == ("update_period", "must be >= 1, got 0")
    field, reason = _error(SparsityConfig, method="rigl", sparsity=0.5, structure="nm:4:2")
    assert field == "sparse.structure" and reason.startswith("unknown structure 'nm:4:2'")


def test_structure_and_settings_read_back():
    settings = SRigLSettings(update_period=10, update_start=0, update_end=100, drop_fraction=0.3, ablation_threshold=0.5)
    config = SparsityConfig(method="srigl", sparsity=0.9, structure="nm:2:4", settings=settings)
    assert config.parsed_structure == Structure("nm", 2, 4)
    assert config.settings.ablation_threshold == 0.5 and config.settings.update_end == 100
    assert SparsityConfig(method="static", sparsity=0.9).settings == Settings()


def test_each_method_declares_the_fields_of_its_block():
    window = {"update_period": int, "start_fraction": float, "end_fraction": float}
    assert {name: topology.settings_type.block_fields() for name, topology in TOPOLOGIES.items()} == {
        "dense": {}, "static": {},
        "set": dict(window, drop_fraction=float), "rigl": dict(window, drop_fraction=float),
        "prune": window, "srigl": dict(window, drop_fraction=float, ablation_threshold=float),
        "srste": dict(window, decay=float), "mask_decay": window,
    }


def test_a_block_becomes_the_settings_with_its_window_in_gradient_steps():
    settings = read_settings(TOPOLOGIES["rigl"].settings_type, RIGL_BLOCK, "sparse.rigl", 1_000)
    assert (settings.update_period, settings.update_start, settings.update_end, settings.drop_fraction) == (1_000, 0, 750, 0.5)
    # update_end is at least update_start + 1; an int given for a float field is that float.
    settings = read_settings(Window, dict(update_period=5, start_fraction=0.5, end_fraction=0), "sparse.prune", 10)
    assert (settings.update_start, settings.update_end) == (5, 6)
    assert read_settings(Settings, None, "sparse.static", 1_000) == Settings()


@pytest.mark.parametrize("block, field, reason", [
    (dict(RIGL_BLOCK, update_perod=3), "sparse.rigl.update_perod",
     "sparse.rigl has no such field; choose one of drop_fraction, end_fraction, start_fraction, update_period"),
    ({name: value for name, value in RIGL_BLOCK.items() if name != "drop_fraction"}, "sparse.rigl.drop_fraction",
     "missing: sparse.rigl needs drop_fraction, end_fraction, start_fraction, update_period"),
    (None, "sparse.rigl.update_period", "missing: sparse.rigl needs drop_fraction, end_fraction, start_fraction, update_period"),
    (dict(RIGL_BLOCK, update_period=2.5), "sparse.rigl.update_period", "must be int, got 2.5"),
    (dict(RIGL_BLOCK, drop_fraction="0.3"), "sparse.rigl.drop_fraction", "must be float, got '0.3'"),
    (dict(RIGL_BLOCK, end_fraction=True), "sparse.rigl.end_fraction", "must be float, got True"),
    (dict(RIGL_BLOCK, update_period=0), "sparse.rigl.update_period", "must be >= 1, got 0"),
])
def test_a_wrong_block_is_a_config_error_naming_the_field(block, field, reason):
    assert _error(read_settings, TOPOLOGIES["rigl"].settings_type, block, "sparse.rigl", 1_000) == (field, reason)


def test_the_optimizer_refuses_settings_of_another_method():
    config = SparsityConfig(method="rigl", sparsity=0.5, settings=Window(update_period=1, update_start=0, update_end=10))
    with pytest.raises(TypeError, match="^method 'rigl' takes DropAndGrowSettings settings, not Window$"):
        sparse_optimizer(optax.sgd(0.1), config)
