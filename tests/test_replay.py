import jax
import jax.numpy as jnp
import numpy as np

from sparserl import replay


def _transition(value: int):
    return replay.Transition(
        observation=jnp.full((2,), value, jnp.uint8),
        action=jnp.asarray(value, jnp.int32),
        reward=jnp.asarray(value, jnp.float32),
        next_observation=jnp.full((2,), value + 1, jnp.uint8),
        terminated=jnp.asarray(value % 2 == 0),
    )


def _step(*values: int):
    """The transitions of one step of len(values) envs, arrays [envs, ...]."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *map(_transition, values))


def test_add_wraps_around_and_keeps_dtypes():
    buffer = replay.init(3, (2,), np.uint8)
    for value in range(5):
        buffer = replay.add(buffer, _step(value))
    assert int(buffer.size) == 3 and int(buffer.position) == 2
    np.testing.assert_array_equal(buffer.storage.action, [3, 4, 2])
    assert buffer.storage.observation.dtype == jnp.uint8
    np.testing.assert_array_equal(buffer.storage.next_observation[:, 0], [4, 5, 3])
    np.testing.assert_array_equal(buffer.storage.terminated, [False, True, True])


def test_sample_draws_only_stored_transitions():
    buffer = replay.init(100, (2,), np.uint8)
    for value in range(1, 4):
        buffer = replay.add(buffer, _step(value))
    batch = replay.sample(buffer, jax.random.key(0), 256)
    assert set(np.asarray(batch.action).tolist()) == {1, 2, 3}
    np.testing.assert_array_equal(batch.reward, batch.action.astype(np.float32))


def test_vmapped_buffers_are_independent_per_seed():
    buffers = jax.vmap(lambda _: replay.init(4, (2,), np.uint8))(jnp.arange(3))
    transitions = jax.vmap(lambda value: _step(value))(jnp.arange(3))
    buffers = jax.vmap(replay.add)(buffers, transitions)
    assert buffers.storage.observation.shape == (3, 4, 2)
    np.testing.assert_array_equal(buffers.storage.action[:, 0], [0, 1, 2])
    np.testing.assert_array_equal(buffers.size, [1, 1, 1])


def test_a_step_of_several_envs_is_stored_in_env_order_and_wraps_around():
    """Two envs per step in a buffer of 3: the positions wrap inside a step (a scatter); in a buffer of 4 they never
    do (a contiguous slice). Both keep the env order and the oldest-first overwrite."""
    for capacity, actions, position in ((3, [3, 4, 5], 0), (4, [4, 5, 2, 3], 2)):
        buffer = replay.init(capacity, (2,), np.uint8)
        for first in (0, 2, 4):
            buffer = replay.add(buffer, _step(first, first + 1))
        np.testing.assert_array_equal(buffer.storage.action, actions)
        assert int(buffer.size) == capacity and int(buffer.position) == position
        np.testing.assert_array_equal(buffer.storage.next_observation[:, 0], np.asarray(actions) + 1)
