"""SR-STE: N:M sparsity trained with the sparse-refined straight-through estimator (Zhou et al. 2021,
"Learning N:M Fine-grained Structured Sparse Neural Networks From Scratch", section 4, eq. 6).

SR-STE keeps dense weights W and trains them all; the forward pass uses the
N:M-sparse W~ = E ⊙ W, E the mask of the N largest |W| in every group of M
inputs. Its update (eq. 6) is

    W <- W - lr * (g(W~) + lambda_W * (Ē ⊙ W)),

the straight-through gradient g(W~) = dL/dW~ applied to every dense weight,
plus a decay lambda_W (`decay`, the paper's 2e-4) of the pruned ones only
(Ē = 1 - E), which pulls them toward zero so that the mask settles.

How it fits the mask/optimizer wrapper: the params the agents see (and the
forward pass uses) stay W~, masked with exact zeros (docs/design.md contract 3), so
the gradient the agent computes is g(W~) at every position. W lives in the
method's own state (`SparseOptState.topology`). Each step the wrapper trains W:
W's active entries are taken from the params first (so what ReDo or the
sparse-fan-in init wrote there holds; pruned entries are W's own), the
gradient is g + lambda_W * Ē ⊙ W, the inner optimizer (Adam here, where the
paper uses SGD: the decay is added to the gradient, before Adam's scaling)
updates every entry unmasked, and the params become E ⊙ W. Every
`update_period` steps (the paper: every step) E is recomputed from |W|, and
the optimizer moments are kept (no connection is new: all were trained).
The initial E is the N:M magnitude mask of the initial weights.
"""

import dataclasses

import jax
import jax.numpy as jnp

from sparserl.sparse import masks as mask_lib
from sparserl.sparse import structure as structure_lib
from sparserl.sparse.config import Window
from sparserl.sparse.distributions import masked_layers
from sparserl.sparse.topology import DenseWeightsBehindNM, magnitude_mask, map_masked_layers, register


@dataclasses.dataclass(frozen=True)
class SRSTESettings(Window):
    """SR-STE's settings: when E is recomputed, and lambda_W, the decay of the pruned weights (eq. 6)."""

    decay: float


@register
class SRSTE(DenseWeightsBehindNM):
    name = "srste"
    settings_type = SRSTESettings

    def init_masks(self, key, params, sparsities, structure=structure_lib.Structure()):
        del key
        return map_masked_layers(
            lambda index, layer, sparsity, mask, weights: magnitude_mask(weights, mask, sparsity, structure),
            sparsities, mask_lib.dense_masks(params), params)

    def init_state(self, params, masks):
        del masks
        return params  # the dense weights W

    def is_update_step(self, step, config):
        return config.settings.is_periodic_step(step)

    def update_masks(self, key, step, params, dense_grads, masks, sparsities, config):
        """E from the dense weights' magnitudes: N of every M, whatever the previous mask."""
        del key, step, dense_grads
        return self.magnitude_nm_masks(params, masks, sparsities, config)

    def train_params_and_grads(self, step, params, dense_grads, masks, state, config):
        del step
        dense = jax.tree.map(jnp.where, masks, params, state)
        decay = config.settings.decay
        grads = jax.tree.map(lambda grad, weight, mask: grad + decay * jnp.where(mask, 0.0, weight), dense_grads, dense, masks)
        return dense, grads

    def finish(self, step, trained, masks, state, config):
        del step, state
        return mask_lib.apply_masks(trained, masks, masked_layers(trained, config)), trained
