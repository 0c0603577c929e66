"""A sparse network and its training state: the part every agent shares (Dopamine-style shared parts).

`SparseNetwork` is the static definition (flax module, sparse optimizer, a
metric name and which kernels run its forward pass); `NetworkState` is its
pytree state (params, the sparse optimizer state, which holds the masks, and
the condensed-kernel indices of the masks, `sparserl.sparse.condensed`). Agents build their TrainState from
NetworkStates and call these functions for gradient steps, sparsity and
dormancy metrics, and ReDo (over all of an agent's networks at once:
`sparserl.agent_networks`), so no agent holds sparsity logic of its own
(docs/design.md contract 4).
"""

import dataclasses
import functools
import math
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from sparserl import dormancy, kept_counts, networks, plasticity
from sparserl.sparse import SparseOptimizer, SparseOptState, SparsityConfig, apply_masks, sparse_optimizer, sparsity_metrics
from sparserl.sparse import condensed, condensed_native
from sparserl.sparse.distributions import layer_sparsities, masked_layers
from sparserl.sparse.masks import kernels_of, layer_of, multiply_add_metrics, with_kernels
from sparserl.sparse.optimizer import map_moments
from sparserl.sparse.topology import Topology, get_topology


class SparseNetwork(NamedTuple):
    """A network definition. `name` prefixes its metrics ('' for an agent's only network, else 'actor', 'critic').

    `sparse_init_rescale`: draw the initial weights (and ReDo's re-drawn ones)
    at the scale of each unit's sparse fan-in (`rescale_to_sparse_fan_in`).
    `kernels`: "masked" (dense matmuls on the masked weights), "condensed", "auto"
    or "native" (`sparserl.sparse.condensed`; only for constant fan-in masks).
    """

    module: nn.Module
    optimizer: SparseOptimizer
    name: str = ""
    sparse_init_rescale: bool = True
    kernels: str = "masked"

    def metric_name(self, kind: str) -> str:
        return f"{kind}/{self.name}" if self.name else kind


class NetworkState(flax.struct.PyTreeNode):
    """`indices`: the condensed-kernel indices of the masks (`condensed.layer_indices`); empty with masked kernels.
    `kept`: {layer path: values [out, k]} of the layers that train their kept values (`kept_layers`), always equal to
    the params' kernels at the indices (`kept_values`); what those layers compute from, in gradient steps and when
    acting (`indices_of`). `slots`: prune's kept values and moments at their slots under native kernels
    (`kept_counts.gathered_slots`)."""

    params: Any
    opt_state: SparseOptState
    indices: dict = flax.struct.field(default_factory=dict)
    kept: dict = flax.struct.field(default_factory=dict)
    slots: dict = flax.struct.field(default_factory=dict)


def make_network(
    module: nn.Module, inner: optax.GradientTransformation, sparsity: SparsityConfig, name: str = "",
    sparse_init_rescale: bool = True, kernels: str = "masked",
) -> SparseNetwork:
    return SparseNetwork(module, sparse_optimizer(inner, sparsity), name, sparse_init_rescale, condensed.check_kernels(kernels))


def rescale_to_sparse_fan_in(params: Any, masks: Any) -> Any:
    """Scales every kernel's output unit j by sqrt(dense fan-in / active fan-in of j) (at least one input).

    A dense init masked to density d leaves each unit with about d times the
    inputs its initializer was scaled for, so activations shrink by about
    sqrt(d) per layer. rigl's `fixed_sparse_init` (Graesser et al. 2022, every
    sparse gin config: `init_masks.fixed_sparse_init = True`, which calls
    `rigl_tf2/init_utils.unit_scaled_init`) re-draws each active weight with the
    variance its real, sparse fan-in calls for. The initializers here (variance
    scaling, orthogonal) are scale families, so scaling a unit's dense draw is a
    draw at its sparse fan-in: for a fan-in variance-scaling init (LeCun, He)
    exactly the re-draw with fan_in_j; for an orthogonal init each unit keeps
    the incoming norm of the dense one. One deviation: rigl re-draws every
    sparse layer with Glorot-uniform at the per-connection fan-avg; we keep each
    layer's own initializer. Kernels are the leaves with ndim >= 2 (conv:
    fan-in over kh x kw x cin); dense masks leave the params as they are.
    """

    def rescale(leaf, mask):
        if leaf.ndim < 2:
            return leaf
        dense_fan_in = math.prod(leaf.shape[:-1])
        fan_in = jnp.maximum(jnp.sum(mask, axis=tuple(range(leaf.ndim - 1))), 1)
        return leaf * jnp.sqrt(dense_fan_in / fan_in).astype(leaf.dtype)

    return jax.tree.map(rescale, params, masks)


def _at_init_scale(network: SparseNetwork, params: Any, masks: Any) -> Any:
    """Freshly initialised params at the sparse fan-in scale of `masks` when `network.sparse_init_rescale`."""
    return rescale_to_sparse_fan_in(params, masks) if network.sparse_init_rescale else params


def init(network: SparseNetwork, key: jax.Array, *sample_inputs) -> NetworkState:
    """Initial params from the module's initializers, masked by the topology method's initial masks, then
    rescaled to each unit's sparse fan-in (unless `sparse_init_rescale` is off).

    The inner optimizer state does not depend on the param values (Adam's moments start at 0). With
    condensed, auto or native kernels, the indices of every masked kernel are computed from the initial masks
    (prune: at the largest capacity of each layer's ladder; SRigL's ablating layers, and under native kernels
    every layer of a sweep's traced level, as slots with offsets within the budget of the indices' k:
    `condensed.layer_indices`); with native ones, the moments of the layers that train their kept values
    (`kept_layers`) are stored [out, k].
    """
    init_key, mask_key = jax.random.split(key)
    params = network.module.init(init_key, *sample_inputs)["params"]
    params, opt_state = network.optimizer.init(mask_key, params)
    indices = {}
    if network.kernels != "masked":
        topology, config = _topology(network), network.optimizer.config
        variable = topology.ablating_layers(params, config)
        if topology.sparsity_changes and network.kernels == "native":  # prune's kept counts as slots with offsets
            variable = frozenset(layer_sparsities(params, config))
        if config.index_sparsity is not None:  # a sweep's traced level: the lowest level's k
            config = dataclasses.replace(config, sparsity=config.index_sparsity)
            if network.kernels == "native":  # each level's own k per neuron, in that budget
                variable = frozenset(layer_sparsities(params, config))
        indices = condensed.layer_indices(opt_state.masks, layer_sparsities(params, config),
                                          gradual=topology.sparsity_changes, variable=variable)
    params = _at_init_scale(network, params, opt_state.masks)
    return NetworkState(params, stored_opt_state(network, params, indices, opt_state), indices,
                        kept_values(network, params, indices),
                        kept_counts.gathered_slots(network, params, indices, opt_state.inner))


def _topology(network: SparseNetwork):
    return get_topology(network.optimizer.config.method)


def apply(network: SparseNetwork, params: Any, *inputs, indices: dict | None = None, step: jax.Array | None = None):
    """The network's outputs; with `indices` (a `NetworkState.indices` of these params' masks), the layers that
    `network.kernels` picks at this batch size run as condensed kernels (`condensed.select`).

    Only pass `indices` whose masks the params are zero off (the online params with their own indices). Prune's
    stored indices need the gradient step `step` whose masks they are (`kept_counts.indices_at`), unless a
    gradient step hands its loss indices already at a step.
    """
    variables = {"params": params}
    indices = kept_counts.indices_at(network, params, indices, step)
    if indices:
        chosen = condensed.select(indices, params, inputs[0].shape[0], network.kernels)
        if chosen:
            variables[condensed.NATIVE_COLLECTION if network.kernels == "native" else condensed.COLLECTION] = chosen
    return network.module.apply(variables, *inputs)


def indices_of(state: NetworkState) -> dict:
    """The indices that run a network from its own state (its online params): `state.indices`, with each layer that
    trains its kept values computing from `state.kept` at any batch size (acting at batch 1 then reads k values per
    neuron, not the dense kernel). Pass them to `apply` with `state.params` only."""
    return with_kept_values(state.indices, state.kept)


def _when(flag: bool | jax.Array, true_fn: Callable, false_fn: Callable) -> Any:
    """`true_fn()` if `flag` else `false_fn()`: in Python for a Python bool, else a `lax.cond`."""
    if isinstance(flag, bool):
        return true_fn() if flag else false_fn()
    return jax.lax.cond(flag, true_fn, false_fn)


def _is_topology_step(network: SparseNetwork, step: jax.Array) -> jax.Array:
    return _topology(network).is_update_step(step, network.optimizer.config)


def topology_step_on_host(network: SparseNetwork, step: int) -> bool:
    """Whether gradient step `step` (a Python int) updates the network's topology (`Topology.is_update_step`),
    decided on the host: a loop that knows its update numbers compiles the branch it takes alone (`loop._branch`)."""
    return bool(_is_topology_step(network, step))


def masks_unchanged(network: SparseNetwork, first_step: jax.Array, step: jax.Array, max_steps: int) -> jax.Array:
    """True when no topology update (`Topology.is_update_step`) runs at any step of [first_step, step), an
    interval of at most `max_steps` steps: params copied from the network at `first_step` (a target network)
    then still have the network's masks, and its condensed indices."""
    steps = first_step + jnp.arange(max_steps)
    return ~jnp.any(_is_topology_step(network, steps) & (steps < step))


def masks_unchanged_on_host(network: SparseNetwork, period: int) -> Callable[[int], bool]:
    """`masks_unchanged` on the host for params copied every `period` steps (a target network): `unchanged(step)`
    for a Python-int step says whether no topology update ran in [last copy, step), the last copy at the last
    multiple of `period`. One scan of the period per copy (cached), so a host loop can ask at every update."""

    @functools.lru_cache(maxsize=4)
    def first_topology_step(start: int) -> int | None:
        return next((step for step in range(start, start + period) if topology_step_on_host(network, step)), None)

    def unchanged(step: int) -> bool:
        first = first_topology_step(step // period * period)
        return first is None or first >= step

    return unchanged


def joint_value_and_grad(networks: Sequence[SparseNetwork], loss_fn: Callable, states: Sequence[NetworkState],
                         step: jax.Array, indices: tuple[dict, ...] | None = None):
    """`jax.value_and_grad(loss_fn, has_aux=True)` of one loss over several networks (PPO's actor and critic; one
    network is a tuple of one) at their params: `loss_fn(params, indices)` takes a tuple of params and a tuple of
    indices, one per network, and runs each network through `apply(..., indices=indices)`; the gradients are a
    tuple of dense-shaped ones.

    Native kernels (`sparserl.sparse.condensed_native`) compute the kernel gradient at the kept connections only,
    but RigL and SRigL grow where the dense gradient is large (`Topology.grows_from_gradients`): on a step where
    any native network of such a method updates its topology (one `lax.cond` on the unbatched step, so the other
    branch is not run), every network runs masked (no indices) and the gradients are dense, as the topology
    update expects. SET grows at random and prune reads magnitudes only: they keep the native kernels on every
    step. Every other kernel choice has the masked network's gradients at every step. Prune's layers run at the
    capacity of their kept count at `step` (`kept_counts.indices_at`), or at `indices`, a phase's.
    """
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    params = tuple(state.params for state in states)
    indices = indices or tuple(kept_counts.indices_at(network, state.params, state.indices, step)
                               for network, state in zip(networks, states))
    condensed_grads = functools.partial(grad_fn, params, indices)
    native = [network for network, state in zip(networks, states)
              if network.kernels == "native" and state.indices and _topology(network).grows_from_gradients]
    if not native:
        return condensed_grads()
    topology_step = jnp.any(jnp.stack([_is_topology_step(network, step) for network in native]))
    return jax.lax.cond(topology_step, lambda: grad_fn(params, tuple({} for _ in states)), condensed_grads)


def apply_gradients(network: SparseNetwork, state: NetworkState, dense_grads: Any, step: jax.Array, key: jax.Array,
                    topology_step: bool | None = None) -> NetworkState:
    """One sparse optimizer step on dense-shaped gradients; on topology-update steps the condensed indices follow
    the new masks. (Kept moments are made dense for it and stored [out, k] again: `dense_opt_state`. Prune's slots
    hold current moments only where a step trains them, so here on its pruning steps alone, which gather them anew:
    `kept_counts.slots_current`.) `topology_step`: False where the caller knows the step updates no topology (a
    phase's step), which then leaves the indices and slots as they are without a `lax.cond` (one would copy them)."""
    topology_step = _is_topology_step(network, step) if topology_step is None else topology_step
    opt_state = dense_opt_state(network, state) if not state.slots else _when(
        topology_step, lambda: dense_opt_state(network, state), lambda: state.opt_state)
    params, opt_state = network.optimizer.apply_gradients(step, state.params, dense_grads, opt_state, key)
    indices, slots = state.indices, state.slots
    if indices:
        indices = _when(topology_step, lambda: condensed.refresh(indices, opt_state.masks), lambda: indices)
    if slots:
        slots = _when(topology_step, lambda: kept_counts.gathered_slots(network, params, indices, opt_state.inner),
                      lambda: slots)
    return NetworkState(params, stored_opt_state(network, params, indices, opt_state), indices,
                        kept_values(network, params, indices), slots)


# Kept-value training -------------------------------------------------------------------------------------------
# With native kernels, a layer that runs condensed has exactly k kept inputs per neuron at its indices. Between
# topology updates its masks are fixed, so an optimizer step needs its kept values [out, k] only: the loss takes
# them as the operand of the native product (`condensed_native.dense_kept`, gradient [out, k]), the inner optax
# transformation updates them and their Adam moments, stored [out, k] (a tenth of the dense arrays at 90%), and
# they are written back into the dense kernel (`condensed_native.scatter`). Params stay dense with zeros
# (docs/design.md contract 3); only these layers' moments are stored condensed, and made dense wherever
# a dense-shaped step reads them (`dense_opt_state`: topology updates, ReDo and the other remedies).


def kept_layers(network: SparseNetwork, params: Any, indices: dict) -> dict[str, dict]:
    """{layer path: its index node, `indices` [out, k] and, for SRigL's ablating layers, `offsets`
    (`condensed.variable_fan_in`)} of the layers whose kept values are trained alone (`joint_gradient_step`):
    under native kernels, a method whose optimizer step is the default one (masked gradients, updates and params;
    `Topology.masked_updates`) with a fixed budget of kept inputs (not prune), every layer with `indices` at a
    density the native product runs (`condensed.native_is_faster`). (A sweep's levels keep their own k in the
    budget of the lowest level's: slots with offsets, whose slots of no neuron hold 0 and never train.)"""
    topology = _topology(network)
    if network.kernels != "native" or not indices or topology.sparsity_changes or not topology.masked_updates:
        return {}
    layers = {}

    def collect(index_node, param_node, path):
        if "indices" in index_node:
            in_features = condensed.fan_in_view(param_node["kernel"]).shape[0]
            if condensed.native_is_faster(condensed.NATIVE_MIN_BATCH, in_features, index_node["indices"].shape[-1]):
                layers[path] = index_node
            return
        for name, child in index_node.items():
            collect(child, param_node[name], f"{path}/{name}" if path else name)

    collect(indices, params, "")
    return layers


def _kept_of(kernel: jax.Array, index_node: dict) -> jax.Array:
    return condensed_native.gather(condensed.fan_in_view(kernel), index_node["indices"], index_node.get("offsets"))


def kept_values(network: SparseNetwork, params: Any, indices: dict) -> dict[str, jax.Array]:
    """`NetworkState.kept` of these params: {layer path: kernel values at the indices [out, k]} over `kept_layers`
    (gathered: call it wherever params change other than by a kept-value step)."""
    layers = kept_layers(network, params, indices)
    return {layer: _kept_of(kernel, layers[layer]) for layer, kernel in kernels_of(params, layers).items()}


def _with_kept(kernel: jax.Array, index_node: dict, values: jax.Array) -> jax.Array:
    return condensed_native.scatter(condensed.fan_in_view(kernel), index_node["indices"], values,
                                    index_node.get("offsets")).reshape(kernel.shape)


def dense_opt_state(network: SparseNetwork, state: NetworkState) -> SparseOptState:
    """`state.opt_state` with every moment dense-shaped and current (kept moments scattered into zeros, prune's
    written from its slots where those are current: `kept_counts.current_moments`), as `network.optimizer`, ReDo and
    the other remedies read it."""
    layers = kept_layers(network, state.params, state.indices)
    inner = kept_counts.current_moments(network, state, state.opt_state.inner)
    if not layers:
        return state.opt_state._replace(inner=inner)
    kernels = kernels_of(state.params, layers)
    inner = map_moments(inner, state.params, lambda moments: with_kernels(moments, {
        layer: _with_kept(jnp.zeros_like(kernels[layer]), layers[layer], moment)
        for layer, moment in kernels_of(moments, layers).items()}))
    return state.opt_state._replace(inner=inner)


def stored_opt_state(network: SparseNetwork, params: Any, indices: dict, opt_state: SparseOptState) -> SparseOptState:
    """A dense-shaped `opt_state` as a NetworkState stores it: the moments of `kept_layers` gathered to [out, k]
    (exact: a masked optimizer's moments are 0 off the masks)."""
    layers = kept_layers(network, params, indices)
    if not layers:
        return opt_state
    return opt_state._replace(inner=map_moments(opt_state.inner, params, lambda moments: with_kernels(
        moments, {layer: _kept_of(moment, layers[layer]) for layer, moment in kernels_of(moments, layers).items()})))


def with_kept_values(indices: dict, values: dict) -> dict:
    """`indices` with each kept layer's `values` [out, k] (a `NetworkState.kept`) beside its indices
    (`networks.Dense` then runs `condensed_native.dense_kept` on them). Run them with the params those values are
    the kernels of at these indices: the state's own (`indices_of`), or a copy of them (DQN's target)."""
    if not values:
        return indices

    def insert(node, path):
        if "indices" in node:
            return {**node, "values": values[path]} if path in values else node
        return {name: insert(child, f"{path}/{name}" if path else name) for name, child in node.items()}

    return insert(indices, "")


def _masked_besides(network: SparseNetwork, params: Any, layers: dict) -> set[str]:
    """The layers whose masks may hold a False (`masked_layers`) other than the kept-value ones in `layers`."""
    return set(masked_layers(params, network.optimizer.config)) - set(layers)


def _apply_kept_gradients(network: SparseNetwork, state: NetworkState, layers: dict, grads: Any,
                          at_slots: bool = False) -> NetworkState:
    """The sparse optimizer's step off topology updates (`SparseOptimizer.apply_gradients` with the default hooks)
    with each kept layer's kernel (`state.kept`), gradient and moments as [out, k] values, which have no entry off
    the mask. `at_slots`: the layers are prune's at a phase's capacity (`kept_counts.kept_slot_layers`), whose
    values and moments are read from and written to their slots (`NetworkState.slots`); their dense-shaped moments
    stay as they are."""
    masks, masked = state.opt_state.masks, _masked_besides(network, state.params, layers)
    inner = state.opt_state.inner
    if at_slots:
        inner = kept_counts.with_slot_moments(inner, state.params, state.slots, layers)
    kept_params = with_kernels(state.params, kept_counts.slot_values(state.slots, layers) if at_slots else state.kept)
    grads = apply_masks(grads, masks, masked)
    updates, inner = network.optimizer.inner.update(grads, inner, kept_params)
    kept_params = apply_masks(optax.apply_updates(kept_params, apply_masks(updates, masks, masked)), masks, masked)
    params = jax.tree_util.tree_map_with_path(  # the kept layers' values written into the dense kernels
        lambda path, new, old: _with_kept(old, layers[layer_of(path)], new) if layer_of(path) in layers else new,
        kept_params, state.params)
    kept, slots = kernels_of(kept_params, layers), state.slots
    if at_slots:
        kept, slots = state.kept, kept_counts.written_slots(slots, layers, kept, inner, state.params)
        inner = map_moments(inner, state.params, lambda new, old: with_kernels(new, kernels_of(old, layers)),
                            state.opt_state.inner)
    return NetworkState(params, state.opt_state._replace(inner=inner), state.indices, kept, slots)


def gradient_step(network: SparseNetwork, loss_fn: Callable, state: NetworkState, step: jax.Array, key: jax.Array,
                  topology_step: bool | None = None):
    """`value_and_grad` then `apply_gradients`, as one step: ((loss, aux), new state). `loss_fn(params, indices)`
    runs the network through `apply(..., indices=indices)`. See `joint_gradient_step`."""
    value, (new_state,) = joint_gradient_step((network,), lambda params, indices: loss_fn(params[0], indices[0]),
                                              (state,), step, (key,), topology_step=topology_step)
    return value, new_state


def joint_gradient_step(networks: Sequence[SparseNetwork], loss_fn: Callable, states: Sequence[NetworkState],
                        step: jax.Array, keys: Sequence[jax.Array], max_grad_norm: float | None = None,
                        topology_step: bool | None = None, phase: int | None = None):
    """One gradient step of one loss over several networks (PPO's actor and critic; `joint_value_and_grad`),
    each network's gradients clipped by their joint norm first when `max_grad_norm` is given
    (`clip_by_joint_norm`): ((loss, aux), tuple of new states).

    Where a network trains kept values (`kept_layers`; prune's layers at a phase's capacity,
    `kept_counts.kept_slot_layers`), steps without a topology update of any of the networks differentiate the loss
    with respect to the kept values and update them alone (`_apply_kept_gradients`): equal to the dense-shaped
    step, whose moments and gradients are 0 off the masks, up to float rounding. Topology-update steps run the
    dense-shaped step (`joint_value_and_grad`, `apply_gradients`). The program picks the step from the shared step
    (`_in_place_switch`); `topology_step`, where the caller knows it on the host (`topology_step_on_host` of any of
    the networks; the host loop's `Agent.plan`), and `phase` (`kept_counts.phases`) pick it in Python.
    """
    def dense_step(indices=None, topology_step=None):  # topology_step: False in a phase's steps (None: traced)
        value, grads = joint_value_and_grad(networks, loss_fn, states, step, indices)
        if max_grad_norm is not None:
            grads = clip_by_joint_norm(states, grads, max_grad_norm)
        return value, tuple(apply_gradients(network, state, network_grads, step, key, topology_step)
                            for network, state, network_grads, key in zip(networks, states, grads, keys))

    def kept_step(indices, layers, kept):  # per network: indices, kept layers, their values (None: `state.kept`)
        if not any(layers):
            return dense_step(indices, topology_step=False)

        def loss_of_values(params, values):
            return loss_fn(params, tuple(with_kept_values(node, network_values)
                                         for node, network_values in zip(indices, values)))

        params = tuple(state.params for state in states)
        value, (param_grads, value_grads) = jax.value_and_grad(loss_of_values, argnums=(0, 1), has_aux=True)(
            params, tuple(state.kept if values is None else values for state, values in zip(states, kept)))
        grads = [with_kernels(network_grads, network_value_grads)
                 for network_grads, network_value_grads in zip(param_grads, value_grads)]
        if max_grad_norm is not None:
            applied = [apply_masks(network_grads, state.opt_state.masks,
                                   _masked_besides(network, state.params, network_layers))
                       for network, state, network_grads, network_layers in zip(networks, states, grads, layers)]
            grads = _scaled_to_norm(applied, grads, max_grad_norm)
        return value, tuple(
            _apply_kept_gradients(network, state, network_layers, network_grads, values is not None) if network_layers
            else apply_gradients(network, state, network_grads, step, key, topology_step=False)
            for network, state, network_layers, network_grads, values, key
            in zip(networks, states, layers, grads, kept, keys))

    def phase_step(phase_indices, phase_buckets):  # prune's layers at a phase's capacities, their values at slots
        inputs = [kept_counts.kept_slot_layers(network, state, network_indices, buckets) if buckets
                  else (network_indices, kept_layers(network, state.params, state.indices))
                  for network, state, network_indices, buckets in zip(networks, states, phase_indices, phase_buckets)]
        kept = tuple(kept_counts.slot_values(state.slots, layers) if buckets else None
                     for state, (_, layers), buckets in zip(states, inputs, phase_buckets))
        return kept_step(tuple(indices for indices, _ in inputs), tuple(layers for _, layers in inputs), kept)

    found = kept_counts.phases(networks, states)
    if found is None:
        layers = tuple(kept_layers(network, state.params, state.indices) for network, state in zip(networks, states))
        if not any(layers):
            return dense_step()
        kept_steps = [functools.partial(kept_step, tuple(state.indices for state in states), layers, (None,) * len(layers))]
    else:  # one per kept-count phase
        kept_steps = [functools.partial(phase_step, *phase) for phase in zip(found.indices, found.buckets)]
    phase = 0 if phase is None and len(kept_steps) == 1 else phase
    if topology_step is None and all(type(_topology(net)).is_update_step is Topology.is_update_step for net in networks):
        topology_step = False  # methods that never update a topology (static)
    if topology_step is not None and (topology_step or phase is not None):
        return dense_step() if topology_step else kept_steps[phase]()
    options = [(False, option) for option in range(len(kept_steps))]
    index = kept_counts.phase_of(found, step) if found else jnp.zeros((), jnp.int32)
    if topology_step is None:
        options.insert(0, (True, None))
        index = jnp.where(jnp.any(jnp.stack([_is_topology_step(network, step) for network in networks])), 0, index + 1)
    value = jax.eval_shape(loss_fn, tuple(state.params for state in states), found.indices[0] if found else
                           tuple(state.indices for state in states))
    return _in_place_switch(index, [
        lambda carried, option=option: joint_gradient_step(networks, loss_fn, carried, step, keys, max_grad_norm, *option)
        for option in options], (jax.tree.map(lambda leaf: jnp.zeros(leaf.shape, leaf.dtype), value), tuple(states)))


def _in_place_switch(index: jax.Array, branches: Sequence[Callable], carry: tuple) -> tuple:
    """`branches[index](states)` for `carry` = (a value, states), each branch giving (a value shaped like it, new
    states), as one `while_loop` per branch run `index == i` times. A `lax.switch` would copy every array that a
    branch updates in place or passes through into its own outputs (8 MB per kernel and moment of the 4x MinAtar
    network); a loop's carry is updated in place."""
    for number, branch in enumerate(branches):
        carry = jax.lax.fori_loop(0, (index == number).astype(jnp.int32),
                                  lambda _, carried, branch=branch: branch(carried[1]), carry)
    return carry


def activations(network: SparseNetwork, params: Any, *inputs) -> Any:
    """The `networks.ACTIVATIONS` collection of a forward pass on a batch of inputs: every hidden layer's
    post-activation outputs."""
    _, captured = network.module.apply({"params": params}, *inputs, mutable=[networks.ACTIVATIONS])
    return captured[networks.ACTIVATIONS]


def scores(network: SparseNetwork, params: Any, *inputs) -> dict[str, jax.Array]:
    """Dormancy scores of every hidden layer on a batch of inputs (Sokar et al. 2023, eq. 1)."""
    return dormancy.layer_scores(activations(network, params, *inputs))


def metrics(network: SparseNetwork, state: NetworkState, *inputs, grads: Any = None) -> dict[str, jax.Array]:
    """Per-layer and total sparsity and multiply-adds, dormant fractions, per-layer effective feature rank (srank)
    and mean kept weight magnitude, all from one forward pass on `inputs`; with `grads`, the gradients of the agent's
    loss on the same batch, GraMa's inactive fractions too (`sparserl.plasticity`). Named as in docs/design.md
    contract 6."""
    captured = activations(network, state.params, *inputs)
    masks = state.opt_state.masks
    dormancy_scores = dormancy.layer_scores(captured)
    network_name = network.name or None
    metrics = {
        **sparsity_metrics(masks, network.metric_name("sparsity")),
        **multiply_add_metrics(masks, networks.layer_positions(network.module, state.params, *inputs),
                               network.metric_name("multiply_adds")),
        **dormancy.dormant_fractions(dormancy_scores, network=network_name),
        **plasticity.srank_metrics(captured, network.metric_name("srank")),
        **plasticity.weight_magnitudes(state.params, masks, network.metric_name("weight_magnitude")),
    }
    if grads is not None:
        grama_scores = plasticity.gradient_scores(grads, masks, dormancy_scores.keys())
        metrics.update(dormancy.dormant_fractions(grama_scores, network=network_name, kind="grama"))
    return metrics


def fresh_params(network: SparseNetwork, key: jax.Array, masks: Any, *inputs) -> Any:
    """A fresh init of the network's params, drawn as `init` draws them: from the module's initializers, at the
    sparse fan-in scale of `masks` (what ReDo and the other remedies, `sparserl.remedies`, write on kept entries)."""
    return _at_init_scale(network, network.module.init(key, *inputs)["params"], masks)


def soft_update_target(state: NetworkState, target_params: Any, tau: float) -> Any:
    """Polyak averaging target <- tau * online + (1 - tau) * target, kept on the online masks.

    Without the masks, a connection that RigL/SET/prune dropped would live on in
    the target, decaying as (1 - tau)^k. rigl's SAC (`rigl/rl/tfagents/sac_train_eval.py`
    on TF-Agents' SacAgent) copies the masks, non-trainable variables of its
    sparse layers, into the target every step (`soft_variables_update(...,
    tau_non_trainable=1.0)`), so the target never uses a weight off the online
    mask.
    """
    return apply_masks(optax.incremental_update(state.params, target_params, tau), state.opt_state.masks)


def clip_by_joint_norm(states: Sequence[NetworkState], dense_grads: Sequence[Any], max_norm: float) -> list[Any]:
    """Scales the dense grads of several networks by min(1, max_norm / ||g||), ||g|| the global norm of the
    gradients they apply (on their masks) taken together.

    This is CleanRL's `nn.utils.clip_grad_norm_(agent.parameters(), max_grad_norm)` and SB3's
    `clip_grad_norm_(policy.parameters(), ...)` over actor and critic at once. One factor scales every
    gradient, so RigL's growth ranking by |dense gradient| is unchanged.
    """
    applied = [apply_masks(grads, state.opt_state.masks) for state, grads in zip(states, dense_grads)]
    return _scaled_to_norm(applied, dense_grads, max_norm)


def _scaled_to_norm(applied: Sequence[Any], grads: Sequence[Any], max_norm: float) -> list[Any]:
    """`grads` scaled by min(1, max_norm / ||applied||), `applied` the parts of them the optimizer applies."""
    norm = optax.tree.norm(list(applied))
    scale = jnp.minimum(1.0, max_norm / jnp.maximum(norm, 1e-12))
    return [jax.tree.map(lambda grad: grad * scale, network_grads) for network_grads in grads]
