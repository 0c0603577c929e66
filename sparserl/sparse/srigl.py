"""SRigL: RigL with constant fan-in and neuron ablation (Lasby et al. 2023, "Dynamic Sparse Training with
Structured Sparsity", ICLR 2024: the SRigL algorithm and its "neuron ablation" step).

Read from the paper's algorithm and its reference code (calgaryml/condensed-sparsity,
`rigl_torch/rigl_constant_fan.py`: `_rigl_step`, `_get_neurons_to_ablate`,
`utils/rigl_utils.get_fan_in_after_ablation`). Every masked layer has
`fan_in` structure: each active neuron keeps k inputs, k = f - floor(s * f)
(`sparserl.sparse.structure`), and the layer's budget is B = out * k. On a
topology update with drop fraction f_t (RigL's cosine schedule):

1. n = nnz, n_prune = floor(f_t * n), n_keep = n - n_prune. Drop the n_prune
   active weights of smallest magnitude over the whole layer (as RigL).
2. Saliency: a weight is salient when it is among the n_keep largest |w| or
   among the n_prune largest dense |grad| of the layer (RigL's keep and grow
   criteria). c_j counts neuron j's salient weights.
3. Ablation: neuron j is ablated when c_j < gamma_sal * k (at least 1),
   gamma_sal = `ablation_threshold` (the paper's default 0.3). The threshold
   is relative to the sparse fan-in k (the reference's
   `use_sparse_const_fan_in_for_ablation`): relative to the dense fan-in, at
   90% sparsity 0.3 * f exceeds the k salient weights a neuron holds on
   average and would ablate nearly every neuron. At least ceil(n / f) neurons
   stay active, so that k' <= f: the threshold is lowered to the salient count
   of the neuron of that rank when it would ablate more (the reference keeps
   one neuron more, indexing the sorted counts at ceil(n / f)). The output
   layer of every sub-network is never ablated; gamma_sal = 0 ablates nothing.
4. Redistribution: the A active neurons share the budget, k' = min(f,
   floor(B / A)); an ablated neuron keeps no input. Each active neuron keeps
   at most k' of its surviving weights (largest magnitude first) and grows
   the rest, up to k', by the largest dense |grad| among its inputs not kept.

So every active column has exactly k' inputs and every ablated one 0;
ablation is decided again at every update (a neuron whose gradients grow
salient comes back). Without ablation (threshold 0) this is RigL with a
layer-wide drop and a per-neuron regrow.
"""

import dataclasses

import jax
import jax.numpy as jnp

from sparserl.errors import ConfigError
from sparserl.sparse import structure as structure_lib
from sparserl.sparse.distributions import first_and_last_layers, kernel_shapes
from sparserl.sparse.structure import FAN_IN, NM, Structure, group_ranks, to_groups
from sparserl.sparse.topology import DropAndGrowSettings, RigL, map_masked_layers, register

COLUMNS = Structure(FAN_IN)


def _largest(scores: jax.Array, count) -> jax.Array:
    """True on the `count` largest entries of each row (count: scalar or [rows, 1]); ties keep the first position."""
    return group_ranks(-scores) < count


def ablated_neurons(weights: jax.Array, mask: jax.Array, grads: jax.Array, drop_fraction, kept_per_neuron,
                    ablation_threshold: float) -> jax.Array:
    """[out] bool: the neurons SRigL ablates at this update (steps 1-3 of the module docstring)."""
    magnitudes = jnp.abs(weights).reshape(1, -1)
    num_active = jnp.sum(mask)
    num_prune = jnp.floor(drop_fraction * num_active).astype(jnp.int32)
    salient = _largest(magnitudes, num_active - num_prune) | _largest(jnp.abs(grads).reshape(1, -1), num_prune)
    counts = jnp.sum(salient.reshape(weights.shape).reshape(-1, weights.shape[-1]), axis=0)
    fan_in = structure_lib.fan_in(weights.shape)
    threshold = jnp.maximum(1, jnp.floor(ablation_threshold * kept_per_neuron)).astype(counts.dtype)
    min_active = jnp.clip(-(-num_active // fan_in), 1, counts.size)
    threshold = jnp.minimum(threshold, jnp.sort(counts)[::-1][min_active - 1])
    return counts < threshold


def srigl_mask(weights: jax.Array, mask: jax.Array, grads: jax.Array, drop_fraction, kept_per_neuron,
               ablated: jax.Array) -> jax.Array:
    """One SRigL mask update of a layer given its ablated neurons (steps 1 and 4 of the module docstring)."""
    num_active = jnp.sum(mask)
    num_prune = jnp.floor(drop_fraction * num_active).astype(jnp.int32)
    drop_scores = jnp.where(mask, jnp.abs(weights), jnp.inf).reshape(1, -1)
    survived = to_groups(COLUMNS, mask & (group_ranks(drop_scores) >= num_prune).reshape(mask.shape))  # [out, f]
    out, fan_in = survived.shape
    budget = out * kept_per_neuron
    active_neurons = out - jnp.sum(ablated)
    new_fan_in = jnp.minimum(fan_in, budget // active_neurons)
    magnitudes = to_groups(COLUMNS, jnp.abs(weights))
    kept = survived & _largest(jnp.where(survived, magnitudes, -jnp.inf), new_fan_in) & ~ablated[:, None]
    missing = jnp.where(ablated, 0, new_fan_in - jnp.sum(kept, axis=1))[:, None]
    grown = _largest(jnp.where(kept, -jnp.inf, to_groups(COLUMNS, jnp.abs(grads))), missing)
    return structure_lib.from_groups(COLUMNS, kept | grown, mask.shape)


@dataclasses.dataclass(frozen=True)
class SRigLSettings(DropAndGrowSettings):
    """RigL's settings and gamma_sal, the neuron-ablation threshold (step 3 of the module docstring; 0 ablates
    nothing)."""

    ablation_threshold: float


@register
class SRigL(RigL):
    """RigL with constant fan-in and neuron ablation; `ablation_threshold` is the paper's gamma_sal."""

    name = "srigl"
    settings_type = SRigLSettings

    def structure_for(self, structure: str) -> str:
        if structure_lib.parse(structure).kind == NM:
            raise ConfigError("sparse.structure",
                              f"--method=srigl keeps a constant fan-in; use fan_in (the default for srigl), not {structure}")
        return FAN_IN

    def ablating_layers(self, params, config):
        """Every layer but each sub-network's output layer; none when gamma_sal = 0."""
        if config.settings.ablation_threshold == 0:
            return frozenset()
        layers = list(kernel_shapes(params))
        _, output_layers = first_and_last_layers(layers)
        return frozenset(layers) - set(output_layers)

    def update_masks(self, key, step, params, dense_grads, masks, sparsities, config):
        del key
        fraction = self.drop_fraction(step, config)
        threshold = config.settings.ablation_threshold
        ablating = self.ablating_layers(params, config)

        def update(index, layer, sparsity, mask, weights, grads):
            del index
            fan_in = structure_lib.fan_in(mask.shape)
            kept_per_neuron = fan_in - structure_lib.zero_count(sparsity, fan_in)
            if layer in ablating:
                ablated = ablated_neurons(weights, mask, grads, fraction, kept_per_neuron, threshold)
            else:
                ablated = jnp.zeros(mask.shape[-1], bool)
            return srigl_mask(weights, mask, grads, fraction, kept_per_neuron, ablated)

        return map_masked_layers(update, sparsities, masks, params, dense_grads)

