"""Uniform experience replay that lives on the device (Mnih et al. 2015, "experience replay").

A pure, functional ring buffer: `add` writes one step's transitions and `sample`
draws a uniform batch, both jittable. The runner vmaps them over seeds, so the
stored arrays carry a leading seed axis (docs/design.md contract 1), and donates the
buffer to the jitted step so that adding a transition writes in place.
Observations keep their dtype: Atari frames stay uint8.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sparserl.batches import Transition


class ReplayState(NamedTuple):
    storage: Transition
    position: jax.Array  # next slot to write
    size: jax.Array  # number of stored transitions


def init(capacity: int, observation_shape, observation_dtype, action_shape=(), action_dtype=jnp.int32) -> ReplayState:
    observation_dtype = np.dtype(observation_dtype)
    storage = Transition(
        observation=jnp.zeros((capacity, *observation_shape), observation_dtype),
        action=jnp.zeros((capacity, *action_shape), action_dtype),
        reward=jnp.zeros((capacity,), jnp.float32),
        next_observation=jnp.zeros((capacity, *observation_shape), observation_dtype),
        terminated=jnp.zeros((capacity,), bool),
    )
    return ReplayState(storage, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))


def add(replay: ReplayState, transitions: Transition) -> ReplayState:
    """Writes a batch of transitions (arrays [n, ...]: one step of a seed's n envs) at the next n positions, in
    order, overwriting the oldest when full. Where n divides the capacity the n positions never wrap around, and
    the write is one contiguous slice (a cheaper program than a scatter)."""
    size = replay.storage.reward.shape[0]
    count = transitions.reward.shape[0]
    if size % count == 0:
        write = lambda stored, values: jax.lax.dynamic_update_slice_in_dim(stored, values, replay.position, axis=0)  # noqa: E731
    else:
        positions = (replay.position + jnp.arange(count)) % size
        write = lambda stored, values: stored.at[positions].set(values)  # noqa: E731
    storage = jax.tree.map(lambda stored, values: write(stored, values.astype(stored.dtype)), replay.storage, transitions)
    return ReplayState(storage, (replay.position + count) % size, jnp.minimum(replay.size + count, size))


def sample(replay: ReplayState, key: jax.Array, batch_size: int) -> Transition:
    """A batch of transitions drawn uniformly, with replacement, from the stored ones."""
    indices = jax.random.randint(key, (batch_size,), 0, jnp.maximum(replay.size, 1))
    return jax.tree.map(lambda stored: stored[indices], replay.storage)
