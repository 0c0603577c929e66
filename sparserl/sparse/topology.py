"""Topology methods by name: the extension point of sparse training (like jaxpruner's updaters).

A method is a `Topology` subclass registered by name with `@register`. It
says how masks start (`init_masks`, and `init_state` for state of its own),
when they change (`is_update_step`) and how (`update`), its own settings
(`settings_type`, a frozen dataclass read from its config block
`sparse.<name>`: so no agent or config helper special-cases a method), and,
through three hooks, how the optimizer wrapper (`sparserl.sparse.optimizer`)
trains the weights:
`train_params_and_grads`, `masked_updates` and `finish` (both given the
gradient step, for methods whose weights depend on it). The defaults train
the weights on the mask (docs/design.md contract 3); SR-STE (`sparserl.sparse.srste`)
overrides them to train dense weights behind the mask, and pruning mask decay
(`sparserl.sparse.mask_decay`) to train dense weights behind a mask whose
pruned entries fade from 1 to 0 over the window.

Drop-and-grow methods (`DropAndGrow`) supply drop scores and grow scores; the
update itself is written once (`drop_and_grow`):

- SET (Mocanu et al. 2018): drop the smallest-magnitude active weights, grow
  as many connections uniformly at random among those not kept.
- RigL (Evci et al. 2020, Algorithm 1): SET with another grow score, the
  dense gradient magnitude on the current batch.
- SRigL (Lasby et al. 2023, `sparserl.sparse.srigl`): RigL with constant
  fan-in and neuron ablation.
- prune (Zhu & Gupta 2017): from dense, keep the largest magnitudes at the
  cubic schedule's sparsity, per layer s_t^l = s_f^l * (1 - (1 - p)^3).

Every method keeps the config's structure (`sparserl.sparse.structure`): it
draws, drops, grows and prunes within each group (the whole kernel, a
neuron's fan-in, or a group of M inputs), so each group's count holds.

A new method: one file with a subclass decorated `@register` (and, if it has
settings of its own, their dataclass and its config block in
`configs/base.py:add_schedules`), imported in `sparserl/sparse/__init__.py`,
and its test.
"""

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from sparserl.errors import ConfigError
from sparserl.sparse import masks as mask_lib
from sparserl.sparse import schedules
from sparserl.sparse import structure as structure_lib
from sparserl.sparse.config import Settings, SparsityConfig, Window
from sparserl.sparse.distributions import masked_layers
from sparserl.sparse.structure import Structure, group_ranks, to_groups

UNSTRUCTURED = Structure()


def drop_and_grow(weights: jax.Array, mask: jax.Array, grow_scores: jax.Array, drop_fraction,
                  structure: Structure = UNSTRUCTURED, drop_scores: jax.Array | None = None) -> jax.Array:
    """One SET/RigL mask update of a layer; the number of active connections of every group is unchanged.

    Drops n = floor(f * nnz) active weights of smallest drop score (default
    |w|) over the whole layer, then regrows, in every group (`structure`), as
    many connections as the group lost, those of largest `grow_scores` among
    its connections not kept (so a dropped connection may be grown back).
    Unstructured: one group, n grown in the layer. fan_in / nm: each neuron
    (group of M) is refilled to its count, as the SRigL reference code does
    for RigL with constant fan-in (`rigl_constant_fan.py`: a layer-wide drop,
    a per-neuron regrow). A per-group drop, floor(f * k) per neuron, would
    change nothing while f * k < 1 (k = 2 in 2:4, k = 1 on a 4-input layer at 90%).
    """
    drop_scores = jnp.abs(weights) if drop_scores is None else drop_scores
    num_changed = jnp.floor(drop_fraction * jnp.sum(mask)).astype(jnp.int32)
    layer_drop = jnp.where(mask, drop_scores, jnp.inf).reshape(1, -1)
    kept = to_groups(structure, mask & (group_ranks(layer_drop) >= num_changed).reshape(mask.shape), fill=False)
    missing = structure_lib.group_counts(structure, mask)[:, None] - jnp.sum(kept, axis=1, keepdims=True)
    real = structure_lib.valid(structure, mask.shape)
    grouped_grow = jnp.where(kept | ~real, -jnp.inf, to_groups(structure, grow_scores))
    grown = group_ranks(-grouped_grow) < missing
    return structure_lib.from_groups(structure, kept | grown, mask.shape)


def magnitude_mask(weights: jax.Array, mask: jax.Array, sparsity, structure: Structure = UNSTRUCTURED) -> jax.Array:
    """Keeps, in every group, the largest-magnitude active weights at `sparsity`; pruned weights stay pruned.

    Unstructured: n - floor(s * n) kept. fan_in: every neuron keeps
    k = f - floor(s * f). nm: see `structure.kept_per_group`.
    """
    scores = jnp.where(mask, jnp.abs(weights), -1.0)
    return structure_lib.keep_largest(structure, scores, structure_lib.kept_per_group(structure, weights.shape, sparsity))


def map_masked_layers(fn: Callable, sparsities: Mapping[str, float], masks: Any, *trees: Any) -> Any:
    """Applies fn(index, layer, layer_sparsity, mask, *leaves) to masked kernels; other masks are returned as they are.

    `index` is the leaf's position in the flattened tree (for per-leaf keys);
    a tree given as None passes None leaves.
    """
    flat_masks, treedef = jax.tree_util.tree_flatten_with_path(masks)
    flat_trees = [[None] * len(flat_masks) if tree is None else jax.tree.leaves(tree) for tree in trees]
    new_masks = []
    for index, (path, mask) in enumerate(flat_masks):
        layer = mask_lib.layer_of(path)
        if layer in sparsities:
            new_masks.append(fn(index, layer, sparsities[layer], mask, *(leaves[index] for leaves in flat_trees)))
        else:
            new_masks.append(mask)
    return jax.tree.unflatten(treedef, new_masks)


class Topology:
    """A method that never changes its masks (the base of every other one).

    Class attributes a subclass sets:
    - `name`: the registry name (`sparse.method`);
    - `settings_type`: the dataclass of its own settings (`SparsityConfig.settings`),
      read from its config block `sparse.<name>` (`sparserl.sparse.config.read_settings`);
    - `dense_init`: start from all-True masks (prune);
    - `reset_moments`: zero the optimizer moments of changed connections;
    - `grows_from_gradients`: its update reads the dense gradient (RigL, SRigL), so native condensed kernels,
      whose kernel gradient lives on the mask only, run the masked network on its update steps;
    - `sparsity_changes`: each layer's kept count changes over training (prune); such a method gives
      `sparsity_at`, the count the condensed kernels run at (`sparserl.sparse_network`), and `sparsity_steps`,
      the steps at which it changes.
    """

    name = "static"
    settings_type: type[Settings] = Settings
    dense_init = False
    grows_from_gradients = False
    sparsity_changes = False
    reset_moments = True
    masked_updates = True  # updates are masked before they are applied

    def structure_for(self, structure: str) -> str:
        """The structure this method trains, given `sparse.structure` (ConfigError when it cannot)."""
        return structure

    def init_masks(self, key: jax.Array, params: Any, sparsities: Mapping[str, float],
                   structure: Structure = UNSTRUCTURED) -> Any:
        if self.dense_init:
            return mask_lib.dense_masks(params)
        return mask_lib.random_masks(key, params, sparsities, structure)

    def ablating_layers(self, params: Any, config: SparsityConfig) -> frozenset:
        """Layers whose neurons may keep other than k inputs within the layer's budget out * k (SRigL's ablation):
        native kernels run them as slots with offsets (`sparserl.sparse.condensed.variable_fan_in`). None by
        default."""
        del params, config
        return frozenset()

    def init_state(self, params: Any, masks: Any) -> Any:
        """State of the method's own, carried in `SparseOptState.topology` (none by default)."""
        del params, masks
        return ()

    def is_update_step(self, step: jax.Array, config: SparsityConfig) -> jax.Array:
        """Never: False for a step given as a Python int (the host's plan, no array made), else an all-False array
        (a constant XLA folds, so a branch on it costs nothing)."""
        del config
        return False if isinstance(step, int) else jnp.zeros_like(step, dtype=bool)

    def update_masks(self, key, step, params, dense_grads, masks, sparsities, config: SparsityConfig) -> Any:
        """New masks on an update step (called under `lax.cond`)."""
        del key, step, params, dense_grads, sparsities, config
        return masks

    def update(self, key, step, params, dense_grads, masks, state, sparsities, config: SparsityConfig):
        """(new masks, new state) on an update step; methods with state override this."""
        return self.update_masks(key, step, params, dense_grads, masks, sparsities, config), state

    def train_params_and_grads(self, step, params, dense_grads, masks, state, config: SparsityConfig):
        """The weights the inner optimizer trains at gradient step `step` and their gradients: the params and the
        masked gradients."""
        del step, state
        return params, mask_lib.apply_masks(dense_grads, masks, masked_layers(params, config))

    def finish(self, step, trained, masks, state, config: SparsityConfig):
        """(params, state) after gradient step `step`: the trained weights on the (possibly new) masks."""
        del step
        return mask_lib.apply_masks(trained, masks, masked_layers(trained, config)), state


TOPOLOGIES: dict[str, Topology] = {}


def register(cls: type[Topology]) -> type[Topology]:
    """Class decorator: adds an instance of a Topology subclass to TOPOLOGIES under its `name`."""
    TOPOLOGIES[cls.name] = cls()
    return cls


@register
class Dense(Topology):
    name = "dense"
    dense_init = True


register(Topology)  # 'static': the initial random mask never changes


@dataclasses.dataclass(frozen=True)
class DropAndGrowSettings(Window):
    """SET's and RigL's settings: their window and f0, the fraction of each layer's active weights dropped at
    `update_start`, cosine-decayed (Evci et al. 2020, eq. 1)."""

    drop_fraction: float


class DropAndGrow(Topology):
    """Drop the lowest drop scores, grow the highest grow scores, every `update_period` steps (cosine fraction).

    f_t = f0 * 0.5 * (1 + cos(pi * min(t, T_end) / T_end)) (Evci et al. 2020, eq. 1), t counted from
    `update_start`. Subclasses supply `grow_scores` (and may override `drop_scores`).
    """

    settings_type = DropAndGrowSettings

    def drop_scores(self, weights: jax.Array) -> jax.Array:
        return jnp.abs(weights)

    def grow_scores(self, key: jax.Array, weights: jax.Array, grads: jax.Array | None) -> jax.Array:
        raise NotImplementedError

    def is_update_step(self, step, config):
        return config.settings.is_periodic_step(step)

    def drop_fraction(self, step, config):
        settings = config.settings
        return schedules.cosine_drop_fraction(step - settings.update_start, settings.drop_fraction,
                                              settings.update_end - settings.update_start)

    def update_masks(self, key, step, params, dense_grads, masks, sparsities, config):
        fraction = self.drop_fraction(step, config)
        structure = config.parsed_structure
        keys = jax.random.split(key, len(jax.tree.leaves(masks)))

        def update(index, layer, sparsity, mask, weights, grads):
            del layer, sparsity
            return drop_and_grow(weights, mask, self.grow_scores(keys[index], weights, grads), fraction, structure,
                                 self.drop_scores(weights))

        return map_masked_layers(update, sparsities, masks, params, dense_grads)


@register
class SET(DropAndGrow):
    name = "set"

    def grow_scores(self, key, weights, grads):
        del grads
        return jax.random.uniform(key, weights.shape)


@register
class RigL(DropAndGrow):
    name = "rigl"
    grows_from_gradients = True

    def grow_scores(self, key, weights, grads):
        del key, weights
        return jnp.abs(grads)


@register
class Prune(Topology):
    """Gradual magnitude pruning (Zhu & Gupta 2017, eq. 1) from dense, every `update_period` steps in [t0, t1].

    Each layer's target s_t = s_f^l * (1 - (1 - (t - t0)/(t1 - t0))^3) becomes
    a count per group (`magnitude_mask`): fan_in keeps k_t = f - floor(s_t * f)
    inputs in every column; nm removes floor(p_t * (M - N)) of every group of
    M, p_t = s_t / s_f the cubic progress, so N remain at t1.
    """

    name = "prune"
    settings_type = Window
    dense_init = True
    sparsity_changes = True

    def is_update_step(self, step, config):
        window = config.settings
        return schedules.is_pruning_step(step, window.update_period, window.update_start, window.update_end)

    def update_masks(self, key, step, params, dense_grads, masks, sparsities, config):
        del key, dense_grads
        structure, window = config.parsed_structure, config.settings

        def update(index, layer, final_sparsity, mask, weights):
            del index, layer
            target = schedules.cubic_sparsity(step, final_sparsity, window.update_start, window.update_end)
            return magnitude_mask(weights, mask, target, structure)

        return map_masked_layers(update, sparsities, masks, params)

    def sparsity_at(self, step, final_sparsity, config):
        """A layer's sparsity while gradient step `step` runs its forward pass: the target of the last pruning
        step before it (masks change at the end of a step), 0 before t0, s_f from t1 on. The same float32 ops as
        `update_masks`, so fan_in's kept count floor-rounds to the masks' exactly."""
        window = config.settings
        previous = step - 1
        periodic = window.update_start + (previous - window.update_start) // window.update_period * window.update_period
        last_pruning_step = jnp.where(previous >= window.update_end, window.update_end, periodic)
        target = schedules.cubic_sparsity(last_pruning_step, final_sparsity, window.update_start, window.update_end)
        return jnp.where(previous >= window.update_start, target, 0.0)

    def sparsity_steps(self, config) -> tuple[int, ...]:
        """The gradient steps from which `sparsity_at` may take a new value, ascending: 0, and the step after each
        pruning step (`schedules.is_pruning_step`: every `update_period` steps in [t0, t1], and t1)."""
        window = config.settings
        pruning = {*range(window.update_start, window.update_end + 1, window.update_period), window.update_end}
        return (0, *sorted(step + 1 for step in pruning))


class DenseWeightsBehindNM(Topology):
    """Base of the methods that train every dense weight behind an N:M mask E recomputed from their magnitudes
    (SR-STE, `sparserl.sparse.srste`; pruning mask decay, `sparserl.sparse.mask_decay`): an N:M structure only,
    moments kept when E changes (every weight was trained), updates applied unmasked."""

    settings_type = Window
    reset_moments = False
    masked_updates = False

    def structure_for(self, structure: str) -> str:
        if structure_lib.parse(structure).kind != structure_lib.NM:
            raise ConfigError("sparse.structure",
                              f"--method={self.name} trains N:M sparsity; pass --structure=nm:N:M (e.g. nm:2:4)")
        return structure

    def magnitude_nm_masks(self, params, masks, sparsities, config: SparsityConfig):
        """E of every masked layer of `masks`: the N largest |W| of every group of M, whatever the previous mask."""
        structure = config.parsed_structure
        return map_masked_layers(
            lambda index, layer, sparsity, mask, weights: magnitude_mask(weights, jnp.ones_like(mask), sparsity, structure),
            sparsities, masks, params)


def get_topology(name: str) -> Topology:
    """The registered method `name` (ConfigError, field `sparse.method`, for an unknown one)."""
    if name not in TOPOLOGIES:
        raise ConfigError("sparse.method",
                          f"unknown sparse training method {name!r}; choose one of {', '.join(TOPOLOGIES)}")
    return TOPOLOGIES[name]
