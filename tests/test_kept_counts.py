"""Prune's condensed kernels per step (`sparserl.kept_counts`): phases of constant buckets, slots at a capacity,
and native kept-value steps through pruning steps equal to the masked network's."""

import functools
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sparserl import kept_counts, networks, sparse_network
from sparserl.sparse import SparsityConfig, condensed, condensed_native
from sparserl.sparse.topology import Window

needs_compiler = pytest.mark.skipif(shutil.which("g++") is None, reason="native kernels are built with g++, not on PATH")


def _network(kernels: str, module=None, window=Window(update_period=1, update_start=0, update_end=4), sparsity=0.875):
    """By default one fan_in layer [16, 2] pruned to 87.5% (k = 2) over steps 0-4, every step."""
    config = SparsityConfig(method="prune", sparsity=sparsity, distribution="uniform", structure="fan_in",
                            settings=window)
    return sparse_network.make_network(module or networks.MLP((), 2), optax.adamw(1e-2, weight_decay=0.1), config,
                                       kernels=kernels)


def test_phases_are_the_runs_of_equal_buckets_by_hand():
    """k_t = 16, 16, 8, 4, 3, 2, 2 at steps 0..6 (step t runs on the masks of step t - 1; the cubic schedule by hand
    in tests/test_sparse_condensed.py), ladder (2, 4): masked (bucket 2) through step 2, capacity 4 at steps 3 and
    4, capacity 2 from step 5 on."""
    network = _network("condensed")
    state = sparse_network.init(network, jax.random.key(0), jnp.ones((1, 16)))
    found = kept_counts.phases((network,), (state,))
    assert found.first_steps == (3, 5)
    assert found.buckets == [({"output": 2},), ({"output": 1},), ({"output": 0},)]
    assert [int(kept_counts.phase_of(found, jnp.int32(step))) for step in range(8)] == [0, 0, 0, 1, 1, 2, 2, 2]
    for phase, bucket in enumerate((2, 1, 0)):
        node = found.indices[phase][0]["output"]
        assert node["bucket"] == bucket and [indices.shape for indices in node["indices"]] == [(2, 2), (2, 4)]
    static = sparse_network.make_network(networks.MLP((), 2), optax.adam(1e-2), SparsityConfig(
        method="static", sparsity=0.875, distribution="uniform", structure="fan_in"), kernels="condensed")
    assert kept_counts.phases((static,), (sparse_network.init(static, jax.random.key(0), jnp.ones((1, 16))),)) is None


def test_a_slot_layers_capacity_is_a_prefix_of_its_slots_with_offsets_clamped_to_it():
    """Neuron 0 keeps inputs 1, 4, 9 and neuron 1 inputs 0, 2, 3 of 16 (k_t = 3) in a budget of 4 slots each."""
    mask = np.zeros((16, 2), bool)
    mask[[1, 4, 9], 0] = mask[[0, 2, 3], 1] = True
    stored = condensed.variable_fan_in(jnp.asarray(mask), 4)
    np.testing.assert_array_equal(stored["indices"], [[1, 4, 9, 0], [2, 3, 0, 0]])  # 6 slots of neurons, 2 of none
    np.testing.assert_array_equal(stored["offsets"], [0, 3, 6])
    at_four = condensed.at_capacity(stored, 4)
    np.testing.assert_array_equal(at_four["indices"], stored["indices"])
    np.testing.assert_array_equal(at_four["offsets"], [0, 3, 6])
    at_two = condensed.at_capacity(stored, 2)  # fewer slots than the kept inputs: no neuron reads past them
    np.testing.assert_array_equal(at_two["indices"], [[1, 4], [9, 0]])
    np.testing.assert_array_equal(at_two["offsets"], [0, 3, 4])
    rows = {"indices": jnp.asarray([[1, 4, 9, 0], [0, 2, 3, 5]])}  # kept inputs first, no offsets
    np.testing.assert_array_equal(condensed.at_capacity(rows, 3)["indices"], [[1, 4, 9], [0, 2, 3]])


@needs_compiler
def test_a_slot_layers_store_holds_its_kept_values_at_its_slots_and_is_current_while_they_fit():
    """The layer above (k_t = 3 in 4 slots per neuron, ladder (2, 4)), W[i, o] = 10 i + o: its slots hold W[1, 0],
    W[4, 0], W[9, 0], W[0, 1], W[2, 1], W[3, 1] and two zeros, and hold its current moments (6 kept <= 8 slots).
    Keeping inputs 0-4 of both neurons (10 > 8) they do not, and the offsets clamped to the slots, [0, 5, 8], keep
    neuron 1's last inputs out of the gather rather than past the slots."""
    mask = np.zeros((16, 2), bool)
    mask[[1, 4, 9], 0] = mask[[0, 2, 3], 1] = True
    kernel = 10 * jnp.arange(16.0)[:, None] + jnp.arange(2.0)
    layer = condensed.Ladder(16, 0.875, (2, 4), condensed.variable_fan_in(jnp.asarray(mask), 4))
    assert bool(kept_counts.slots_current(layer))
    np.testing.assert_array_equal(condensed_native.gather(kernel, **kept_counts.all_slots(layer)),
                                  [[10, 40, 90, 1], [21, 31, 0, 0]])
    wide = np.zeros((16, 2), bool)
    wide[:5] = True
    above = condensed.Ladder(16, 0.875, (2, 4), condensed.variable_fan_in(jnp.asarray(wide), 4))
    assert not bool(kept_counts.slots_current(above))
    np.testing.assert_array_equal(kept_counts.all_slots(above)["offsets"], [0, 5, 8])
    np.testing.assert_array_equal(condensed_native.gather(kernel, **kept_counts.all_slots(above)),
                                  [[0, 10, 20, 30], [40, 1, 11, 21]])


@needs_compiler
def test_native_prune_layers_store_slots_and_train_kept_values_at_a_capacity():
    """Under native kernels the layer's indices are slots with offsets (`condensed.variable_fan_in`) in the budget of
    the ladder's largest capacity: s_t = 0.9375 (1 - (1 - t/4)^3) gives k_t = 64, 64, 30, 12, 5, 4 at steps 0..5,
    so at ladder (4, 8, 16) masked through step 2, capacity 16 at step 3, 8 at step 4, 4 from step 5 on. In a phase at
    a capacity the layer trains its kept values on all its 16 slots per neuron (`kept_slot_layers`; the offsets say
    how many each neuron holds), in the masked one it does not."""
    network = _network("native", window=Window(update_period=1, update_start=0, update_end=4), sparsity=0.9375)
    state = sparse_network.init(network, jax.random.key(0), jnp.ones((1, 64)))
    assert set(state.indices["output"]) == {"indices", "offsets"}
    assert state.indices["output"]["indices"].shape == (2, 16)  # the largest of the ladder (4, 8, 16) at k = 4
    found = kept_counts.phases((network,), (state,))
    assert found.first_steps == (3, 4, 5)
    assert found.buckets == [({"output": 3},), ({"output": 2},), ({"output": 1},), ({"output": 0},)]
    trained, capacities = [], []
    for indices, (buckets,) in zip(found.indices, found.buckets):
        _, layers = kept_counts.kept_slot_layers(network, state, indices[0], buckets)
        trained.append(sorted(layers))
        capacities.append(layers["output"]["indices"].shape[-1] if layers else None)
    assert trained == [[], ["output"], ["output"], ["output"]] and capacities == [None, 16, 16, 16]
    masked = _network("masked")
    assert kept_counts.kept_slot_layers(masked, sparse_network.init(masked, jax.random.key(0), jnp.ones((1, 16))),
                                        {}, {}) == ({}, {})


@needs_compiler
def test_native_prune_steps_equal_masked_ones_through_every_phase():
    """36 AdamW steps with a clipped gradient norm, 2 seeds vmapped, pruning every 4 steps from 0 to 24 to 90%
    (k: 40 -> 4 and 64 -> 7): masked phases, each capacity of the ladder and the final count. Native kernels (kept
    values gathered at each phase's slots and written back between pruning steps) against masked, to 1e-4, and
    the outputs at the end."""
    x = jax.random.normal(jax.random.key(5), (2, 48, 40))
    window = Window(update_period=4, update_start=0, update_end=24)

    def run(kernels):
        network = _network(kernels, networks.MLP((64, 64), 3), window, sparsity=0.9)

        def train(x, key):
            state = sparse_network.init(network, key, x[:1])

            def step(state, step):
                loss = lambda params, indices: (jnp.mean(jnp.sin(sparse_network.apply(
                    network, params[0], x, indices=indices[0], step=step)) ** 2), 0.0)
                _, (state,) = sparse_network.joint_gradient_step((network,), loss, (state,), step,
                                                                 (jax.random.fold_in(key, step),), max_grad_norm=0.05)
                return state, None

            state, _ = jax.lax.scan(step, state, jnp.arange(36))
            return state, sparse_network.apply(network, state.params, x, indices=state.indices, step=36)

        program = jax.jit(jax.vmap(train))
        keys = jax.random.split(jax.random.key(6), 2)
        return program(x, keys), program.lower(x, keys).as_text()

    (native, native_outputs), native_program = run("native")
    (masked, masked_outputs), _ = run("masked")
    assert native_program.count(condensed_native.BACKWARD_KEPT) >= 1  # kept-value steps ran
    np.testing.assert_array_equal(native.opt_state.masks["dense_0"]["kernel"], masked.opt_state.masks["dense_0"]["kernel"])
    assert np.all(np.sum(np.asarray(native.opt_state.masks["dense_0"]["kernel"]), axis=-2) == 4)  # [seeds, in, out]
    network = _network("native", networks.MLP((64, 64), 3), window, sparsity=0.9)
    assert set(native.slots["values"]) == {"dense_0", "dense_1", "output"}  # the final counts live at the slots
    native_opt_state = jax.vmap(functools.partial(sparse_network.dense_opt_state, network))(native)
    for native_leaf, masked_leaf in zip(jax.tree.leaves((native.params, native_opt_state, native_outputs)),
                                        jax.tree.leaves((masked.params, masked.opt_state, masked_outputs))):
        np.testing.assert_allclose(native_leaf, masked_leaf, rtol=1e-4, atol=1e-5)
