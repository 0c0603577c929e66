"""Uniform experience replay that lives on the device (Mnih et al. 2015, "experience replay").

A pure, functional ring buffer: `add` writes one transition and `sample`
draws a uniform batch, both jittable. The runner vmaps them over seeds, so the
stored arrays carry a leading seed axis (docs/design.md contract 1), and donates the
buffer to the jitted step so that adding a transition writes in place.
Observations keep their dtype: Atari frames stay uint8.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Transition(NamedTuple):
    """One step (s, a, r, s', terminated). For a time-limit truncation, s' is the final observation and terminated is False."""

    observation: jax.Array
    action: jax.Array
    reward: jax.Array
    next_observation: jax.Array
    terminated: jax.Array


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


def add(replay: ReplayState, transition: Transition) -> ReplayState:
    """Writes one transition at the current position, overwriting the oldest when full."""
    storage = jax.tree.map(
        lambda stored, value: stored.at[replay.position].set(value.astype(stored.dtype)), replay.storage, transition
    )
    size = replay.storage.reward.shape[0]
    return ReplayState(storage, (replay.position + 1) % size, jnp.minimum(replay.size + 1, size))


def sample(replay: ReplayState, key: jax.Array, batch_size: int) -> Transition:
    """A batch of transitions drawn uniformly, with replacement, from the stored ones."""
    indices = jax.random.randint(key, (batch_size,), 0, jnp.maximum(replay.size, 1))
    return jax.tree.map(lambda stored: stored[indices], replay.storage)
