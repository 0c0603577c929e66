"""Tests for sparserl.remedies: Shrink & Perturb (Ash & Adams 2020), the reset of the last layers (Nikishin et al.
2022) and ReGraMa (Liu et al. 2025) on hand-built states, entry by entry; every remedy keeps the masks and their
structure (fan_in, N:M) and zeroes exactly the moments it rewrites; seeds vmapped equal seeds alone; the schedule."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from sparserl import dormancy, networks, plasticity, remedies, sparse_network
from sparserl.configs.base import REMEDIES
from sparserl.errors import ConfigError
from sparserl.sparse import SparsityConfig, sparse_optimizer

INPUTS = 6
STRUCTURES = {
    "unstructured": SparsityConfig(method="static", sparsity=0.5),
    "fan_in": SparsityConfig(method="static", sparsity=0.5, structure="fan_in"),
    "nm:2:4": SparsityConfig(method="static", sparsity=0.5, structure="nm:2:4"),
}


def _redo(remedy, **settings):
    defaults = dict(enabled=True, remedy=remedy, tau=0.1, period=None, shrink=0.8, perturb=0.2, reset_layers=1)
    return ml_collections.ConfigDict({**defaults, **settings})


@functools.cache
def _network(structure="unstructured"):
    return sparse_network.make_network(networks.MLP((8, 8), 4), optax.adam(1e-2), STRUCTURES[structure])


def _loss(network, params, inputs):
    return jnp.mean((sparse_network.apply(network, params, inputs) - 1.0) ** 2)


@functools.partial(jax.jit, static_argnums=(0,))
def _trained(structure, seed):
    """(state, inputs) of a network after 3 Adam steps: non-zero moments on every kept entry."""
    network = _network(structure)
    input_key, init_key = jax.random.split(jax.random.key(seed))
    inputs = jax.random.normal(input_key, (32, INPUTS))
    state = sparse_network.init(network, init_key, inputs[:1])
    for step in range(1, 4):
        grads = jax.grad(functools.partial(_loss, network))(state.params, inputs)
        state = sparse_network.apply_gradients(network, state, grads, jnp.asarray(step), jax.random.key(step))
    return state, inputs


def _adam(state):
    adam = state.opt_state.inner[0]
    return adam.count, adam.mu, adam.nu


def _gradients(network, state, inputs):
    return lambda: jax.grad(functools.partial(_loss, network))(state.params, inputs)


def _assert_moments_zeroed_exactly_where(before, after, touched):
    count, *moments = _adam(before)
    new_count, *new_moments = _adam(after)
    assert int(new_count) == int(count) == 3
    for old, new in zip(moments, new_moments):
        assert any(np.any(np.asarray(o)[np.asarray(t)] != 0) for o, t in zip(jax.tree.leaves(old), jax.tree.leaves(touched)))
        jax.tree.map(lambda o, n, t: np.testing.assert_array_equal(n, np.where(t, 0.0, o)), old, new, touched)


def test_shrink_and_perturb_is_lambda_theta_plus_sigma_fresh_on_kept_entries():
    network = _network()
    state, inputs = _trained("unstructured", 0)
    key = jax.random.key(9)
    new_state, result = remedies.apply(_redo("shrink_perturb"), network, state, key, (inputs,), None)

    masks = state.opt_state.masks
    fresh = sparse_network.fresh_params(network, key, masks, inputs)
    for path, old in jax.tree_util.tree_leaves_with_path(state.params):
        mask = np.asarray(_at(masks, path))
        expected = np.where(mask, np.float32(0.8) * np.asarray(old) + np.float32(0.2) * np.asarray(_at(fresh, path)), 0.0)
        np.testing.assert_allclose(np.asarray(_at(new_state.params, path)), expected, rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(np.asarray(_at(result.touched, path)), mask)
    assert int(result.num_recycled) == 0
    _assert_moments_zeroed_exactly_where(state, new_state, result.touched)


def _at(tree, path):
    for entry in path:
        tree = tree[entry.key]
    return tree


@pytest.mark.parametrize("count, layers", [(1, ["output"]), (2, ["dense_1", "output"])])
def test_reset_rewrites_exactly_the_last_layers_kept_entries(count, layers):
    network = _network()
    state, inputs = _trained("unstructured", 1)
    key = jax.random.key(3)
    new_state, result = remedies.apply(_redo("reset", reset_layers=count), network, state, key, (inputs,), None)

    masks = state.opt_state.masks
    fresh = sparse_network.fresh_params(network, key, masks, inputs)
    for layer in ("dense_0", "dense_1", "output"):
        for leaf in ("kernel", "bias"):
            old, new, mask = (np.asarray(tree[layer][leaf]) for tree in (state.params, new_state.params, masks))
            reset = layer in layers
            expected = np.where(mask, fresh[layer][leaf], 0.0) if reset else old
            np.testing.assert_array_equal(new, expected, err_msg=f"{layer}/{leaf}")
            np.testing.assert_array_equal(result.touched[layer][leaf], mask & reset)
    assert int(result.num_recycled) == sum(state.params[layer]["bias"].size for layer in layers)  # 4, then 8 + 4
    _assert_moments_zeroed_exactly_where(state, new_state, result.touched)


def test_regrama_recycles_a_neuron_with_no_gradient_that_redo_leaves():
    """dense_1's unit 3 is active but its outgoing weights are 0: its activation score is normal, its gradient is 0.
    ReGraMa (GraMa score <= tau) recycles it; ReDo (activation score <= tau) does not."""
    network = _network("unstructured")
    state, inputs = _trained("unstructured", 2)
    params = state.params
    params["dense_1"]["bias"] = params["dense_1"]["bias"].at[3].set(5.0)  # on for every input
    params["output"]["kernel"] = params["output"]["kernel"].at[3].set(0.0)
    state = state.replace(params=params)
    key = jax.random.key(4)

    activation_scores = sparse_network.scores(network, state.params, inputs)
    grama_scores = plasticity.gradient_scores(_gradients(network, state, inputs)(), state.opt_state.masks,
                                              {"dense_0", "dense_1"})
    assert float(activation_scores["dense_1"][3]) > 0.1 and float(grama_scores["dense_1"][3]) == 0.0

    regrama, regrama_result = remedies.apply(_redo("regrama"), network, state, key, (inputs,),
                                             _gradients(network, state, inputs))
    expected = dormancy.recycle(state.params, state.opt_state, grama_scores, key, init_params=lambda _: sparse_network.fresh_params(
        network, key, state.opt_state.masks, inputs), chains=network.module.chains(), tau=0.1)
    jax.tree.map(np.testing.assert_array_equal, regrama.params, expected.params)
    assert bool(regrama_result.touched["dense_1"]["bias"][3]) and not bool(regrama_result.touched["output"]["bias"].any())
    np.testing.assert_array_equal(regrama.params["dense_1"]["bias"][3], 0.0)

    _, redo_result = remedies.apply(_redo("redo"), network, state, key, (inputs,), None)
    assert not bool(redo_result.touched["dense_1"]["bias"][3])


@pytest.mark.parametrize("structure", sorted(STRUCTURES))
@pytest.mark.parametrize("remedy", REMEDIES)
def test_every_remedy_keeps_the_masks_and_their_structure(remedy, structure):
    network = _network(structure)
    state, inputs = _trained(structure, 0)
    redo = _redo(remedy, tau=1.5, reset_layers=3)  # tau 1.5 and 3 layers: many neurons, every layer rewritten
    new_state, result = remedies.apply(redo, network, state, jax.random.key(5), (inputs,),
                                       _gradients(network, state, inputs))
    jax.tree.map(np.testing.assert_array_equal, new_state.opt_state.masks, state.opt_state.masks)
    jax.tree.map(lambda leaf, mask: np.testing.assert_array_equal(np.where(mask, 0.0, leaf), 0.0),
                 new_state.params, state.opt_state.masks)
    kernel = np.asarray(new_state.params["dense_1"]["kernel"])
    assert np.any(kernel != np.asarray(state.params["dense_1"]["kernel"]))
    if structure == "fan_in":  # every neuron keeps the same number of inputs
        assert len(set(np.count_nonzero(np.asarray(state.opt_state.masks["dense_1"]["kernel"]), axis=0))) == 1
    if structure == "nm:2:4":  # at most 2 non-zero weights in every 4 consecutive inputs
        assert np.count_nonzero(kernel.reshape(2, 4, -1), axis=1).max() <= 2
    assert np.any(np.asarray(jax.tree.leaves(result.touched)[0]))


@pytest.mark.parametrize("remedy", REMEDIES)
def test_seeds_vmapped_equal_seeds_alone(remedy):
    network = _network()
    redo = _redo(remedy, tau=0.5, reset_layers=2)
    cases = [_trained("unstructured", seed) for seed in range(3)]
    keys = jax.random.split(jax.random.key(7), 3)

    def one(state, inputs, key):
        return remedies.apply(redo, network, state, key, (inputs,), _gradients(network, state, inputs))

    alone = [jax.jit(one)(state, inputs, key) for (state, inputs), key in zip(cases, keys)]
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *cases)
    vmapped = jax.jit(jax.vmap(one))(*stacked, keys)
    for seed, expected in enumerate(alone):
        jax.tree.map(lambda batched, single: np.testing.assert_allclose(batched[seed], single, rtol=1e-6, atol=1e-7),
                     vmapped, expected)
    assert any(bool(np.any(leaf)) for leaf in jax.tree.leaves(alone[0][1].touched))


def test_schedule_takes_the_period_or_the_remedys_own():
    assert remedies.schedule_of(_redo("redo", period=250)) == dormancy.RecycleSchedule(period=250)
    periods = {remedy: remedies.schedule_of(_redo(remedy)).period for remedy in REMEDIES}
    assert periods == {"redo": 1_000, "regrama": 1_000, "shrink_perturb": 20_000, "reset": 20_000}
    off = _redo("reset")
    off.enabled = False
    assert remedies.schedule_of(off) is None


def test_check_names_the_field_a_network_cannot_serve():
    chains = _network().module.chains()
    with pytest.raises(ConfigError, match="does not declare") as raised:
        remedies.check(_redo("regrama"), chains, has_loss=False, network="critic")
    assert raised.value.field == "redo.remedy"
    with pytest.raises(ConfigError, match=r"must be in \[1, 3\]") as raised:
        remedies.check(_redo("reset", reset_layers=4), chains, has_loss=True, network="")
    assert raised.value.field == "redo.reset_layers"
    remedies.check(_redo("reset", reset_layers=3), chains, has_loss=False, network="")


def test_counts_add_the_neurons_weights_and_distance_of_a_step():
    before = [{"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([0.0])}]
    after = [{"w": jnp.array([4.0, 2.0])}, {"w": jnp.array([4.0])}]
    touched = [{"w": jnp.array([True, False])}, {"w": jnp.array([True])}]
    results = [dormancy.RecycleResult(a, None, t, jnp.asarray(n, jnp.int32)) for a, t, n in zip(after, touched, (1, 2))]
    counts = remedies.counts_of(before, after, results)
    assert (int(counts.neurons), float(counts.weights), float(counts.distance)) == (3, 2.0, 5.0)  # sqrt(3^2 + 4^2)


def test_a_leaf_of_no_layer_is_never_rewritten():
    """PPO's Gaussian `log_std/bias` sits in the actor's params but in no chain: Shrink & Perturb and resets leave it
    (and its moments) as they are."""
    params = {"dense_0": {"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3)}, "log_std": {"bias": jnp.full(2, -0.5)}}
    fresh = jax.tree.map(lambda leaf: 2 * jnp.ones_like(leaf), params)
    optimizer = sparse_optimizer(optax.adam(1e-2), SparsityConfig())
    _, opt_state = optimizer.init(jax.random.key(0), params)
    for result in (remedies.shrink_and_perturb(params, opt_state, fresh, 0.8, 0.2, ["dense_0"]),
                   remedies.reset_layers(params, opt_state, fresh, ["dense_0"])):
        np.testing.assert_array_equal(result.params["log_std"]["bias"], params["log_std"]["bias"])
        assert not bool(result.touched["log_std"]["bias"].any()) and bool(result.touched["dense_0"]["kernel"].all())
    np.testing.assert_allclose(remedies.shrink_and_perturb(params, opt_state, fresh, 0.8, 0.2, ["dense_0"]).params[
        "dense_0"]["kernel"], 0.8 + 0.4)
