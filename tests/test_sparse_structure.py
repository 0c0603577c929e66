"""Tests for sparserl.sparse.structure: unstructured, constant fan-in and N:M masks, kept by every method."""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sparserl.errors import ConfigError
from sparserl.networks import MLP, NatureCNN, TwinCritic
from sparserl.sparse import SparsityConfig, layer_sparsities, sparse_optimizer
from sparserl.sparse.config import Window
from sparserl.sparse.distributions import dense_layer_paths, erk_sparsities, kernel_shapes
from sparserl.sparse.masks import random_masks
from sparserl.sparse.structure import (FAN_IN, NM, Structure, column_counts, fan_in_indices, from_groups, group_counts,
                                       keep_largest, kept_per_group, parse, to_groups)
from sparserl.sparse.topology import TOPOLOGIES, drop_and_grow, magnitude_mask


def _random_masks(seed, params, sparsities, structure):
    """random_masks under one jit (the sparsities stay Python floats: concrete counts)."""
    return jax.jit(lambda key: random_masks(key, params, sparsities, structure))(jax.random.key(seed))

T, F = True, False
FAN = Structure(FAN_IN)
TWO_FOUR = Structure(NM, 2, 4)


def test_parse():
    assert parse("unstructured") == Structure()
    assert parse("fan_in") == FAN
    assert parse("nm:2:4") == TWO_FOUR and parse("nm:2:4").fixed_sparsity == 0.5
    assert parse("nm:1:3").fixed_sparsity == pytest.approx(2 / 3)
    assert str(parse("nm:2:4")) == "nm:2:4" and FAN.fixed_sparsity is None
    for bad in ("nm:4:4", "nm:0:4", "nm:2", "fanin", "nm:a:b", ""):
        with pytest.raises(ConfigError) as error:
            parse(bad)
        assert (error.value.field, error.value.reason) == (
            "sparse.structure", f"unknown structure {bad!r}; choose unstructured, fan_in or nm:N:M with 1 <= N < M")
    with pytest.raises(ConfigError) as error:
        SparsityConfig(method="static", sparsity=0.5, structure="nm:3:2")
    assert error.value.field == "sparse.structure"


def test_grouped_views_by_hand():
    x = jnp.arange(10).reshape(5, 2)  # fan-in 5, 2 neurons: column 0 is 0, 2, 4, 6, 8
    np.testing.assert_array_equal(to_groups(FAN, x), [[0, 2, 4, 6, 8], [1, 3, 5, 7, 9]])
    # 2:4 cuts each column into [4 inputs] and [1 input + 3 padding].
    np.testing.assert_array_equal(to_groups(TWO_FOUR, x, fill=-1),
                                  [[0, 2, 4, 6], [8, -1, -1, -1], [1, 3, 5, 7], [9, -1, -1, -1]])
    for structure in (Structure(), FAN, TWO_FOUR):
        np.testing.assert_array_equal(from_groups(structure, to_groups(structure, x), x.shape), x)
        conv = jnp.arange(48).reshape(2, 2, 3, 4)  # fan-in h * w * in = 12
        np.testing.assert_array_equal(from_groups(structure, to_groups(structure, conv), conv.shape), conv)
    np.testing.assert_array_equal(to_groups(FAN, jnp.arange(48).reshape(2, 2, 3, 4))[1], np.arange(1, 48, 4))


def test_fan_in_indices_by_hand():
    mask = jnp.array([[T, F, F], [F, T, F], [T, T, F], [F, F, F]])  # neurons keep inputs {0, 2}, {1, 2}, {} (ablated)
    np.testing.assert_array_equal(fan_in_indices(mask, 2), [[0, 2], [1, 2], [0, 1]])
    weights = jnp.arange(12.0).reshape(4, 3) * mask
    x = jnp.array([1.0, -2.0, 3.0, 0.5])
    condensed = jnp.sum(x[fan_in_indices(mask, 2)] * jnp.take_along_axis(weights.T, fan_in_indices(mask, 2), axis=1), axis=1)
    np.testing.assert_allclose(condensed, x @ weights)


def test_kept_per_group_by_hand():
    assert kept_per_group(FAN, (4, 8), 0.9) == 1  # floor(3.6) = 3 zeros per column
    assert kept_per_group(FAN, (512, 2), 0.9) == 52  # floor(460.8) = 460 zeros
    assert kept_per_group(FAN, (8, 8, 4, 32), 0.9) == 26  # fan-in 256: floor(230.4) = 230 zeros
    assert kept_per_group(Structure(), (512, 2), 0.9) == 1024 - 921
    # N:M: full groups keep N, a trailing group of r < M inputs min(N, r).
    np.testing.assert_array_equal(kept_per_group(TWO_FOUR, (6, 2), 0.5), [2, 2, 2, 2])
    np.testing.assert_array_equal(kept_per_group(Structure(NM, 1, 4), (6, 2), 0.75), [1, 1, 1, 1])
    np.testing.assert_array_equal(kept_per_group(Structure(NM, 3, 4), (5, 1), 0.25), [3, 1])


def test_erk_with_fan_in_rounds_per_layer():
    """ERK's layer sparsity s_l becomes floor(s_l * f) zeros in every column (k = f - that)."""
    # docs/design.md's example at 0.5: a dense, b at 13/42, c at 55/84. b: floor(3 * 13/42) = 0 zeros -> k = 3, dense;
    # c: fan-in 8, floor(8 * 55/84) = floor(5.24) = 5 zeros -> k = 3, sparsity 0.625 (ERK: 0.655).
    shapes = {"a": (2, 4), "b": (3, 6), "c": (2, 4, 6)}
    params = {name: {"kernel": jnp.ones(shape)} for name, shape in shapes.items()}
    masks = _random_masks(0, params, erk_sparsities(shapes, 0.5), FAN)
    assert [int(c) for c in column_counts(masks["a"]["kernel"])] == [2] * 4
    assert [int(c) for c in column_counts(masks["b"]["kernel"])] == [3] * 6
    assert [int(c) for c in column_counts(masks["c"]["kernel"])] == [3] * 6
    # The 4-512-512-2 MLP at 0.9: ERK makes dense_0 and output dense and dense_1 1 - 23449.6 / 262144 sparse:
    # floor(512 * 0.910547) = floor(466.2) = 466 zeros, k = 46 per neuron (sparsity 0.91016).
    shapes = {"dense_0": (4, 512), "dense_1": (512, 512), "output": (512, 2)}
    params = {name: {"kernel": jnp.ones(shape)} for name, shape in shapes.items()}
    masks = _random_masks(1, params, erk_sparsities(shapes, 0.9), FAN)
    assert set(np.asarray(column_counts(masks["dense_1"]["kernel"])).tolist()) == {46}
    assert bool(jnp.all(masks["dense_0"]["kernel"])) and bool(jnp.all(masks["output"]["kernel"]))
    # Uniform 0.9: k = 1, 52, 52.
    masks = _random_masks(1, params, {name: 0.9 for name in shapes}, FAN)
    assert [set(np.asarray(column_counts(masks[name]["kernel"])).tolist()) for name in shapes] == [{1}, {52}, {52}]


def test_nm_masks_and_fixed_sparsity():
    params = MLP((16, 16), 3).init(jax.random.key(0), jnp.zeros((1, 6)))["params"]  # fan-ins 6, 16, 16
    config = SparsityConfig(method="static", sparsity=0.5, distribution="erk", structure="nm:2:4")
    sparsities = layer_sparsities(params, config)
    assert sparsities == {"dense_0": 0.5, "dense_1": 0.5, "output": 0.5}  # ERK does not apply
    masks = _random_masks(2, params, sparsities, TWO_FOUR)
    for name in sparsities:
        assert set(np.asarray(group_counts(TWO_FOUR, masks[name]["kernel"])).tolist()) == {2}, name
    # dense_0: groups of inputs 0-3 and 4-5 (2 real): 2 + 2 kept per neuron.
    assert set(np.asarray(column_counts(masks["dense_0"]["kernel"])).tolist()) == {4}
    one_four = _random_masks(2, params, {name: 0.75 for name in sparsities}, Structure(NM, 1, 4))
    assert set(np.asarray(column_counts(one_four["dense_0"]["kernel"])).tolist()) == {2}


WEIGHTS = jnp.array([[0.5, -2.0], [-0.1, 0.3], [0.0, 0.0]])  # fan-in 3, two neurons with 2 inputs each
MASK = jnp.array([[T, T], [T, T], [F, F]])
GRADS = jnp.array([[0.0, 0.1], [0.8, 0.05], [0.9, -0.4]])


def test_drop_and_grow_per_column_by_hand():
    # f = 0.5: floor(0.5 * 4) = 2 dropped in the layer (row 1: 0.1 and 0.3). fan_in regrows each column to 2
    # among rows 1, 2: column 0 |g| 0.8, 0.9 -> row 2; column 1 |g| 0.05, 0.4 -> row 2.
    np.testing.assert_array_equal(drop_and_grow(WEIGHTS, MASK, jnp.abs(GRADS), 0.5, FAN), [[T, T], [F, F], [T, T]])
    # Unstructured drops the same two but grows the two largest |g| of the layer, both in column 0.
    np.testing.assert_array_equal(drop_and_grow(WEIGHTS, MASK, jnp.abs(GRADS), 0.5), [[T, T], [T, F], [T, F]])
    # f = 0.25: one drop (0.1, column 0), regrown in column 0 (row 2, |g| 0.9), not where the layer's next largest is.
    np.testing.assert_array_equal(drop_and_grow(WEIGHTS, MASK, jnp.abs(GRADS), 0.25, FAN), [[T, T], [F, T], [T, F]])
    # 2:4 on an 8-input neuron: f = 0.25 drops floor(0.25 * 4) = 1 in the layer (-0.1, group 0), regrown in
    # group 0 (|g| 0.3 at input 2), not at input 6 (|g| 0.9, group 1). A per-group drop, floor(0.25 * 2) = 0, changes nothing.
    column = jnp.array([0.5, -0.1, 0.0, 0.0, 0.7, 0.6, 0.0, 0.0])[:, None]
    mask = jnp.array([T, T, F, F, T, T, F, F])[:, None]
    grads = jnp.array([0.0, 0.1, 0.3, 0.2, 0.0, 0.0, 0.9, 0.05])[:, None]
    np.testing.assert_array_equal(drop_and_grow(column, mask, grads, 0.25, TWO_FOUR)[:, 0], [T, F, T, F, T, T, F, F])


def test_magnitude_mask_per_column_and_group_by_hand():
    weights = jnp.array([[0.5, -2.0], [-0.1, 0.3], [0.7, 0.0]])
    ones = jnp.ones((3, 2), bool)
    # fan_in at 0.5: floor(1.5) = 1 zero per column: column 0 drops 0.1, column 1 drops 0.0.
    np.testing.assert_array_equal(magnitude_mask(weights, ones, 0.5, FAN), [[T, T], [F, T], [T, F]])
    # Unstructured: floor(3) = 3 zeros in the layer: 0.0, 0.1, 0.3.
    np.testing.assert_array_equal(magnitude_mask(weights, ones, 0.5), [[T, T], [F, F], [T, F]])
    column = jnp.array([[0.5], [-0.1], [0.7], [0.3]])
    # 2:4 at half the cubic progress (s_t = 0.5 * 0.875): floor(0.875 * 2) = 1 removed per group, then 2 at p = 1.
    np.testing.assert_array_equal(magnitude_mask(column, jnp.ones((4, 1), bool), 0.5 * 0.875, TWO_FOUR)[:, 0], [T, F, T, T])
    np.testing.assert_array_equal(magnitude_mask(column, jnp.ones((4, 1), bool), 0.5, TWO_FOUR)[:, 0], [T, F, T, F])


def test_prune_per_column_by_hand():
    weights = jnp.array([[0.5, -2.0], [-0.1, 0.3], [0.7, 0.0]])
    params = {"layer": {"kernel": weights}}
    masks = {"layer": {"kernel": jnp.ones((3, 2), bool)}}
    config = SparsityConfig(method="prune", sparsity=0.9, settings=Window(update_period=10, update_start=0, update_end=100),
                            structure="fan_in")
    # s_50 = 0.9 * (1 - 0.5^3) = 0.7875: floor(3 * 0.7875) = 2 zeros per column, k = 1: 0.7 and -2.0 stay.
    new = TOPOLOGIES["prune"].update_masks(jax.random.key(0), jnp.int32(50), params, None, masks, {"layer": 0.9}, config)
    np.testing.assert_array_equal(new["layer"]["kernel"], [[F, T], [F, F], [T, F]])


# --- structure through the optimizer wrapper: after init and after every topology update --------------------------

NET = MLP((16, 16), 2)


def _loss(params, batch):
    x, y = batch
    return jnp.mean((NET.apply({"params": params}, x) - y) ** 2)


def _structure_holds(masks, sparsities, structure: Structure, step_sparsity=None) -> None:
    """Every masked kernel has exactly the counts of its structure (prune: at the sparsity it has reached)."""
    for name, sparsity in sparsities.items():
        mask = masks[name]["kernel"]
        if structure.kind == FAN_IN:
            counts = np.asarray(column_counts(mask))
            if step_sparsity is None:
                assert set(counts.tolist()) == {mask.shape[0] - math.floor(sparsity * mask.shape[0])}, name
            else:
                assert len(set(counts.tolist())) == 1, (name, counts)  # one k_t for every column
        else:
            counts = np.asarray(group_counts(structure, mask))
            assert len(set(counts.tolist())) == 1 and counts[0] <= structure.m, (name, counts)
            if step_sparsity is None:
                assert counts[0] == structure.n, name


def settings_for(method: str, **values):
    """`method`'s settings (`Topology.settings_type`) from `values`, less the fields they do not have (static: none)."""
    settings_type = TOPOLOGIES[method].settings_type
    names = {field.name for field in dataclasses.fields(settings_type)}
    return settings_type(**{name: value for name, value in values.items() if name in names})


@functools.lru_cache(maxsize=None)
def _training(method: str, structure: str):
    settings = settings_for(method, update_period=2, update_start=0, update_end=9, drop_fraction=0.5, ablation_threshold=0.3)
    config = SparsityConfig(method=method, sparsity=0.75 if structure == "fan_in" else 0.5, distribution="uniform",
                            structure=structure, settings=settings)
    opt = sparse_optimizer(optax.adam(1e-2), config)

    def init(key):
        net_key, mask_key = jax.random.split(key)
        return opt.init(mask_key, NET.init(net_key, jnp.zeros((1, 4)))["params"])

    def step(t, params, state, key):
        batch_key, opt_key = jax.random.split(key)
        x = jax.random.normal(batch_key, (32, 4))
        grads = jax.grad(_loss)(params, (x, jnp.stack([x[:, 0] * x[:, 1], jnp.sin(x[:, 2])], -1)))
        return opt.apply_gradients(t, params, grads, state, opt_key)

    return config, init, jax.jit(step)


@pytest.mark.parametrize("method, structure", [
    ("static", "fan_in"), ("set", "fan_in"), ("rigl", "fan_in"), ("prune", "fan_in"),
    ("set", "nm:2:4"), ("rigl", "nm:2:4"), ("prune", "nm:2:4"),
])
def test_every_method_keeps_the_structure(method, structure):
    config, init, step = _training(method, structure)
    params, state = jax.jit(init)(jax.random.key(0))
    sparsities = layer_sparsities(params, config)
    parsed = parse(structure)
    if method != "prune":
        _structure_holds(state.masks, sparsities, parsed)
    changed = 0
    for t in range(1, 12):
        old = state.masks
        params, state = step(jnp.int32(t), params, state, jax.random.key(t))
        _structure_holds(state.masks, sparsities, parsed, step_sparsity=t if method == "prune" and t < 9 else None)
        changed += sum(int(jnp.sum(a != b)) for a, b in zip(jax.tree.leaves(state.masks), jax.tree.leaves(old)))
        for name in sparsities:  # pruned weights are exact zeros
            assert not bool(jnp.any(jnp.where(state.masks[name]["kernel"], 0.0, params[name]["kernel"])))
    assert (changed > 0) == (method != "static")


def test_vmap_over_seeds_keeps_the_structure_and_equals_separate_runs():
    config, init, step = _training("rigl", "fan_in")
    keys = jax.random.split(jax.random.key(3), 3)
    params, state = jax.jit(jax.vmap(init))(keys)
    v_step = jax.jit(jax.vmap(step, in_axes=(None, 0, 0, 0)))
    separate = [jax.jit(init)(key) for key in keys]
    for t in range(1, 6):  # topology updates at 2 and 4
        step_keys = jax.vmap(lambda key: jax.random.fold_in(key, t))(keys)
        params, state = v_step(jnp.int32(t), params, state, step_keys)
        separate = [step(jnp.int32(t), *separate[i], step_keys[i]) for i in range(3)]
    sparsities = layer_sparsities(separate[0][0], config)
    for i in range(3):
        seed_masks = jax.tree.map(lambda x: x[i], state.masks)
        _structure_holds(seed_masks, sparsities, FAN)
        jax.tree.map(np.testing.assert_array_equal, seed_masks, separate[i][1].masks)
    assert not bool(jnp.all(state.masks["dense_1"]["kernel"][0] == state.masks["dense_1"]["kernel"][1]))


# --- dense layers by parameter path -------------------------------------------------------------------------------

def test_dense_layers_by_path_on_the_twin_critic_and_the_cnn():
    twin = TwinCritic((8, 8)).init(jax.random.key(0), jnp.zeros((1, 3)), jnp.zeros((1, 1)))["params"]
    both = SparsityConfig(method="static", sparsity=0.8, dense_first_layer=True, dense_last_layer=True)
    layers = list(kernel_shapes(twin))
    assert sorted(dense_layer_paths(layers, both)) == ["q1/dense_0", "q1/output", "q2/dense_0", "q2/output"]
    assert set(layer_sparsities(twin, both)) == {"q1/dense_1", "q2/dense_1"}
    patterns = SparsityConfig(method="static", sparsity=0.8, dense_layers=("q*/output", "q2/dense_1"))
    assert set(layer_sparsities(twin, patterns)) == {"q1/dense_0", "q1/dense_1", "q2/dense_0"}
    cnn = NatureCNN(4, conv_features=(4, 4), kernel_sizes=(3, 3), strides=(1, 1), dense_sizes=(8,))
    cnn_params = jax.eval_shape(cnn.init, jax.random.key(0), jnp.zeros((1, 8, 8, 2)))["params"]
    assert set(layer_sparsities(cnn_params, both)) == {"conv_1", "dense_0"}
    first = SparsityConfig(method="static", sparsity=0.8, dense_first_layer=True)
    assert set(layer_sparsities(cnn_params, first)) == {"conv_1", "dense_0", "output"}
    masks = _random_masks(0, twin, layer_sparsities(twin, both), FAN)
    for layer in ("q1/dense_0", "q1/output", "q2/dense_0", "q2/output"):
        head, name = layer.split("/")
        assert bool(jnp.all(masks[head][name]["kernel"])), layer


# --- the command line: N:M fixes the sparsity ---------------------------------------------------------------------

def test_nm_fixes_the_sparsity_and_rejects_another_in_process():
    from sparserl.configs import dqn as dqn_config, sac as sac_config
    from sparserl.train import UsageError, resolve_structure_sparsity

    sparse = dqn_config.get_config().sparse
    sparse.structure = "nm:2:4"
    resolve_structure_sparsity(sparse)
    assert sparse.sparsity == 0.5  # set when --sparsity is not given
    resolve_structure_sparsity(sparse)  # the same value given is fine
    sparse.sparsity = 0.9
    with pytest.raises(UsageError, match=r"^--sparsity: 0.9 conflicts with --structure=nm:2:4, which fixes the sparsity at 1 - N/M = 0.5"):
        resolve_structure_sparsity(sparse)
    sparse = sac_config.get_config().sparse
    sparse.structure, sparse.critic_sparsity = "nm:1:4", 0.5
    with pytest.raises(UsageError, match="^--critic_sparsity: 0.5 conflicts"):
        resolve_structure_sparsity(sparse)
    sparse.structure = "nm:5:4"
    with pytest.raises(UsageError, match="^--structure: unknown structure 'nm:5:4'"):
        resolve_structure_sparsity(sparse)
    sparse.structure, sparse.sparsity = "fan_in", 0.9
    resolve_structure_sparsity(sparse)
    assert sparse.sparsity == 0.9
    sparse.method, sparse.structure = "srigl", "unstructured"
    resolve_structure_sparsity(sparse)
    assert sparse.structure == "fan_in"  # what srigl trains, in config.json and the run name
    sparse.method = "srste"
    with pytest.raises(UsageError, match="^--structure: --method=srste trains N:M sparsity"):
        resolve_structure_sparsity(sparse)


def test_nm_with_another_sparsity_exits_2_end_to_end(tmp_path):
    from tests.helpers import run_train

    result = run_train("--structure=nm:2:4", "--sparsity=0.9", "--steps=10", f"--workdir={tmp_path / 'work'}", timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [
        "error: --sparsity: 0.9 conflicts with --structure=nm:2:4, which fixes the sparsity at 1 - N/M = 0.5; leave --sparsity out"]
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize("structure", [Structure(FAN_IN), Structure(NM, 2, 4)])
def test_a_mask_updated_under_a_cond_keeps_the_row_major_layout_in_the_branch_that_keeps_it(structure):
    """A traced topology step (the compiled loop) is a `lax.cond` whose other branch returns the masks as they are.
    The grouped view's transposes gave the updated mask a transposed layout, so that branch copied the masks into
    it on every step and every masked product read them strided (`structure.row_major`). The compiled program holds
    kernel-shaped masks in a transposed layout only inside the branch that computes new ones."""
    scores, weights = jax.random.uniform(jax.random.key(0), (256, 128)), jax.random.normal(jax.random.key(1), (256, 128))

    def step(update, masks, scores, weights):
        masks = jax.lax.cond(update, lambda: keep_largest(structure, scores, kept_per_group(structure, (256, 128), 0.5)),
                             lambda: masks)
        return masks, jnp.where(masks, weights, 0.0)

    operands = (True, jnp.ones((256, 128), bool), scores, weights)
    program = jax.jit(step).lower(*operands).compile().as_text()
    transposed = [line for line in program.splitlines() if "pred[256,128]{0,1}" in line]
    assert transposed and all("branch_1_fun" in line for line in transposed), "\n".join(transposed)
    masks, masked = jax.jit(step)(*operands)
    np.testing.assert_array_equal(masks, keep_largest(structure, scores, kept_per_group(structure, (256, 128), 0.5)))
    np.testing.assert_array_equal(masked, np.where(masks, weights, 0.0))
