"""Tests for sparserl.dormancy: dormancy scores and fractions (Sokar et al. 2023, eq. 1), ReDo (Algorithm 1)."""

import functools
import math

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sparserl.dormancy import (
    DEFAULT_TAUS,
    RecycleSchedule,
    dormant_fractions,
    follow_online,
    layer_scores,
    plan_of,
    recycle,
    recycle_when_due,
    tau_name,
)
from sparserl.networks import ACTIVATIONS, MLP, NatureCNN, TwinCritic
from sparserl.sparse import SparsityConfig, sparse_optimizer


STATIC_HALF = SparsityConfig(method="static", sparsity=0.5)
DENSE = SparsityConfig()

# name -> (network, input shapes without the batch axis, sparsity)
NETWORKS = {
    "mlp": (MLP((16, 12), 3), [(5,)], STATIC_HALF),
    # Two convs (conv -> conv outgoing weights are kernel[:, :, c, :]), then a 3x3x6 flatten into dense_0.
    "cnn": (NatureCNN(3, conv_features=(8, 6), kernel_sizes=(3, 3), strides=(1, 1), dense_sizes=(16,)), [(7, 7, 2)], STATIC_HALF),
    "twin_critic": (TwinCritic((8, 8)), [(5,), (2,)], STATIC_HALF),
    # A 2x2x3 conv output flattened into the 12 rows of dense_0.
    "tiny_cnn": (NatureCNN(2, conv_features=(3,), kernel_sizes=(1,), strides=(1,), dense_sizes=(4,)), [(2, 2, 1)], DENSE),
}
# name -> {layer: neurons made dead}
PLANTED_DEAD = {
    "mlp": {"dense_0": [2, 5], "dense_1": [3]},
    "cnn": {"conv_0": [2], "conv_1": [4], "dense_0": [3]},
    "twin_critic": {"q1/dense_0": [1], "q2/dense_1": [0, 6]},
}
ADAM_STEPS = 3


@functools.cache
def fresh_init(name):
    """`init_params` for recycle: LeCun-normal kernels and zero biases with the named network's shapes.

    The same distributions as the networks' initializers (without truncation); built by hand because compiling
    flax's `init`, plain and vmapped, would dominate the run time of these tests.
    """
    network, shapes, _ = NETWORKS[name]
    dummy_inputs = tuple(jnp.zeros((1,) + shape) for shape in shapes)
    leaves, treedef = jax.tree.flatten(jax.eval_shape(lambda: network.init(jax.random.key(0), *dummy_inputs)["params"]))
    sizes = [leaf.size for leaf in leaves]

    @jax.jit
    def init(key):
        # One draw for all leaves: every separate draw would add its own threefry to the compiled program.
        draws = jnp.split(jax.random.normal(key, (sum(sizes),)), np.cumsum(sizes)[:-1])
        return jax.tree.unflatten(
            treedef,
            [
                draw.reshape(leaf.shape) / math.sqrt(math.prod(leaf.shape[:-1])) if leaf.ndim >= 2 else jnp.zeros(leaf.shape)
                for draw, leaf in zip(draws, leaves)
            ],
        )

    return init


@functools.cache
def sparse_trainer(name):
    """A jitted seed -> (inputs, params, SparseOptState) after ADAM_STEPS real Adam steps (non-zero moments)."""
    network, shapes, config = NETWORKS[name]
    optimizer = sparse_optimizer(optax.adam(1e-2), config)

    @jax.jit
    def train(seed):
        input_key, mask_key, params_key = jax.random.split(jax.random.key(seed), 3)
        input_keys = jax.random.split(input_key, len(shapes))
        inputs = tuple(jax.random.normal(key, (16,) + shape) for key, shape in zip(input_keys, shapes))
        params, opt_state = optimizer.init(mask_key, fresh_init(name)(params_key))

        def loss(params):
            return jnp.mean((network.apply({"params": params}, *inputs) - 1.0) ** 2)

        def step(step, carry):
            params, opt_state = carry
            return optimizer.apply_gradients(step, params, jax.grad(loss)(params), opt_state, jax.random.key(step))

        return (inputs,) + jax.lax.fori_loop(1, ADAM_STEPS + 1, step, (params, opt_state))

    return train


@functools.cache
def trained(name, seed):
    return sparse_trainer(name)(seed)


def scores_of(name, params, inputs):
    _, state = NETWORKS[name][0].apply({"params": params}, *inputs, mutable=[ACTIVATIONS])
    return layer_scores(state[ACTIVATIONS])


def post_activations(**layers):
    return {name: {"post_activation": jnp.asarray(outputs, jnp.float32)} for name, outputs in layers.items()}


def get_layer(tree, layer):
    for key in layer.split("/"):
        tree = tree[key]
    return tree


def set_layer(tree, layer, leaf, value):
    """A copy of a nested params dict with tree[layer][leaf] replaced."""
    head, _, rest = layer.partition("/")
    if rest:
        return {**tree, head: set_layer(tree[head], rest, leaf, value)}
    return {**tree, head: {**tree[head], leaf: value}}


# ---------------------------------------------------------------- scores and fractions


def test_tau_names():
    assert [tau_name(tau) for tau in DEFAULT_TAUS] == ["0", "0.025", "0.1"]


def test_hand_computed_scores():
    # mean |h| over the batch = [0, 1, 2, 5], layer mean 2 -> scores [0, 0.5, 1, 2.5].
    outputs = [[0.0, 1.0, -2.0, 4.0], [0.0, -1.0, 2.0, 6.0]]
    scores = layer_scores(post_activations(dense_0=outputs))
    np.testing.assert_allclose(scores["dense_0"], [0.0, 0.5, 1.0, 2.5], rtol=1e-6)


def test_conv_scores_are_per_channel():
    # NHWC [2, 2, 2, 3]: channel 0 is all 1, channel 1 is -3 in the first example and 1 in the second, channel 2 is 0.
    outputs = np.zeros((2, 2, 2, 3), np.float32)
    outputs[..., 0] = 1.0
    outputs[..., 1] = np.array([-3.0, 1.0]).reshape(2, 1, 1)
    scores = layer_scores(post_activations(conv_0=outputs))
    # mean |h| per channel = [1, 2, 0], layer mean 1.
    np.testing.assert_allclose(scores["conv_0"], [1.0, 2.0, 0.0], rtol=1e-6)


@pytest.mark.parametrize("name", ["mlp", "cnn", "twin_critic"])
def test_scores_have_mean_one_per_layer(name):
    inputs, params, _ = trained(name, 0)
    scores = scores_of(name, params, inputs)
    expected_layers = {layer for chain in NETWORKS[name][0].chains() for layer in chain[:-1]}
    assert set(scores) == expected_layers
    for layer, layer_score in scores.items():
        assert layer_score.shape == (get_layer(params, layer)["bias"].shape[0],)
        np.testing.assert_allclose(layer_score.mean(), 1.0, rtol=1e-5, err_msg=layer)


def test_all_zero_neuron_is_dormant_at_tau_zero():
    outputs = [[1.0, 0.0, 3.0, 2.0], [2.0, 0.0, 1.0, 0.5]]
    scores = layer_scores(post_activations(dense_0=outputs))
    assert scores["dense_0"][1] == 0.0
    fractions = dormant_fractions(scores, taus=(0.0,))
    assert fractions["dormant/0/dense_0"] == pytest.approx(0.25)


def test_all_zero_layer_scores_zero_without_nan():
    scores = layer_scores(post_activations(dense_0=np.zeros((4, 3))))
    np.testing.assert_array_equal(scores["dense_0"], [0.0, 0.0, 0.0])
    assert dormant_fractions(scores, taus=(0.0,))["dormant/0/total"] == 1.0


def test_total_fraction_counts_neurons_not_layers():
    scores = {"dense_0": jnp.array([0.0, 2.0]), "dense_1": jnp.ones(8)}
    fractions = dormant_fractions(scores, taus=(0.1,))
    assert fractions["dormant/0.1/dense_0"] == pytest.approx(0.5)
    assert fractions["dormant/0.1/dense_1"] == pytest.approx(0.0)
    assert fractions["dormant/0.1/total"] == pytest.approx(1 / 10)  # the mean of layer fractions would be 0.25


def test_fraction_keys_and_thresholds():
    scores = {"dense_0": jnp.array([0.0, 0.025, 0.05, 0.1, 3.825])}
    fractions = dormant_fractions(scores, network="critic")
    assert set(fractions) == {f"dormant/{tau}/critic/{name}" for tau in ("0", "0.025", "0.1") for name in ("dense_0", "total")}
    assert fractions["dormant/0/critic/dense_0"] == pytest.approx(1 / 5)
    assert fractions["dormant/0.025/critic/dense_0"] == pytest.approx(2 / 5)
    assert fractions["dormant/0.1/critic/total"] == pytest.approx(4 / 5)


# ---------------------------------------------------------------- ReDo on a sparse MLP


def adam_state(opt_state):
    """(count, mu, nu) of the Adam state inside a SparseOptState."""
    adam = opt_state.inner[0]
    return adam.count, adam.mu, adam.nu


def test_recycle_rewrites_exactly_the_recycled_neurons():
    _, params, opt_state = trained("mlp", 0)
    masks = opt_state.masks
    recycled = {"dense_0": [1, 4], "dense_1": [0, 4, 7]}
    scores = {"dense_0": jnp.ones(16).at[jnp.array([1, 4])].set(0.05), "dense_1": jnp.ones(12).at[jnp.array([0, 4, 7])].set(0.05)}
    key = jax.random.key(42)
    init_params = fresh_init("mlp")

    result = recycle(params, opt_state, scores, key, init_params=init_params, chains=NETWORKS["mlp"][0].chains(), tau=0.1)
    fresh = init_params(key)
    assert int(result.num_recycled) == 5

    # Expected params and touched entries, computed layer by layer.
    expected = jax.tree.map(np.array, params)
    touched = jax.tree.map(lambda leaf: np.zeros(leaf.shape, bool), params)
    for layer in ("dense_0", "dense_1"):
        mask = np.asarray(masks[layer]["kernel"])
        columns = recycled[layer]
        expected[layer]["kernel"][:, columns] = np.where(mask, fresh[layer]["kernel"], 0.0)[:, columns]
        touched[layer]["kernel"][:, columns] = mask[:, columns]
        expected[layer]["bias"][columns] = 0.0
        touched[layer]["bias"][columns] = True
    for layer, rows in (("dense_1", recycled["dense_0"]), ("output", recycled["dense_1"])):
        expected[layer]["kernel"][rows, :] = 0.0
        touched[layer]["kernel"][rows, :] = np.asarray(masks[layer]["kernel"])[rows, :]

    jax.tree.map(np.testing.assert_array_equal, result.params, expected)
    jax.tree.map(np.testing.assert_array_equal, result.touched, touched)
    # Masked entries stay exactly zero, and the mask never changes.
    jax.tree.map(lambda leaf, mask: np.testing.assert_array_equal(np.where(mask, 0.0, leaf), 0.0), result.params, masks)
    jax.tree.map(np.testing.assert_array_equal, result.opt_state.masks, masks)
    # Recycled neurons got new incoming weights (not just their old ones).
    assert not np.allclose(result.params["dense_0"]["kernel"][:, 1], params["dense_0"]["kernel"][:, 1])

    count, mu, nu = adam_state(opt_state)
    new_count, new_mu, new_nu = adam_state(result.opt_state)
    assert int(new_count) == int(count) == ADAM_STEPS
    for old, new in ((mu, new_mu), (nu, new_nu)):
        # The moments were non-zero on touched entries before, so zeroing them is observable.
        assert any(np.any(np.asarray(o)[t] != 0) for o, t in zip(jax.tree.leaves(old), jax.tree.leaves(touched)))
        jax.tree.map(lambda o, n, t: np.testing.assert_array_equal(n, np.where(t, 0.0, o)), old, new, touched)


def test_nothing_dormant_changes_nothing():
    _, params, opt_state = trained("mlp", 0)
    scores = {"dense_0": jnp.ones(16), "dense_1": jnp.ones(12)}
    chains = NETWORKS["mlp"][0].chains()
    result = recycle(params, opt_state, scores, jax.random.key(1), init_params=fresh_init("mlp"), chains=chains)
    assert int(result.num_recycled) == 0
    jax.tree.map(np.testing.assert_array_equal, result.params, params)
    jax.tree.map(np.testing.assert_array_equal, result.opt_state, opt_state)
    assert not any(np.any(leaf) for leaf in jax.tree.leaves(result.touched))


def test_follow_online_copies_only_touched_entries():
    target = {"dense_0": {"kernel": jnp.zeros((2, 2)), "bias": jnp.zeros(2)}}
    online = {"dense_0": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}}
    touched = {"dense_0": {"kernel": jnp.array([[True, False], [False, False]]), "bias": jnp.array([False, True])}}
    followed = follow_online(target, online, touched)
    np.testing.assert_array_equal(followed["dense_0"]["kernel"], [[1.0, 0.0], [0.0, 0.0]])
    np.testing.assert_array_equal(followed["dense_0"]["bias"], [0.0, 1.0])


# ---------------------------------------------------------------- function preservation with planted dead neurons


def plant_dead_neurons(params, dead):
    """Zero incoming weights and a negative bias: the neuron's ReLU output is 0 on every input."""
    for layer, neurons in dead.items():
        neurons = jnp.array(neurons)
        layer_params = get_layer(params, layer)
        params = set_layer(params, layer, "kernel", layer_params["kernel"].at[..., neurons].set(0.0))
        params = set_layer(params, layer, "bias", layer_params["bias"].at[neurons].set(-1.0))
    return params


@functools.cache
def dead_setup(name, seed):
    inputs, params, opt_state = trained(name, seed)
    params = plant_dead_neurons(params, PLANTED_DEAD[name])
    return inputs, params, opt_state, scores_of(name, params, inputs)


@pytest.mark.parametrize("name", sorted(PLANTED_DEAD))
def test_recycling_dead_neurons_preserves_the_function(name):
    network = NETWORKS[name][0]
    inputs, params, opt_state, scores = dead_setup(name, 0)
    dead = PLANTED_DEAD[name]
    for layer, neurons in dead.items():
        np.testing.assert_array_equal(scores[layer][jnp.array(neurons)], 0.0)

    result = recycle(params, opt_state, scores, jax.random.key(7), init_params=fresh_init(name), chains=network.chains(), tau=0.0)
    assert int(result.num_recycled) >= sum(len(neurons) for neurons in dead.values())
    before = network.apply({"params": params}, *inputs)
    after = network.apply({"params": result.params}, *inputs)
    np.testing.assert_allclose(after, before, atol=1e-6)
    for layer, neurons in dead.items():
        incoming = get_layer(result.params, layer)["kernel"][..., jnp.array(neurons)]
        assert np.any(incoming != 0.0), f"{layer} {neurons} kept their zero incoming weights"


# ---------------------------------------------------------------- conv -> flatten -> dense


def tiny_cnn_setup(seed):
    """Non-zero params of the tiny CNN's shapes and their dense optimizer state."""
    shapes = fresh_init("tiny_cnn")(jax.random.key(0))
    params = jax.tree.map(lambda leaf: jnp.arange(1.0, 1.0 + leaf.size).reshape(leaf.shape) + seed, shapes)
    _, opt_state = sparse_optimizer(optax.adam(1e-2), DENSE).init(jax.random.key(seed), params)
    return params, opt_state


def test_conv_to_dense_outgoing_rows_follow_hwc_flattening():
    params, opt_state = tiny_cnn_setup(0)
    scores = {"conv_0": jnp.array([1.5, 0.0, 1.5]), "dense_0": jnp.ones(4)}
    key = jax.random.key(3)
    result = recycle(params, opt_state, scores, key, init_params=fresh_init("tiny_cnn"), chains=NETWORKS["tiny_cnn"][0].chains())

    # 2x2 positions x 3 channels flattened in HWC order: channel 1 owns flat indices 1, 4, 7, 10.
    kernel = np.asarray(result.params["dense_0"]["kernel"])
    assert kernel.shape == (12, 4)
    channel_1 = [1, 4, 7, 10]
    others = [i for i in range(12) if i not in channel_1]
    np.testing.assert_array_equal(kernel[channel_1], 0.0)
    np.testing.assert_array_equal(kernel[others], np.asarray(params["dense_0"]["kernel"])[others])
    np.testing.assert_array_equal(result.touched["dense_0"]["kernel"], np.isin(np.arange(12), channel_1)[:, None].repeat(4, 1))
    fresh = fresh_init("tiny_cnn")(key)
    np.testing.assert_array_equal(result.params["conv_0"]["kernel"][..., 1], fresh["conv_0"]["kernel"][..., 1])
    np.testing.assert_array_equal(result.params["conv_0"]["kernel"][..., [0, 2]], params["conv_0"]["kernel"][..., [0, 2]])
    np.testing.assert_array_equal(result.params["conv_0"]["bias"], params["conv_0"]["bias"].at[1].set(0.0))
    jax.tree.map(np.testing.assert_array_equal, result.params["output"], params["output"])


# ---------------------------------------------------------------- vmap over seeds


def mlp_case(seed):
    """Scores from a real forward pass; tau = 0.5 recycles a different set of neurons per seed."""
    inputs, params, opt_state = trained("mlp", seed)
    return params, opt_state, scores_of("mlp", params, inputs), 0.5


def dead_case(name):
    def make(seed):
        _, params, opt_state, scores = dead_setup(name, seed)
        return params, opt_state, scores, 0.0

    return make


def tiny_cnn_case(seed):
    params, opt_state = tiny_cnn_setup(seed)
    scores = {"conv_0": jnp.ones(3).at[seed].set(0.0), "dense_0": jnp.ones(4).at[seed].set(0.0)}
    return params, opt_state, scores, 0.1


# name -> seed -> (params, opt_state, scores, tau)
VMAP_CASES = {"mlp": mlp_case, "cnn": dead_case("cnn"), "twin_critic": dead_case("twin_critic"), "tiny_cnn": tiny_cnn_case}


@pytest.mark.parametrize("name", sorted(VMAP_CASES))
def test_vmap_over_seeds_matches_separate_calls(name):
    cases = [VMAP_CASES[name](seed) for seed in range(3)]
    tau = cases[0][3]
    keys = jax.random.split(jax.random.key(11), 3)
    recycle_one = functools.partial(recycle, init_params=fresh_init(name), chains=NETWORKS[name][0].chains(), tau=tau)

    separate = [recycle_one(params, opt_state, scores, key) for (params, opt_state, scores, _), key in zip(cases, keys)]
    stacked = [jax.tree.map(lambda *leaves: jnp.stack(leaves), *(case[i] for case in cases)) for i in range(3)]
    vmapped = jax.vmap(recycle_one)(*stacked, keys)

    assert all(int(result.num_recycled) > 0 for result in separate)
    for seed, expected in enumerate(separate):
        jax.tree.map(lambda batched, single: np.testing.assert_array_equal(batched[seed], single), vmapped, expected)


# ---------------------------------------------------------------- schedule


def test_recycle_schedule_is_due_under_jit():
    steps = jnp.arange(13)
    windowed = jax.jit(jax.vmap(RecycleSchedule(period=3, start=2, end=10).is_due))(steps)
    assert [int(step) for step in steps[windowed]] == [2, 5, 8]
    forever = jax.jit(RecycleSchedule(period=4).is_due)
    assert [bool(forever(step)) for step in (0, 3, 4, 8, 1_000_000)] == [False, False, True, True, True]


class _CountingState(flax.struct.PyTreeNode):
    """A stand-in TrainState: the shared update counter, ReDo's count and, per update, the batch it recycled on."""

    step: jax.Array
    recycled: jax.Array
    recycled_on: jax.Array  # [updates + 1]: 0, or the batch value that the recycle after update k saw


def _updates_with_redo(schedule, num_updates: int, seeds: int):
    """`num_updates` stand-in updates over `seeds` vmapped seeds (step unbatched), each followed by
    `recycle_when_due`; the recycle writes its batch (10 + seed) at the update number and recycles 2 + seed."""

    def recycle(state, batch, key):
        del key
        return state.replace(recycled_on=state.recycled_on.at[state.step].set(batch)), 2 + batch - 10

    def updates(state, seed):
        def update(state, _):
            state = state.replace(step=state.step + 1)
            return recycle_when_due(schedule, state, recycle, lambda key: 10 + seed, jax.random.key(0)), None

        return jax.lax.scan(update, state, None, length=num_updates)[0]

    state = _CountingState(jnp.zeros((), jnp.int32), jnp.zeros((seeds,), jnp.int32),
                           jnp.zeros((seeds, num_updates + 1), jnp.int32))
    axes = _CountingState(None, 0, 0)
    run = jax.vmap(updates, in_axes=(axes, 0), out_axes=axes)
    return jax.jit(run)(state, jnp.arange(seeds)), jax.make_jaxpr(run)(state, jnp.arange(seeds))


def test_recycle_when_due_recycles_after_each_due_update_on_its_batch():
    """Every 3 updates: after updates 3, 6 and 9 of 10, on each seed's own batch, and the counts add up."""
    state, jaxpr = _updates_with_redo(RecycleSchedule(period=3), num_updates=10, seeds=2)
    assert [np.flatnonzero(row).tolist() for row in state.recycled_on] == [[3, 6, 9], [3, 6, 9]]
    assert state.recycled_on[:, 3].tolist() == [10, 11]
    assert state.recycled.tolist() == [3 * 2, 3 * 3]
    # The counter is shared by the seeds, so under vmap the schedule stays a branch (a `cond`); a per-seed
    # predicate would make vmap run both branches and select (no `cond` left), the recycle on every update.
    assert "cond[" in str(jaxpr)


def test_recycle_when_due_without_a_schedule_adds_no_branch():
    state, jaxpr = _updates_with_redo(None, num_updates=4, seeds=1)
    assert state.recycled.tolist() == [0] and not state.recycled_on.any()
    assert "cond[" not in str(jaxpr)


def test_plan_of_tells_which_updates_need_redo_in_their_program():
    """Every 3 updates: one update numbered 3 is due (True), 1 is not (False); two updates 2-3 hold a due one
    (None: decided per update in the program), 4-5 none."""
    schedule = RecycleSchedule(period=3)
    assert [plan_of(schedule, first, 1) for first in (1, 2, 3, 6)] == [False, False, True, True]
    assert [plan_of(schedule, first, 2) for first in (1, 2, 3, 4)] == [False, None, None, False]
    assert plan_of(None, 3, 1) is False


def test_a_plan_compiles_the_decision_away_with_the_same_result():
    """plan True recycles with no branch, False leaves ReDo out; both agree with the branch on a due update."""
    for plan, due in ((True, True), (False, False)):
        state = _CountingState(jnp.int32(3 if due else 4), jnp.zeros((), jnp.int32), jnp.zeros(5, jnp.int32))

        def recycle(state, batch, key):
            return state.replace(recycled_on=state.recycled_on.at[state.step].set(batch)), batch

        def with_plan(state, plan):
            return recycle_when_due(RecycleSchedule(period=3), state, recycle, lambda key: 9, jax.random.key(0), plan)

        planned, decided = with_plan(state, plan), with_plan(state, None)
        assert int(planned.recycled) == int(decided.recycled) == (9 if due else 0)
        assert "cond[" not in str(jax.make_jaxpr(functools.partial(with_plan, plan=plan))(state))
