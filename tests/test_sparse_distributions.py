"""Tests for sparserl.sparse.distributions: ERK (Evci et al. 2020) and uniform per-layer sparsities."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparserl.networks import MLP, NatureCNN
from sparserl.sparse import SparsityConfig, layer_sparsities
from sparserl.sparse.distributions import erk_sparsities, kernel_shapes, masked_layers, uniform_sparsities
from sparserl.sparse.masks import random_masks

MLP_SHAPES = {"dense_0": (4, 512), "dense_1": (512, 512), "output": (512, 2)}
NATURE_SHAPES = {
    "conv_0": (8, 8, 4, 32),
    "conv_1": (4, 4, 32, 64),
    "conv_2": (3, 3, 64, 64),
    "dense_0": (3136, 512),
    "output": (512, 18),
}
MINATAR_SHAPES = {"conv_0": (3, 3, 10, 16), "dense_0": (1024, 128), "output": (128, 6)}
SMALL_SHAPES = {"a": (2, 4), "b": (3, 6), "c": (2, 4, 6)}


def test_erk_hand_computed_example():
    # raw ratios 6/8, 9/18, 12/48; eps = 37/27 makes 'a' exceed 1 -> dense;
    # then eps = (37 - 8) / (9 + 12) = 29/21: densities 29/42, 29/84.
    sparsities = erk_sparsities(SMALL_SHAPES, 0.5)
    assert list(sparsities) == ["a", "b", "c"]
    assert sparsities["a"] == 0.0
    assert sparsities["b"] == pytest.approx(1 - 29 / 42)
    assert sparsities["c"] == pytest.approx(1 - 29 / 84)
    # docs/design.md section 4: 0.0, 0.31, 0.655 (0.3095 and 0.6548).
    assert [sparsities["a"], sparsities["b"], sparsities["c"]] == pytest.approx([0.0, 0.31, 0.655], abs=5e-4)


def test_erk_no_fallback_needed_is_proportional_to_raw_ratio():
    shapes = {"a": (10, 10), "b": (20, 20)}  # raw 0.2, 0.1
    sparsities = erk_sparsities(shapes, 0.9)
    # eps * (0.2 * 100 + 0.1 * 400) = 50  ->  eps = 50 / 60
    assert 1 - sparsities["a"] == pytest.approx(0.2 * 50 / 60)
    assert 1 - sparsities["b"] == pytest.approx(0.1 * 50 / 60)


def _kept_with_exact_masks(shapes, sparsities, key=0):
    params = {name: {"kernel": jnp.ones(shape), "bias": jnp.ones(shape[-1])} for name, shape in shapes.items()}
    masks = random_masks(jax.random.key(key), params, sparsities)
    return sum(int(np.sum(masks[name]["kernel"])) for name in shapes), masks


@pytest.mark.parametrize("shapes", [SMALL_SHAPES, MLP_SHAPES, NATURE_SHAPES, MINATAR_SHAPES], ids=["small", "mlp", "nature", "minatar"])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.8, 0.9, 0.95, 0.99])
def test_erk_total_budget_and_densities(shapes, sparsity):
    sparsities = erk_sparsities(shapes, sparsity)
    assert set(sparsities) == set(shapes)
    for s in sparsities.values():
        assert 0.0 <= s < 1.0  # density in (0, 1]
    total = sum(math.prod(shape) for shape in shapes.values())
    kept, _ = _kept_with_exact_masks(shapes, sparsities)
    assert abs(kept - (1 - sparsity) * total) <= len(shapes)
    # The sum of real-valued kept weights is the budget (up to rounding).
    assert sum((1 - sparsities[n]) * math.prod(s) for n, s in shapes.items()) == pytest.approx((1 - sparsity) * total)


def test_erk_realistic_networks_have_expected_dense_layers():
    # MLP 4-512-512-2 at 0.9: the input layer (raw 516/2048) and output layer (514/1024) are made dense.
    mlp = erk_sparsities(MLP_SHAPES, 0.9)
    assert mlp["dense_0"] == 0.0 and mlp["output"] == 0.0
    budget = 0.1 * (2048 + 262144 + 1024) - 2048 - 1024
    assert mlp["dense_1"] == pytest.approx(1 - budget / 262144)
    # Nature CNN at 0.9: larger layers sparser than smaller ones.
    nature = erk_sparsities(NATURE_SHAPES, 0.9)
    assert nature["dense_0"] > nature["conv_2"] > nature["conv_0"]


@pytest.mark.parametrize("shapes", [SMALL_SHAPES, MLP_SHAPES, NATURE_SHAPES])
def test_uniform_gives_s_everywhere(shapes):
    assert uniform_sparsities(shapes, 0.8) == {name: 0.8 for name in shapes}
    kept, masks = _kept_with_exact_masks(shapes, uniform_sparsities(shapes, 0.8))
    for name, shape in shapes.items():
        n = math.prod(shape)
        assert int(np.sum(~masks[name]["kernel"])) == math.floor(0.8 * n)


def test_kernel_shapes_from_networks():
    params = jax.eval_shape(MLP((512, 512), 2).init, jax.random.key(0), jnp.zeros((1, 4)))["params"]
    assert kernel_shapes(params) == MLP_SHAPES
    params = jax.eval_shape(NatureCNN(18).init, jax.random.key(0), jnp.zeros((1, 84, 84, 4), jnp.uint8))["params"]
    assert kernel_shapes(params) == NATURE_SHAPES


def _mlp_params():
    return MLP((32, 32), 3).init(jax.random.key(0), jnp.zeros((1, 5)))["params"]


@pytest.mark.parametrize("distribution", ["erk", "uniform"])
def test_dense_first_and_last_layer(distribution):
    params = _mlp_params()
    base = dict(method="static", sparsity=0.8, distribution=distribution)
    assert set(layer_sparsities(params, SparsityConfig(**base))) == {"dense_0", "dense_1", "output"}
    assert set(layer_sparsities(params, SparsityConfig(**base, dense_first_layer=True))) == {"dense_1", "output"}
    assert set(layer_sparsities(params, SparsityConfig(**base, dense_last_layer=True))) == {"dense_0", "dense_1"}
    both = layer_sparsities(params, SparsityConfig(**base, dense_first_layer=True, dense_last_layer=True))
    assert set(both) == {"dense_1"}
    masks = random_masks(jax.random.key(1), params, both)
    assert bool(jnp.all(masks["dense_0"]["kernel"])) and bool(jnp.all(masks["output"]["kernel"]))
    assert int(jnp.sum(~masks["dense_1"]["kernel"])) == math.floor(both["dense_1"] * 32 * 32)


def test_masked_layers_are_the_kernels_a_config_masks_with_their_shapes():
    params = _mlp_params()
    base = dict(method="static", sparsity=0.8, distribution="erk")
    assert masked_layers(params, SparsityConfig(**base)) == {"dense_0": (5, 32), "dense_1": (32, 32), "output": (32, 3)}
    assert masked_layers(params, SparsityConfig(**base, dense_layers=("dense_*",))) == {"output": (32, 3)}
    assert masked_layers(params, SparsityConfig(method="dense", sparsity=0.0, distribution="erk")) == {}


def test_uniform_layer_sparsities_and_dense_method():
    params = _mlp_params()
    assert layer_sparsities(params, SparsityConfig(method="set", sparsity=0.7, distribution="uniform")) == {
        "dense_0": 0.7,
        "dense_1": 0.7,
        "output": 0.7,
    }
    assert layer_sparsities(params, SparsityConfig(method="dense")) == {}


def test_nested_layer_names():
    params = {"q1": {"dense_0": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones(4)}}, "q2": {"output": {"kernel": jnp.ones((4, 1))}}}
    assert kernel_shapes(params) == {"q1/dense_0": (3, 4), "q2/output": (4, 1)}


@pytest.mark.parametrize("shapes, count_slack", [(SMALL_SHAPES, 0), (MLP_SHAPES, 0), (NATURE_SHAPES, 1), (MINATAR_SHAPES, 1)],
                         ids=["small", "mlp", "nature", "minatar"])
def test_erk_of_a_traced_sparsity_equals_the_concrete_one(shapes, count_slack):
    """Levels vmapped as one traced value (a sweep) get the loop's sparsities, including the levels where the
    dense fallback makes layers dense (small at 0.5, mlp at 0.9). Zero counts floor(s * n) are equal for the
    small and MLP layers; in layers of 10^5+ weights the traced float32 arithmetic may land one weight off."""
    levels = [0.05, 0.3, 0.5, 0.8, 0.9, 0.95, 0.99]
    traced = jax.jit(jax.vmap(lambda level: erk_sparsities(shapes, level)))(jnp.asarray(levels, jnp.float32))
    for index, level in enumerate(levels):
        concrete = erk_sparsities(shapes, level)
        for name, shape in shapes.items():
            assert float(traced[name][index]) == pytest.approx(concrete[name], abs=1e-6), (level, name)
            size = math.prod(shape)
            count_difference = math.floor(float(traced[name][index]) * size) - math.floor(concrete[name] * size)
            assert abs(count_difference) <= count_slack, (level, name)
