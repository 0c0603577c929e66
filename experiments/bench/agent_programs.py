"""An agent's programs on random data, for rows that time one call: the agent of a config, replay-shaped and
rollout-shaped random batches, and the jitted seed-vmapped update."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sparserl import envs, loop
from sparserl.agent_contract import Agent, agent_module
from sparserl.batches import Rollout, Transition


def make_agent(config: ml_collections.ConfigDict) -> tuple[Agent, envs.EnvSpec]:
    """(the agent of `config`, its env's spec), as `agents/<config.agent>.py` makes it."""
    env_spec = envs.env_spec(config.env)
    return agent_module(config.agent).make(config, env_spec), env_spec


def random_transitions(env_spec: envs.EnvSpec, batch_size: int, seed: int) -> Transition:
    """A replay-shaped batch [1 seed, batch, ...] of random transitions for `env_spec`."""
    rng = np.random.default_rng(seed)

    def observations():
        shape = (1, batch_size, *env_spec.observation_shape)
        if env_spec.observation_dtype == np.uint8:
            return rng.integers(0, 256, shape, dtype=np.uint8)
        return rng.normal(size=shape).astype(np.float32)

    if env_spec.discrete:
        actions = rng.integers(0, env_spec.num_actions, (1, batch_size)).astype(np.int32)
    else:
        shape = (1, batch_size, env_spec.num_actions)
        actions = rng.uniform(env_spec.action_low, env_spec.action_high, shape).astype(np.float32)
    return Transition(observations(), actions, rng.normal(size=(1, batch_size)).astype(np.float32), observations(),
                      rng.uniform(size=(1, batch_size)) < 0.01)


def random_rollout(env_spec: envs.EnvSpec, steps: int, num_envs: int, seed: int) -> Rollout:
    """A `Rollout` [1 seed, steps, num_envs, ...] of random data."""
    rng = np.random.default_rng(seed)
    shape = (1, steps, num_envs)
    observation = rng.normal(size=(*shape, *env_spec.observation_shape)).astype(np.float32)
    if env_spec.discrete:
        action = rng.integers(0, env_spec.num_actions, shape).astype(np.int32)
    else:
        action = rng.normal(size=(*shape, env_spec.num_actions)).astype(np.float32)
    return Rollout(observation, action, rng.normal(size=shape).astype(np.float32), rng.uniform(size=shape) < 0.01,
                   rng.uniform(size=shape) < 0.001, rng.normal(size=observation.shape).astype(np.float32))


def seed_update(agent: Agent, env_spec: envs.EnvSpec,
                config: ml_collections.ConfigDict) -> tuple[Callable, Any, Transition, jax.Array]:
    """(jitted seed-vmapped update, one seed's state, a random batch, keys): call `update(state, batch, keys)`."""
    state = loop.init_states(agent, [0])
    axes = loop.seed_axes(state)
    update = jax.jit(jax.vmap(agent.update, in_axes=(axes, 0, 0), out_axes=(axes, 0)))
    return update, state, random_transitions(env_spec, config.batch_size, seed=1), loop.seed_keys([1])


def donated_update_call(agent: Agent, env_spec: envs.EnvSpec, config: ml_collections.ConfigDict,
                        first_step: int = 0) -> Callable[[], Any]:
    """A call of one seed-vmapped update that donates the state and keeps the state it returns, as the training
    loops run updates (`runner.OffPolicyStep` donates; the compiled loop carries it): no copy of the unchanged parts
    of the state into new buffers, which a call that keeps its input state pays for every leaf. The step counter
    advances with each call, so topology updates run on their schedule. Its batch: random transitions (DQN, SAC)
    or a random rollout (PPO, a config with `rollout_steps`). `first_step`: the step counter of the first call."""
    state = loop.init_states(agent, [0])
    state = state.replace(step=jnp.full_like(state.step, first_step))
    axes = loop.seed_axes(state)
    update = jax.jit(jax.vmap(agent.update, in_axes=(axes, 0, 0), out_axes=(axes, 0)), donate_argnums=(0,))
    if "rollout_steps" in config:
        batch = random_rollout(env_spec, config.rollout_steps, config.num_envs, seed=1)
    else:
        batch = random_transitions(env_spec, config.batch_size, seed=1)
    keys = loop.seed_keys([1])
    held = {"state": state}

    def call():
        held["state"], metrics = update(held["state"], batch, keys)
        return metrics

    return call
