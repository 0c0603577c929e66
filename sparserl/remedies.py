"""Remedies for lost plasticity beside ReDo, chosen by `redo.remedy` (`--recycle=redo|regrama|shrink_perturb|reset`).

Every remedy runs on the schedule of the `redo` block (`schedule_of`: every `redo.period` gradient steps, the
remedy's `configs.base.REMEDY_PERIODS` entry when unset) through `dormancy.recycle_when_due`, on one network at a time
(`apply`), and every remedy alike:
- keeps the masks: a new value lands only where the mask is True, so a pruned weight stays exactly 0 and the
  structure (`fan_in`, N:M), which lives in the masks, holds;
- zeroes the optimizer moments (Adam's mu and nu) of exactly the entries it rewrites, as ReDo does
  (Sokar et al. 2023, Algorithm 1); the step count is kept;
- draws its new values from a fresh init of the network at the sparse fan-in scale of the current masks, as the
  network's own init draws them (`sparse_network.fresh_params`);
- is pure, jittable and vmappable over seeds (docs/design.md contract 1).

The remedies:
- `redo`: ReDo (Sokar et al. 2023, Algorithm 1; `dormancy.recycle`), neurons scored by their activations (eq. 1).
- `regrama`: ReGraMa (Liu et al. 2025, "Measure gradients, not activations!", section 4): ReDo's recycling of the
  neurons whose GraMa score (`plasticity.gradient_scores`, the gradient of the agent's own loss on the batch) is
  <= tau.
- `shrink_perturb`: Shrink & Perturb (Ash & Adams 2020, "On warm-starting neural network training", section 4):
  theta <- lambda * theta + sigma * epsilon on every kept weight and bias of the network's layers, epsilon a fresh
  initialisation;
  `redo.shrink` = lambda = 0.8 and `redo.perturb` = sigma = 0.2: theta <- 0.8 theta + 0.2 phi, the interpolation
  towards a fresh init phi that D'Oro et al. 2023 ("Sample-efficient RL by breaking the replay ratio barrier",
  SR-SPR) apply to the encoder at each reset, as we read the paper (not checked against their code).
- `reset`: reset the last `redo.reset_layers` layers of every chain of the network (Nikishin et al. 2022, "The
  primacy bias in deep RL", section 4) to a fresh initialisation; k = 1, the output layer, by default (their
  SAC resets every layer: set k to the depth).

Periods (`configs.base.REMEDY_PERIODS`, gradient steps): ReDo and ReGraMa every 1,000 (Sokar et al. 2023; Liu et al. 2025 keep
ReDo's schedule); Shrink & Perturb and resets every 20,000, the period of Nikishin et al. 2022's SPR resets (section
4), far longer than ReDo's because they rewrite whole layers.
"""

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections

from sparserl import dormancy, kept_counts, plasticity, sparse_network
from sparserl.configs.base import REMEDIES, remedy_period
from sparserl.errors import ConfigError
from sparserl.sparse import zero_moments
from sparserl.sparse.distributions import leaf_name

def schedule_of(redo: ml_collections.ConfigDict) -> dormancy.RecycleSchedule | None:
    """When the remedy runs: every `remedy_period(redo)` gradient steps; None when `redo.enabled` is off."""
    return dormancy.RecycleSchedule(period=remedy_period(redo)) if redo.enabled else None


def check(redo: ml_collections.ConfigDict, chains: Sequence[Sequence[str]], has_loss: bool, network: str) -> None:
    """A ConfigError naming the field when the `redo` block asks a network for what it cannot do."""
    if redo.remedy not in REMEDIES:
        raise ConfigError("redo.remedy", f"unknown remedy {redo.remedy!r}; choose one of {', '.join(REMEDIES)}")
    if redo.remedy == "regrama" and not has_loss:
        raise ConfigError("redo.remedy", f"regrama scores by the gradient of a loss the network {network!r} does not declare")
    depth = min(len(chain) for chain in chains)
    if redo.remedy == "reset" and not 1 <= redo.reset_layers <= depth:
        raise ConfigError("redo.reset_layers", f"must be in [1, {depth}] (the layers of {network or 'the network'}), "
                                               f"got {redo.reset_layers}")


def shrink_and_perturb(params: Any, opt_state: Any, fresh: Any, shrink: float, perturb: float,
                       layers: Sequence[str]) -> dormancy.RecycleResult:
    """theta <- shrink * theta + perturb * fresh on every kept kernel entry and bias of `layers` (Ash & Adams 2020);
    the moments of those entries are zeroed. No neuron is re-initialised: `num_recycled` is 0."""
    touched = _kept_in(layers, opt_state.masks)
    new_params = jax.tree.map(lambda weights, new, rewrite: jnp.where(rewrite, shrink * weights + perturb * new, weights),
                              params, fresh, touched)
    inner = zero_moments(opt_state.inner, params, touched)
    return dormancy.RecycleResult(new_params, opt_state._replace(inner=inner), touched, jnp.zeros((), jnp.int32))


def _kept_in(layers: Sequence[str], masks: Any) -> Any:
    """A bool tree like the masks: kept entries of the kernels and biases of `layers`, False elsewhere (leaves of
    no layer, such as PPO's `log_std`, are never rewritten)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, mask: mask & (leaf_name(path).rsplit("/", 1)[0] in layers), masks)


def last_layers(chains: Sequence[Sequence[str]], count: int) -> list[str]:
    """The last `count` layers of every chain (the output layer last), each once."""
    return list(dict.fromkeys(layer for chain in chains for layer in chain[-count:]))


def reset_layers(params: Any, opt_state: Any, fresh: Any, layers: Sequence[str]) -> dormancy.RecycleResult:
    """Every kept kernel entry and bias of `layers` takes its fresh value (Nikishin et al. 2022); the moments of
    those entries are zeroed; `num_recycled` counts the output units of the reset layers."""

    touched = _kept_in(layers, opt_state.masks)
    new_params = jax.tree.map(lambda weights, new, rewrite: jnp.where(rewrite, new, weights), params, fresh, touched)
    units = sum(dormancy.get_layer(params, layer)["kernel"].shape[-1] for layer in layers)
    inner = zero_moments(opt_state.inner, params, touched)
    return dormancy.RecycleResult(new_params, opt_state._replace(inner=inner), touched, jnp.asarray(units, jnp.int32))


def apply(redo: ml_collections.ConfigDict, network: sparse_network.SparseNetwork, state: sparse_network.NetworkState,
          key: jax.Array, inputs: tuple, gradients: Callable[[], Any] | None) -> tuple[sparse_network.NetworkState,
                                                                                         dormancy.RecycleResult]:
    """The remedy `redo.remedy` on one network, scored (ReDo, ReGraMa) on `inputs`; `gradients()` gives the
    gradient of the agent's loss at the network's params (ReGraMa only). Returns the new state and what changed."""
    masks, chains = state.opt_state.masks, network.module.chains()
    fresh = sparse_network.fresh_params(network, key, masks, *inputs)
    opt_state = sparse_network.dense_opt_state(network, state)  # moments of kept layers stored [out, k]: dense here
    if redo.remedy in ("redo", "regrama"):
        if redo.remedy == "redo":
            scores = sparse_network.scores(network, state.params, *inputs)
        else:
            hidden = {layer for chain in chains for layer in chain[:-1]}
            scores = plasticity.gradient_scores(gradients(), masks, hidden)
        result = dormancy.recycle(state.params, opt_state, scores, key,
                                  init_params=lambda _: fresh, chains=chains, tau=redo.tau)
    elif redo.remedy == "shrink_perturb":
        every_layer = last_layers(chains, max(len(chain) for chain in chains))
        result = shrink_and_perturb(state.params, opt_state, fresh, redo.shrink, redo.perturb, every_layer)
    else:
        result = reset_layers(state.params, opt_state, fresh, last_layers(chains, redo.reset_layers))
    opt_state = sparse_network.stored_opt_state(network, result.params, state.indices, result.opt_state)
    kept = sparse_network.kept_values(network, result.params, state.indices)
    slots = kept_counts.gathered_slots(network, result.params, state.indices, result.opt_state.inner)
    return state.replace(params=result.params, opt_state=opt_state, kept=kept, slots=slots), result  # same masks, indices


def counts_of(before: Sequence[Any], after: Sequence[Any], results: Sequence[dormancy.RecycleResult]) -> dormancy.RecycleCounts:
    """What one recycling step changed over an agent's networks (`dormancy.RecycleCounts`): the networks' params
    `before` and `after` it, and each network's `RecycleResult`."""
    neurons = sum((result.num_recycled for result in results), jnp.zeros((), jnp.int32))
    weights = sum(sum(jnp.sum(leaf, dtype=jnp.float32) for leaf in jax.tree.leaves(result.touched)) for result in results)
    squares = sum(jnp.sum(jnp.square(new - old)) for old, new in zip(jax.tree.leaves(before), jax.tree.leaves(after)))
    return dormancy.RecycleCounts(neurons, jnp.asarray(weights, jnp.float32), jnp.sqrt(squares).astype(jnp.float32))
