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


def test_add_wraps_around_and_keeps_dtypes():
    buffer = replay.init(3, (2,), np.uint8)
    for value in range(5):
        buffer = replay.add(buffer, _transition(value))
    assert int(buffer.size) == 3 and int(buffer.position) == 2
    np.testing.assert_array_equal(buffer.storage.action, [3, 4, 2])
    assert buffer.storage.observation.dtype == jnp.uint8
    np.testing.assert_array_equal(buffer.storage.next_observation[:, 0], [4, 5, 3])
    np.testing.assert_array_equal(buffer.storage.terminated, [False, True, True])


def test_sample_draws_only_stored_transitions():
    buffer = replay.init(100, (2,), np.uint8)
    for value in range(1, 4):
        buffer = replay.add(buffer, _transition(value))
    batch = replay.sample(buffer, jax.random.key(0), 256)
    assert set(np.asarray(batch.action).tolist()) == {1, 2, 3}
    np.testing.assert_array_equal(batch.reward, batch.action.astype(np.float32))


def test_vmapped_buffers_are_independent_per_seed():
    buffers = jax.vmap(lambda _: replay.init(4, (2,), np.uint8))(jnp.arange(3))
    transitions = jax.vmap(_transition)(jnp.arange(3))
    buffers = jax.vmap(replay.add)(buffers, transitions)
    assert buffers.storage.observation.shape == (3, 4, 2)
    np.testing.assert_array_equal(buffers.storage.action[:, 0], [0, 1, 2])
    np.testing.assert_array_equal(buffers.size, [1, 1, 1])
