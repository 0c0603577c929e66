"""The agent contract (what the runners need from an agent) and the registry of agents by name.

The config helpers every agent shares (`network_module`, `sparsity_config`, ...) live with the config, in
`sparserl.configs.base`."""

import importlib
from types import ModuleType
from typing import Callable, NamedTuple



class Agent(NamedTuple):
    """Pure functions over an agent's TrainState (docs/design.md contract 1); the runner vmaps them over seeds.

    - `init(key) -> state`
    - `act(state, observations, key, env_step, explore) -> actions` (a batch of observations)
    - `update(state, batch, key) -> (state, metrics)`: one gradient step (PPO: a whole rollout's), sparse
      topology updates and ReDo on their schedules included. Off-policy agents take `update(state, batch, key,
      sample, plan)`: `sample(key, n)` draws n more transitions from the replay (ReDo's batch) and `plan` is
      `plan(first_update, count)` for the updates this call belongs to, or None
    - `measure(state, batch) -> metrics`: sparsity, dormant fractions and the plasticity measures of every network
      (and `recycle/...` when a remedy runs)
    - `recycle(state, batch, key) -> (state, dormancy.RecycleCounts)`: the remedy (`redo.remedy`, ReDo by default)
      on every network, as `update` runs it
    - `plan(first_update, count) -> hashable`: what of the scheduled work falls on updates
      first_update..first_update + count - 1, as a static value that `update` specialises its program on (a
      loop that knows the update numbers on the host compiles one program per value; see
      `dormancy.recycle_when_due`)
    Every state has `rng` (per seed), `step` (gradient updates, shared by all seeds) and `recycled` (the
    remedy's `dormancy.RecycleCounts`) fields.
    """

    init: Callable
    act: Callable
    update: Callable
    measure: Callable
    recycle: Callable
    plan: Callable = lambda first_update, count: None


AGENTS = ("dqn", "sac", "ppo")
"""The agents, by name: each has `agents/<name>.py` (`make(config, env_spec)`, `LOOP`) and `configs/<name>.py`
(`get_config(preset=None)`, `PRESETS`). Adding an agent is adding its name here and those two files."""


def agent_module(name: str) -> ModuleType:
    """`agents/<name>.py` of an agent in `AGENTS`."""
    return importlib.import_module(f"sparserl.agents.{name}")


def config_module(name: str) -> ModuleType:
    """`configs/<name>.py` of an agent in `AGENTS`."""
    return importlib.import_module(f"sparserl.configs.{name}")
