"""What the runners need from an agent, and the config helpers every agent shares."""

from typing import Callable, NamedTuple

import flax.linen as nn
import ml_collections

from sparserl import networks
from sparserl.sparse import SparsityConfig
from sparserl.sparse.config import is_concrete


class Agent(NamedTuple):
    """Pure functions over an agent's TrainState (DESIGN contract 1); the runner vmaps them over seeds.

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


def network_module(network: ml_collections.ConfigDict, output_size: int, **overrides) -> nn.Module:
    """The flax module a network config describes: `kind` 'mlp' or 'cnn' (Nature CNN and its MinAtar variant)."""
    if network.kind == "mlp":
        return networks.MLP(
            tuple(network.hidden_sizes),
            output_size,
            activation=network.get("activation", "relu"),
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
    )


def sparsity_config(sparse: ml_collections.ConfigDict, total_updates: int, sparsity: float) -> SparsityConfig:
    """A SparsityConfig with the method's schedule taken from its own block, `sparse.<method>`.

    Each of `sparse.set`, `sparse.rigl` and `sparse.prune` holds its
    `update_period` (prune: the pruning frequency), `start_fraction` and
    `end_fraction` of the run's gradient updates (prune: Zhu & Gupta's t0 and
    t1; SET/RigL change the topology in [start, end)), and for SET/RigL the
    initial `drop_fraction`. The configs take these from Graesser et al.
    2022's gin files, named beside each value. Static and dense networks
    never change their masks and use no schedule.
    """
    method = "dense" if is_concrete(sparsity) and sparsity == 0.0 else sparse.method  # a traced level is > 0
    schedule = {}
    if method in sparse:
        block = sparse[method]
        start = int(block.start_fraction * total_updates)
        schedule = dict(
            update_period=block.update_period,
            update_start=start,
            update_end=max(start + 1, int(block.end_fraction * total_updates)),
            drop_fraction=block.get("drop_fraction", 0.0),
        )
    return SparsityConfig(
        method=method,
        sparsity=sparsity,
        distribution=sparse.distribution,
        dense_first_layer=sparse.dense_first_layer,
        dense_last_layer=sparse.dense_last_layer,
        **schedule,
    )


def network_sparsity(sparse: ml_collections.ConfigDict, network: str) -> float:
    """`sparse.<network>_sparsity` when set (SAC, PPO: 'actor', 'critic'), else `sparse.sparsity`."""
    value = sparse.get(f"{network}_sparsity")
    return sparse.sparsity if value is None else value


def off_policy_updates(config: ml_collections.ConfigDict) -> int:
    """Gradient updates in an off-policy run: `gradient_steps` every `train_every` env steps after `learning_starts`.

    The replay ratio (updates per env step, Sokar et al. 2023; D'Oro et al. 2023) is
    gradient_steps / train_every. Raises ValueError (reported as bad input) when `gradient_steps` < 1.
    """
    if config.gradient_steps < 1:
        raise ValueError(f"--config.gradient_steps: must be >= 1, got {config.gradient_steps}")
    return max(1, (config.steps - config.learning_starts) // config.train_every) * config.gradient_steps
