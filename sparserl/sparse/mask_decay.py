"""Pruning mask decay: N:M sparsity reached by decaying the pruned weights' mask value from 1 to 0 (Kao,
Yazdanbakhsh, Subramanian, Agrawal, Evci and Krishna 2022, "Training Recipe for N:M Structured Sparsity with
Decaying Pruning Mask", arXiv 2209.07617, section "Pruning mask decay"; called MDGF, mask decay gradient flow,
with its linear schedule MDGF-Linear, in the authors' follow-up, Bambhaniya et al. 2024, arXiv 2402.04744).

Dense weights W are kept and trained; the forward pass uses

    W~_t = W ⊙ (E + beta_t * (1 - E)),

E the N:M mask of the N largest |W| in every group of M inputs, so a pruned
weight is not cut at once: it enters the network scaled by beta_t, which
decays linearly (MDGF-Linear),

    beta_t = clip(1 - (t - update_start) / (update_end - update_start), 0, 1):

1 up to `update_start`, 0 from `update_end` on. The gradient reaching W is
the chain rule through W~, dL/dW = g ⊙ (E + beta_t * (1 - E)) with g = dL/dW~,
so the gradient flow to the pruned weights is scaled by beta_t and stops at
update_end. (With Adam as the inner optimizer, the scale of a weight's
gradient largely cancels in its update; what beta_t takes away from a pruned
weight is then mainly its share of the forward pass. The code of the
authors' follow-up (github.com/abhibambhaniya/progressive_gradient_flow_nm_sparsity,
`timm/sparse_pruning/sparse_functions.py`, `LinearDecay`) passes g unscaled,
a straight-through estimator; we follow the chain rule.) E is recomputed
from |W| every `update_period` steps in [update_start, update_end) (the
paper: every step) and once more at the window's last step; from update_end
on the mask is fixed and the network is exactly N:M sparse, the authors'
binary-mask fine-tuning phase.

How it fits the mask/optimizer wrapper: `t` is the gradient step whose
gradient is applied (`state.step` of the agents, 0 at the first update); the
params the agents see at step t are W~_t. The wrapper's masks are the
support of those params, so docs/design.md contract 3 (params zero off the
masks) holds all along: all-True while beta > 0 (the network is dense, like
`prune` early on: its sparsity is logged as 0, and it starts at the dense
init scale, since all-True masks need no sparse rescaling), E from
update_end on. W and E live in the method's own state
(`SparseOptState.topology`, a `MaskDecayState`). Each step W's entries on E
are taken from the params (so what ReDo writes there holds; off E, W's own
values are kept, as SR-STE does), the inner optimizer updates every entry
unmasked, and the params become W ⊙ (E + beta_{t+1} (1 - E)), the network
of the next step. The optimizer moments are kept when E changes (every
weight is trained all along).
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from sparserl.sparse.config import Window
from sparserl.sparse.topology import DenseWeightsBehindNM, register


class MaskDecayState(NamedTuple):
    weights: Any  # the dense weights W, shaped like the params
    nm_masks: Any  # E: all-True until the first update step (beta is 1 there), then the N:M magnitude mask of |W|


def mask_value(step, window: Window) -> jax.Array:
    """beta_t = clip(1 - (t - update_start) / (update_end - update_start), 0, 1): the pruned weights' mask value."""
    progress = (step - window.update_start) / (window.update_end - window.update_start)
    return jnp.clip(1.0 - progress, 0.0, 1.0)


@register
class MaskDecay(DenseWeightsBehindNM):
    """Pruning mask decay, linear (Kao et al. 2022, MDGF-Linear; see the module docstring): dense until
    update_end, its params zero off the N:M mask E only from then on; E and the dense weights in its state."""

    name = "mask_decay"
    dense_init = True

    def init_state(self, params, masks):
        return MaskDecayState(weights=params, nm_masks=masks)

    def is_update_step(self, step, config):
        """Every `update_period` steps from update_start on, and the window's last step, in [update_start, update_end)."""
        window = config.settings
        in_window = (step >= window.update_start) & (step < window.update_end)
        periodic = (step - window.update_start) % window.update_period == 0
        return in_window & (periodic | (step == window.update_end - 1))

    def update(self, key, step, params, dense_grads, masks, state, sparsities, config):
        """E from the dense weights' magnitudes (N of every M); the wrapper's masks become E when beta reaches 0."""
        del key, dense_grads
        nm_masks = self.magnitude_nm_masks(params, state.nm_masks, sparsities, config)
        last = step == config.settings.update_end - 1
        masks = jax.tree.map(lambda mask, nm_mask: jnp.where(last, nm_mask, mask), masks, nm_masks)
        return masks, state._replace(nm_masks=nm_masks)

    def train_params_and_grads(self, step, params, dense_grads, masks, state, config):
        del masks
        beta = mask_value(step, config.settings)
        weights = jax.tree.map(jnp.where, state.nm_masks, params, state.weights)
        grads = jax.tree.map(lambda grad, nm_mask: jnp.where(nm_mask, grad, beta * grad), dense_grads, state.nm_masks)
        return weights, grads

    def finish(self, step, trained, masks, state, config):
        del masks
        beta = mask_value(step + 1, config.settings)
        params = jax.tree.map(lambda weights, nm_mask: jnp.where(nm_mask, weights, beta * weights), trained, state.nm_masks)
        return params, state._replace(weights=trained)
