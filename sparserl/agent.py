"""What the runners need from an agent, the registry of agents, and the config helpers every agent shares."""

import importlib
from types import ModuleType
from typing import Callable, NamedTuple

import flax.linen as nn
import ml_collections

from sparserl import networks
from sparserl.sparse import SparsityConfig, condensed, condensed_native
from sparserl.sparse.config import is_concrete
from sparserl.sparse.topology import get_topology


class Agent(NamedTuple):
    """Pure functions over an agent's TrainState (docs/design.md contract 1); the runner vmaps them over seeds.

    - `init(key) -> state`
    - `act(state, observations, key, env_step, explore) -> actions` (a batch of observations)
    - `update(state, batch, key) -> (state, metrics)`: one gradient step (PPO: a whole rollout's), sparse
      topology updates and ReDo on their schedules included. Off-policy agents take `update(state, batch, key,
      sample, plan)`: `sample(key, n)` draws n more transitions from the replay (ReDo's batch) and `plan` is
      `plan(first_update, count)` for the updates this call belongs to, or None
    - `measure(state, batch) -> metrics`: sparsity and dormant fractions of every network (and `redo/recycled`)
    - `recycle(state, batch, key) -> (state, num_recycled)`: ReDo on every network, as `update` runs it
    - `plan(first_update, count) -> hashable`: what of the scheduled work falls on updates
      first_update..first_update + count - 1, as a static value that `update` specialises its program on (a
      loop that knows the update numbers on the host compiles one program per value; see
      `dormancy.recycle_when_due`)
    Every state has `rng` (per seed), `step` (gradient updates, shared by all seeds) and `recycled` (ReDo's count)
    fields.
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


NETWORK_KINDS = ("mlp", "cnn")


def network_module(network: ml_collections.ConfigDict, output_size: int, **overrides) -> nn.Module:
    """The flax module a network config describes: `kind` 'mlp' or 'cnn' (Nature CNN and its MinAtar variant).

    Both kinds take `activation` and the `overrides` (`hidden_kernel_init`, `output_kernel_init`). Raises
    ValueError (reported as bad input) for an unknown kind or activation.
    """
    if network.kind not in NETWORK_KINDS:
        raise ValueError(f"--config.network.kind: unknown kind {network.kind!r}; choose one of {', '.join(NETWORK_KINDS)}")
    if network.activation not in networks.ACTIVATION_FUNCTIONS:
        raise ValueError(f"--config.network.activation: unknown activation {network.activation!r}; "
                         f"choose one of {', '.join(networks.ACTIVATION_FUNCTIONS)}")
    if network.kind == "mlp":
        return networks.MLP(
            tuple(network.hidden_sizes),
            output_size,
            activation=network.activation,
            width_multiplier=network.width_multiplier,
            **overrides,
        )
    return networks.NatureCNN(
        output_size,
        conv_features=tuple(network.conv_features),
        kernel_sizes=tuple(network.kernel_sizes),
        strides=tuple(network.strides),
        dense_sizes=tuple(network.dense_sizes),
        width_multiplier=network.width_multiplier,
        activation=network.activation,
        **overrides,
    )


def sparsity_config(sparse: ml_collections.ConfigDict, total_updates: int, sparsity: float) -> SparsityConfig:
    """A SparsityConfig with the method's schedule and options read by the method itself from its block, `sparse.<method>`.

    Each topology names the fields of its block it reads (`Topology.config_fields`):
    SET, RigL and SRigL their `update_period`, `start_fraction` and
    `end_fraction` of the run's gradient updates and initial `drop_fraction`;
    prune the same window as Zhu & Gupta's t0 and t1 and `update_period` as its
    frequency; a method's own options (SRigL's `ablation_threshold`, SR-STE's
    `decay`) likewise. The configs take these from the papers and Graesser et
    al. 2022's gin files, named beside each value. Static and dense networks
    never change their masks and use no schedule. `sparse.structure` (default
    unstructured) and `sparse.dense_layers` (path patterns, default none) apply
    to every method.
    """
    method = "dense" if is_concrete(sparsity) and sparsity == 0.0 else sparse.method  # a traced level is > 0
    topology = get_topology(method)
    return SparsityConfig(
        method=method,
        sparsity=sparsity,
        distribution=sparse.distribution,
        dense_first_layer=sparse.dense_first_layer,
        dense_last_layer=sparse.dense_last_layer,
        structure=topology.structure_for(sparse.get("structure", "unstructured")),
        dense_layers=tuple(sparse.get("dense_layers", ())),
        **topology.config_fields(sparse.get(method), total_updates),
    )


# Methods under which every neuron of a fan_in layer keeps exactly k inputs for the whole run.
CONSTANT_FAN_IN_METHODS = ("static", "set", "rigl")


def kernels(sparse: ml_collections.ConfigDict) -> str:
    """The kernels of a network under `sparse`: `sparse.kernels` ("masked", "condensed", "auto", "native"), which
    only runs condensed where every neuron keeps the same fan-in all along: `sparse.structure` "fan_in", a
    concrete sparsity level, and static, SET or RigL (prune shrinks the fan-in over training; SRigL's neuron
    ablation gives the surviving neurons more inputs than k).

    "auto" falls back to "masked" elsewhere; "condensed" and "native" there raise ValueError (reported as bad
    input), and so does "native" where it cannot run (`condensed_native.unavailable_reason`: no g++, or not a CPU).
    """
    chosen = condensed.check_kernels(sparse.get("kernels", "masked"))
    constant_fan_in = (sparse.get("structure", "unstructured") == "fan_in" and sparse.method in CONSTANT_FAN_IN_METHODS
                       and is_concrete(sparse.sparsity))
    if chosen in ("condensed", "native") and not constant_fan_in:
        raise ValueError(f"--config.sparse.kernels: {chosen} needs constant fan-in masks "
                         f"(--config.sparse.structure=fan_in, --method one of {', '.join(CONSTANT_FAN_IN_METHODS)})")
    if chosen == "native" and (reason := condensed_native.unavailable_reason()):
        raise ValueError(f"--config.sparse.kernels: {reason}; choose masked, condensed or auto")
    return chosen if constant_fan_in else "masked"


def network_sparsity(sparse: ml_collections.ConfigDict, network: str) -> float:
    """`sparse.<network>_sparsity` when set (SAC, PPO: 'actor', 'critic'), else `sparse.sparsity`."""
    value = sparse.get(f"{network}_sparsity")
    return sparse.sparsity if value is None else value


def off_policy_updates(config: ml_collections.ConfigDict) -> int:
    """Gradient updates in an off-policy run: `gradient_steps` every `train_every` env steps after `learning_starts`.

    The replay ratio (updates per env step, Sokar et al. 2023; D'Oro et al. 2023) is
    gradient_steps / train_every. Raises ValueError (reported as bad input) when `gradient_steps` < 1, or unless
    `num_envs` (envs per seed, stepped together) divides `train_every` or is a multiple of it, so that every step
    of the envs that learns takes the same number of updates (`loop.updates_per_learning_step`).
    """
    if config.gradient_steps < 1:
        raise ValueError(f"--config.gradient_steps: must be >= 1, got {config.gradient_steps}")
    if config.num_envs < 1:
        raise ValueError(f"--config.num_envs: must be >= 1, got {config.num_envs}")
    if config.train_every % config.num_envs and config.num_envs % config.train_every:
        raise ValueError(f"--config.num_envs: {config.num_envs} must divide --config.train_every "
                         f"({config.train_every}) or be a multiple of it")
    return max(1, (config.steps - config.learning_starts) // config.train_every) * config.gradient_steps
