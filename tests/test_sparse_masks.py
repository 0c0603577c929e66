"""Tests for sparserl.sparse.masks: exact-count random masks, biases never masked, apply_masks, metrics."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparserl import networks
from sparserl.networks import MLP, NatureCNN, TwinCritic
from sparserl.sparse import SparsityConfig, apply_masks, layer_sparsities, sparsity_metrics
from sparserl.sparse.masks import dense_masks, multiply_add_metrics, random_mask, random_masks


@pytest.mark.parametrize("shape", [(7, 3), (64, 64), (3, 3, 4, 8)])
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.9, 0.99])
def test_random_mask_exact_zero_count(shape, sparsity):
    mask = random_mask(jax.random.key(3), shape, sparsity)
    assert mask.shape == shape and mask.dtype == jnp.bool_
    assert int(np.sum(~np.asarray(mask))) == math.floor(sparsity * math.prod(shape))


def test_random_masks_differ_by_key_and_layer():
    a = random_mask(jax.random.key(0), (32, 32), 0.5)
    b = random_mask(jax.random.key(1), (32, 32), 0.5)
    assert not bool(jnp.all(a == b))


def _networks():
    mlp = MLP((64, 64), 3)
    cnn = NatureCNN(4, conv_features=(16,), kernel_sizes=(3,), strides=(1,), dense_sizes=(32,))
    twin = TwinCritic((32, 32))
    return [
        mlp.init(jax.random.key(0), jnp.zeros((1, 5)))["params"],
        cnn.init(jax.random.key(0), jnp.zeros((1, 10, 10, 4)))["params"],
        twin.init(jax.random.key(0), jnp.zeros((1, 5)), jnp.zeros((1, 2)))["params"],
    ]


@pytest.mark.parametrize("index", [0, 1, 2], ids=["mlp", "cnn", "twin"])
@pytest.mark.parametrize("distribution", ["erk", "uniform"])
def test_network_masks(index, distribution):
    params = _networks()[index]
    sparsities = layer_sparsities(params, SparsityConfig(method="static", sparsity=0.9, distribution=distribution))
    masks = random_masks(jax.random.key(7), params, sparsities)
    assert jax.tree.structure(masks) == jax.tree.structure(params)
    leaves = jax.tree_util.tree_flatten_with_path(masks)[0]
    seen = set()
    for path, mask in leaves:
        name = "/".join(k.key for k in path)
        layer, leaf = name.rsplit("/", 1)
        assert mask.dtype == jnp.bool_
        if leaf == "bias":
            assert bool(jnp.all(mask)), name
        else:
            assert leaf == "kernel"
            seen.add(layer)
            assert int(jnp.sum(~mask)) == math.floor(sparsities[layer] * mask.size), name
    assert seen == set(sparsities)


def test_apply_masks_zeroes_exactly():
    params = {"d": {"kernel": jnp.array([[1.5, -2.0], [3.0, 4.0]]), "bias": jnp.array([1.0, -1.0])}}
    masks = {"d": {"kernel": jnp.array([[True, False], [False, True]]), "bias": jnp.array([True, True])}}
    out = apply_masks(params, masks)
    np.testing.assert_array_equal(out["d"]["kernel"], [[1.5, 0.0], [0.0, 4.0]])
    np.testing.assert_array_equal(out["d"]["bias"], [1.0, -1.0])
    # NaN and inf at masked positions become exact zeros, kept values are bit-identical.
    bad = {"d": {"kernel": jnp.array([[1.0, jnp.nan], [jnp.inf, -0.5]]), "bias": jnp.array([2.0, 3.0])}}
    out = apply_masks(bad, masks)
    np.testing.assert_array_equal(out["d"]["kernel"], [[1.0, 0.0], [0.0, -0.5]])
    assert out["d"]["kernel"].dtype == jnp.float32


def test_dense_masks_and_metrics():
    params = _networks()[0]
    masks = dense_masks(params)
    assert all(bool(jnp.all(m)) for m in jax.tree.leaves(masks))
    metrics = sparsity_metrics(masks)
    assert float(metrics["sparsity/total"]) == 0.0
    sparsities = {"dense_0": 0.5, "dense_1": 0.9}
    masks = random_masks(jax.random.key(0), params, sparsities)
    metrics = sparsity_metrics(masks, prefix="sparsity/critic")
    assert set(metrics) == {"sparsity/critic/dense_0", "sparsity/critic/dense_1", "sparsity/critic/output", "sparsity/critic/total"}
    assert float(metrics["sparsity/critic/dense_0"]) == pytest.approx(math.floor(0.5 * 320) / 320)
    assert float(metrics["sparsity/critic/dense_1"]) == pytest.approx(math.floor(0.9 * 4096) / 4096)
    assert float(metrics["sparsity/critic/output"]) == 0.0
    total = 320 + 4096 + 192
    zeros = math.floor(0.5 * 320) + math.floor(0.9 * 4096)
    assert float(metrics["sparsity/critic/total"]) == pytest.approx(zeros / total)


def test_random_mask_of_a_traced_sparsity_has_the_same_zeros():
    """A traced sparsity (a sweep) draws the same mask as the Python float: exactly floor(s * n) zeros."""
    levels = jnp.asarray([0.5, 0.8, 0.9, 0.99], jnp.float32)
    traced = jax.jit(jax.vmap(lambda level: random_mask(jax.random.key(3), (64, 64), level)))(levels)
    for index, level in enumerate([0.5, 0.8, 0.9, 0.99]):
        concrete = random_mask(jax.random.key(3), (64, 64), level)
        np.testing.assert_array_equal(traced[index], concrete)
        assert int(np.sum(~np.asarray(concrete))) == math.floor(level * 64 * 64)


def test_apply_masks_to_the_masked_layers_leaves_every_other_leaf_as_it_is():
    """With `layers`, only those layers' kernels are zeroed off their masks; every other leaf comes back as it was
    (its mask is all-True in a run; here a False in the bias mask shows it is not read)."""
    tree = {"dense_0": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}, "output": {"kernel": jnp.ones((2, 1))}}
    masks = {"dense_0": {"kernel": jnp.asarray([[True, False], [False, True]]), "bias": jnp.asarray([True, False])},
             "output": {"kernel": jnp.asarray([[False], [True]])}}
    masked = apply_masks(tree, masks, {"dense_0"})
    np.testing.assert_array_equal(masked["dense_0"]["kernel"], [[1.0, 0.0], [0.0, 1.0]])
    np.testing.assert_array_equal(masked["dense_0"]["bias"], [1.0, 1.0])
    np.testing.assert_array_equal(masked["output"]["kernel"], [[1.0], [1.0]])
    np.testing.assert_array_equal(apply_masks(tree, masks)["output"]["kernel"], [[0.0], [1.0]])


def test_multiply_adds_count_each_kept_weight_once_per_position_it_is_applied_at():
    """The MinAtar network (a 3x3 conv of 4 -> 16 channels on 10 x 10 inputs, VALID: 8 x 8 positions; dense 1024 ->
    128; output 128 -> 3), its masks keeping 100 conv weights, 1,000 dense ones and the whole output layer: 64 x 100,
    1,000 and 384 multiply-adds per example. Under the critic's prefix the twin heads count one by one."""
    module = NatureCNN(3, conv_features=(16,), kernel_sizes=(3,), strides=(1,), dense_sizes=(128,))
    observations = jnp.zeros((5, 10, 10, 4))
    params = module.init(jax.random.key(0), observations)["params"]

    def keeping(kernel, kept):
        return jnp.arange(kernel.size).reshape(kernel.shape) < kept

    masks = {"conv_0": {"kernel": keeping(params["conv_0"]["kernel"], 100), "bias": jnp.ones(16, bool)},
             "dense_0": {"kernel": keeping(params["dense_0"]["kernel"], 1000), "bias": jnp.ones(128, bool)},
             "output": {"kernel": jnp.ones((128, 3), bool), "bias": jnp.ones(3, bool)}}
    positions = networks.layer_positions(module, params, observations)
    assert positions == {"conv_0": 64, "dense_0": 1, "output": 1}
    counts = jax.jit(lambda masks: multiply_add_metrics(masks, positions))(masks)
    assert {name: float(count) for name, count in counts.items()} == {
        "multiply_adds/conv_0": 6400.0, "multiply_adds/dense_0": 1000.0, "multiply_adds/output": 384.0,
        "multiply_adds/total": 7784.0}

    critic, observations, actions = TwinCritic((8,)), jnp.zeros((2, 3)), jnp.zeros((2, 1))
    params = critic.init(jax.random.key(0), observations, actions)["params"]
    masks = jax.tree.map(lambda leaf: jnp.ones(leaf.shape, bool), params)
    counts = multiply_add_metrics(masks, networks.layer_positions(critic, params, observations, actions), "multiply_adds/critic")
    assert float(counts["multiply_adds/critic/q1/dense_0"]) == 4 * 8
    assert float(counts["multiply_adds/critic/total"]) == 2 * (4 * 8 + 8 * 1)
