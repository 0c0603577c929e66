"""sparserl.agent_networks: measure and recycle over an agent's (network, state field) pairs equal the per-network
calls; the target follows the online network only when asked; the remedy's schedule and plan; networks from a
config."""

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from sparserl import dormancy, networks, remedies, sparse_network
from sparserl.agent_networks import AgentNetwork, AgentNetworks, network_of
from sparserl.configs import sac as sac_config
from sparserl.sparse import SparsityConfig


class TwoNetworkState(flax.struct.PyTreeNode):
    """A stand-in TrainState: two networks, the second with a target, and the remedy's counts."""

    first: sparse_network.NetworkState
    second: sparse_network.NetworkState
    second_target: dict
    step: jax.Array
    recycled: dormancy.RecycleCounts


def _network(name, outputs):
    return sparse_network.make_network(networks.MLP((16, 16), outputs), optax.adam(1e-3),
                                       SparsityConfig(method="static", sparsity=0.5), name)


FIRST, SECOND = _network("actor", 2), _network("critic", 1)


def _redo(enabled=True, reset_target=False, tau=0.6, remedy="redo"):
    return ml_collections.ConfigDict(dict(enabled=enabled, remedy=remedy, tau=tau, period=2, reset_target=reset_target,
                                          batch_size=8, shrink=0.8, perturb=0.2, reset_layers=1))


def _agent_networks(redo):
    """The first network reads the observations, the second observations and actions."""
    return AgentNetworks([AgentNetwork(FIRST, "first"), AgentNetwork(SECOND, "second", target_field="second_target")],
                         inputs=lambda state, batch: [(batch["observation"],),
                                                      (jnp.concatenate([batch["observation"], batch["action"]], -1),)],
                         redo=redo)


def _state():
    first = sparse_network.init(FIRST, jax.random.key(0), jnp.zeros((1, 4)))
    second = sparse_network.init(SECOND, jax.random.key(1), jnp.zeros((1, 5)))
    target = jax.tree.map(lambda leaf: leaf + 1.0, second.params)
    return TwoNetworkState(first, second, target, jnp.asarray(2, jnp.int32), THREE)


THREE = dormancy.RecycleCounts(jnp.asarray(3, jnp.int32), jnp.asarray(3.0), jnp.asarray(3.0))


def _plus(counts, more):
    return jax.tree.map(lambda a, b: float(a + b), counts, more)


def _batch():
    return {"observation": jax.random.normal(jax.random.key(2), (32, 4)),
            "action": jax.random.normal(jax.random.key(3), (32, 1))}


def _assert_trees_equal(a, b):
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_measure_is_every_network_then_the_recycled_count():
    state, batch = _state(), _batch()
    measured = _agent_networks(_redo()).measure(state, batch)
    expected = {**sparse_network.metrics(FIRST, state.first, batch["observation"]),
                **sparse_network.metrics(SECOND, state.second, jnp.concatenate([batch["observation"], batch["action"]], -1)),
                "recycle/neurons": 3, "recycle/weights": 3.0, "recycle/distance": 3.0}
    assert list(measured) == list(expected)
    _assert_trees_equal(measured, expected)
    assert not any(name.startswith("recycle/") for name in _agent_networks(_redo(enabled=False)).measure(state, batch))


@pytest.mark.parametrize("reset_target", [False, True])
def test_recycle_is_each_network_recycled_with_its_own_key(reset_target):
    state, batch, key = _state(), _batch(), jax.random.key(4)
    recycled, count = _agent_networks(_redo(reset_target=reset_target)).recycle(state, batch, key)
    first_key, second_key = jax.random.split(key)
    first, first_result = remedies.apply(_redo(), FIRST, state.first, first_key, (batch["observation"],), None)
    second, second_result = remedies.apply(_redo(), SECOND, state.second, second_key,
                                           (jnp.concatenate([batch["observation"], batch["action"]], -1),), None)
    _assert_trees_equal((recycled.first, recycled.second), (first, second))
    assert int(count.neurons) == int(first_result.num_recycled) + int(second_result.num_recycled) > 0
    touched = jax.tree.leaves((first_result.touched, second_result.touched))
    assert float(count.weights) == sum(int(np.sum(leaf)) for leaf in touched) > 0
    moved = [np.asarray(new) - np.asarray(old) for old, new in zip(jax.tree.leaves((state.first.params, state.second.params)),
                                                                  jax.tree.leaves((first.params, second.params)))]
    np.testing.assert_allclose(float(count.distance), np.sqrt(sum(np.sum(d ** 2) for d in moved)), rtol=1e-5)
    expected_target = (dormancy.follow_online(state.second_target, second.params, second_result.touched)
                       if reset_target else state.second_target)
    _assert_trees_equal(recycled.second_target, expected_target)
    assert reset_target == any(bool(jnp.any(a != b)) for a, b in zip(jax.tree.leaves(recycled.second_target),
                                                                      jax.tree.leaves(state.second_target)))
    assert recycled.recycled is state.recycled  # the counts are recycle_when_due's to keep


def test_an_only_network_is_recycled_with_the_key_itself():
    state, batch, key = _state(), _batch(), jax.random.key(4)
    only = AgentNetworks([AgentNetwork(FIRST, "first")], inputs=lambda state, batch: [(batch["observation"],)],
                         redo=_redo())
    recycled, count = only.recycle(state, batch, key)
    first, result = remedies.apply(_redo(), FIRST, state.first, key, (batch["observation"],), None)
    _assert_trees_equal(recycled.first, first)
    assert int(count.neurons) == int(result.num_recycled)
    _assert_trees_equal((recycled.second, recycled.second_target), (state.second, state.second_target))


def test_recycle_when_due_follows_the_schedule_and_the_plan():
    state, batch, key = _state(), _batch(), jax.random.key(4)
    agent_networks = _agent_networks(_redo())
    assert agent_networks.schedule == dormancy.RecycleSchedule(period=2)
    _, count = agent_networks.recycle(state, batch, key)
    due = agent_networks.recycle_when_due(state, lambda _: batch, key)  # step 2: due
    # The same neurons and entries (recycle_when_due draws the fresh values with a key split from `key`).
    assert _plus(THREE, count)[:2] == tuple(map(float, due.recycled[:2])) and float(due.recycled.distance) > 3.0
    not_due = agent_networks.recycle_when_due(state.replace(step=jnp.asarray(3, jnp.int32)), lambda _: batch, key)
    assert not_due.recycled == THREE
    assert agent_networks.recycle_when_due(state, lambda _: batch, key, False).recycled == THREE
    assert [agent_networks.plan(*updates).recycle for updates in ((2, 1), (3, 1), (1, 4))] == [True, False, None]
    off = _agent_networks(_redo(enabled=False))
    assert off.schedule is None and off.plan(2, 1).recycle is False
    assert off.recycle_when_due(state, lambda _: batch, key) is state


def test_recycle_from_replay_samples_redo_batch_size_transitions():
    state, key = _state(), jax.random.key(4)
    sizes = []

    def sample(sample_key, size):
        sizes.append(size)
        return _batch()

    agent_networks = _agent_networks(_redo())
    due = agent_networks.plan(2, 1)  # ReDo is due on update 2
    recycled = agent_networks.recycle_from_replay(state, sample, key, due)
    assert sizes == [8] and int(recycled.recycled.neurons) > 3
    with pytest.raises(ValueError, match="ReDo samples its batch from the replay"):
        agent_networks.recycle_from_replay(state, None, key, due)


def test_network_of_takes_the_sparsity_the_config_gives_each_network():
    config = sac_config.get_config()
    config.sparse.sparsity, config.sparse.actor_sparsity, config.sparse.sparse_init_rescale = 0.5, 0.8, False
    module = networks.MLP((8,), 2)
    actor = network_of(config, module, optax.adam(1e-3), 100, "actor")
    critic = network_of(config, module, optax.adam(1e-3), 100, "critic")
    only = network_of(config, module, optax.adam(1e-3), 100)
    assert (actor.optimizer.config.sparsity, critic.optimizer.config.sparsity, only.optimizer.config.sparsity) == (0.8, 0.5, 0.5)
    assert (actor.name, only.name, actor.sparse_init_rescale, only.kernels) == ("actor", "", False, "masked")
