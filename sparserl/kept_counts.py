"""Condensed kernels under a method whose kept counts change (prune): which capacity each layer runs at, per step.

Gradual magnitude pruning (Zhu & Gupta 2017, eq. 1) lowers every layer's fan-in k_t on its pruning steps. Under
constant fan-in each of its layers stores indices at the largest capacity of its ladder (`condensed.ladder`: the
final k, doubling up to `condensed.MAX_CONDENSED_DENSITY` of the fan-in): kept inputs first, or under native kernels
slots with offsets (`condensed.variable_fan_in`), whose kernels run exactly k_t multiply-adds per neuron. A step
runs each layer at the smallest capacity holding k_t, its *bucket* (`condensed.at_capacity`), or masked above the
ladder. k_t is a function of the gradient step shared by all seeds (`Topology.sparsity_at`), so:

- `indices_at` gives the indices of one step with traced buckets (a `lax.switch` per layer, `condensed.run_bucket`:
  forward passes alone, such as acting and a target network, and the rare pruning steps);
- `phases` cuts the steps into runs of constant buckets, found on the host from `Topology.sparsity_steps`, so a
  gradient step switches once over whole phases (`phase_of`) and each branch differentiates its own products
  (a switch inside a differentiated function would make every branch's residuals, zeros included, on every step);
- `kept_slot_layers` names the layers whose kept values a phase at a capacity trains alone, on all their slots
  (`sparse_network.joint_gradient_step`), from the values and moments that `NetworkState.slots` stores there
  (`gathered_slots`).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sparserl.sparse import condensed, condensed_native
from sparserl.sparse.distributions import layer_sparsities
from sparserl.sparse.masks import kernels_of, with_kernels
from sparserl.sparse.optimizer import map_moment_parts, map_moments
from sparserl.sparse.topology import get_topology

# `SparseNetwork` and `NetworkState` below are `sparserl.sparse_network`'s, which imports this module (annotations
# only: never evaluated).


class Phases(NamedTuple):
    """`first_steps`: the first gradient step of every phase but the first, ascending; `indices`: per phase, each
    network's indices at the phase's buckets (Python ints; `condensed.with_buckets`); `buckets`: per phase, each
    network's {layer: bucket}."""
    first_steps: tuple[int, ...]
    indices: list[tuple[dict, ...]]
    buckets: list[tuple[dict, ...]]


def ladders(network: SparseNetwork, params: Any, indices: dict) -> dict[str, condensed.Ladder]:
    """The `condensed.ladders` of a network whose method's kept counts change (prune), else {}."""
    config = network.optimizer.config
    if not indices or not get_topology(config.method).sparsity_changes:
        return {}
    return condensed.ladders(indices, params, layer_sparsities(params, config))


def _bucket(config, in_features: int, final_sparsity: float, capacities: tuple[int, ...], step) -> jax.Array:
    """The bucket of a layer's ladder holding its kept count at gradient step `step` (`Topology.sparsity_at`,
    `condensed.fan_in`, `condensed.bucket`) under the `SparsityConfig` `config`."""
    sparsity = get_topology(config.method).sparsity_at(step, final_sparsity, config)
    return condensed.bucket(jnp.reshape(condensed.fan_in(in_features, sparsity), ()), capacities)


def buckets_at(network: SparseNetwork, layers: dict[str, condensed.Ladder], step) -> dict[str, jax.Array]:
    """{layer: the bucket of its kept count at gradient step `step`}."""
    return {path: _bucket(network.optimizer.config, layer.in_features, layer.final_sparsity, layer.capacities, step)
            for path, layer in layers.items()}


def indices_at(network: SparseNetwork, params: Any, indices: dict, step: jax.Array | None) -> dict:
    """`indices` as the forward pass of gradient step `step` runs them: each layer of `ladders` with its ladder's
    slices and the bucket of its kept count at `step` (traced). ValueError without a step where one is needed."""
    layers = ladders(network, params, indices)
    if not layers:
        return indices
    if step is None:
        raise ValueError(f"{network.optimizer.config.method}'s condensed indices run at the kept count of a "
                         "gradient step: pass step")
    return condensed.with_buckets(indices, layers, buckets_at(network, layers, step))


def phases(networks: Sequence[SparseNetwork], states: Sequence[NetworkState]) -> Phases | None:
    """The gradient steps in phases of constant buckets over all `networks`, or None where no network's kept
    counts change (`phase_buckets`)."""
    layers = [ladders(network, state.params, state.indices) for network, state in zip(networks, states)]
    if not any(layers):
        return None
    first_steps, buckets = phase_buckets(tuple(
        (network.optimizer.config, tuple((path, layer.in_features, layer.final_sparsity, layer.capacities)
                                         for path, layer in network_layers.items()))
        for network, network_layers in zip(networks, layers)))
    buckets = [tuple(dict(network_buckets) for network_buckets in phase) for phase in buckets]
    return Phases(first_steps, [tuple(condensed.with_buckets(state.indices, network_layers, network_buckets)
                                      for state, network_layers, network_buckets in zip(states, layers, phase))
                                for phase in buckets], buckets)


@functools.lru_cache(maxsize=64)
def phase_buckets(networks: tuple) -> tuple[tuple[int, ...], tuple]:
    """(the first step of every phase but the first; per phase, each network's ((layer, bucket), ...)) for
    `networks`: per network, (its `SparsityConfig`, ((layer, in_features, final sparsity, capacities), ...)). The
    buckets are `buckets_at`'s, the same float32 ops evaluated here on the host, at once, at every step that
    `Topology.sparsity_steps` names (cached: a program traces its gradient step once per branch)."""
    steps = sorted({step for config, layers in networks if layers
                    for step in get_topology(config.method).sparsity_steps(config)})
    with jax.ensure_compile_time_eval():
        at_steps = jnp.asarray(steps, jnp.int32)
        per_network = [[(path, np.asarray(jax.vmap(functools.partial(_bucket, config, *layer))(at_steps)))
                        for path, *layer in layers] for config, layers in networks]
    found = []
    for index, step in enumerate(steps):
        buckets = tuple(tuple((path, int(bucket[index])) for path, bucket in network) for network in per_network)
        if not found or found[-1][1] != buckets:
            found.append((step, buckets))
    return tuple(step for step, _ in found[1:]), tuple(buckets for _, buckets in found)


def phase_of(found: Phases, step: jax.Array) -> jax.Array:
    """The phase gradient step `step` (traced, unbatched) falls in: an index into `found.indices`."""
    if not found.first_steps:
        return jnp.zeros((), jnp.int32)
    return jnp.searchsorted(jnp.asarray(found.first_steps, jnp.int32), step, side="right").astype(jnp.int32)


def slot_layers(network: SparseNetwork, params: Any, indices: dict) -> dict[str, condensed.Ladder]:
    """The `ladders` whose layers train their kept values at slots in the phases that run them at a capacity
    (`kept_slot_layers`): under native kernels with the default optimizer step (`Topology.masked_updates`), those
    whose stored slots the native product wins at (`condensed.native_is_faster`: all but a final k above a quarter of
    the fan-in, which runs masked)."""
    if network.kernels != "native" or not get_topology(network.optimizer.config.method).masked_updates:
        return {}
    return {path: layer for path, layer in ladders(network, params, indices).items()
            if condensed.native_is_faster(condensed.NATIVE_MIN_BATCH, layer.in_features, layer.capacities[-1])}


def kept_slot_layers(network: SparseNetwork, state: NetworkState, indices: dict,
                     buckets: dict[str, int]) -> tuple[dict, dict[str, dict]]:
    """(`indices`, a phase's with these `buckets`, with the nodes of `layers` in their place; `layers`: {layer: its
    stored slots, `all_slots`}) for the `slot_layers` that run at a capacity in the phase: the layers whose kept
    values that phase's steps train alone. No layers otherwise.

    The step runs them on all their slots, whatever the capacity: the native kernels run exactly k_t multiply-adds
    per neuron from the offsets, and the slots of no neuron hold 0 and never train. Taking a capacity's prefix of the
    slots' values and moments and writing it back at every step cost more than the optimizer's step on all the
    slots (docs/performance.md)."""
    layers = {path: all_slots(layer) for path, layer in slot_layers(network, state.params, state.indices).items()
              if buckets[path] < len(layer.capacities)}

    def replaced(node, path):
        if path in layers:
            return layers[path]
        if "indices" in node:
            return node
        return {name: replaced(child, f"{path}/{name}" if path else name) for name, child in node.items()}

    return replaced(indices, ""), layers


# The slots' store. Between pruning steps a native prune layer trains its kept values and their moments at its
# slots (`kept_slot_layers`). `NetworkState.slots` holds them there ([out, largest capacity],
# `condensed.variable_fan_in`), so such a step reads and writes them as they are and scatters the values alone into
# the kernel, as a static layer's step does (gathering and scattering values and both moments from dense-shaped
# arrays at every step made the phases at a fifth to a quarter of the fan-in slower than masked ones:
# docs/performance.md). While a layer's kept count fits its slots (`slots_current`) they hold its current moments,
# and the optax state's dense-shaped ones are those of the last pruning step; otherwise the dense-shaped ones are
# current. Every pruning step gathers the slots anew.

def gathered_slots(network: SparseNetwork, params: Any, indices: dict, inner: Any) -> dict:
    """`NetworkState.slots` of these params, their stored indices and the dense-shaped optax state `inner`:
    {"values": {layer: its kernel at the stored slots}, "moments": `map_moment_parts` of `inner`, each {layer: its
    kernel's moment at the stored slots}} over the `slot_layers`; {} without them."""
    layers = slot_layers(network, params, indices)
    if not layers:
        return {}

    def at_slots(tree):
        return {path: condensed_native.gather(condensed.fan_in_view(kernel), **all_slots(layers[path]))
                for path, kernel in kernels_of(tree, layers).items()}

    return {"values": at_slots(params), "moments": map_moment_parts(inner, params, at_slots)}


def all_slots(layer: condensed.Ladder) -> dict:
    """The layer's stored slots with their offsets clamped to them (`condensed.at_capacity` at its largest
    capacity): a kept count above them (the masked phases) leaves its last neurons' inputs out rather than past the
    slots."""
    return condensed.at_capacity(layer.stored, layer.capacities[-1])


def slots_current(layer: condensed.Ladder) -> jax.Array:
    """Whether the slots of a `slot_layers` layer hold its current moments: its kept count (the stored offsets'
    total over out neurons) fits them."""
    stored = layer.stored
    return stored["offsets"][..., -1] <= stored["indices"].shape[-2] * layer.capacities[-1]


def current_moments(network: SparseNetwork, state: NetworkState, inner: Any) -> Any:
    """The dense-shaped optax state `inner` (the state's) with each slot layer's kernel moments written from its
    slots where those are current (`slots_current`)."""
    layers = slot_layers(network, state.params, state.indices)
    if not layers:
        return inner

    def written(part, slot_part):
        def current(path, moment):
            view = condensed.fan_in_view(moment)
            scattered = condensed_native.scatter(view, values=slot_part[path], **all_slots(layers[path]))
            return jnp.where(slots_current(layers[path]), scattered, view).reshape(moment.shape)

        return with_kernels(part, {path: current(path, moment) for path, moment in kernels_of(part, layers).items()})

    return map_moments(inner, state.params, written, state.slots["moments"])


def slot_values(slots: dict, layers: dict[str, dict]) -> dict:
    """{layer: its kept values at its slots} for the layers of `layers` (`kept_slot_layers`)."""
    return {path: slots["values"][path] for path in layers}


def with_slot_moments(inner: Any, params: Any, slots: dict, layers: dict[str, dict]) -> Any:
    """The optax state `inner` with the kernel moments of `layers` taken from their slots."""
    return map_moments(inner, params, lambda part, slot_part: with_kernels(part, {path: slot_part[path]
                                                                                 for path in layers}),
                       slots["moments"])


def written_slots(slots: dict, layers: dict[str, dict], values: dict, inner: Any, params: Any) -> dict:
    """`slots` with those of `layers` replaced by a step's new `values` and the kernel moments of its optax state
    `inner` (those layers' moments at their slots: `with_slot_moments`)."""
    return {"values": {**slots["values"], **values}, "moments": map_moment_parts(
        inner, params, lambda part, slot_part: {**slot_part, **kernels_of(part, layers)}, slots["moments"])}
