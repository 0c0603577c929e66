"""Measures of a network's plasticity beside tau-dormancy (`sparserl.dormancy`): gradient-magnitude neuron activity
(GraMa), effective feature rank and weight magnitude, on the batch the dormancy is measured on.

GraMa (Liu et al. 2025, "Measure gradients, not activations! Enhancing neuronal activity in deep RL", arXiv
2505.24061, the GraMa score): the dormancy score of Sokar et al. 2023 (eq. 1) with the gradient of the agent's loss
in place of the activation. Neuron i of a layer scores g_i / (1/H sum_k g_k), g_i the mean |dL/dw| over its incoming
weights, L the agent's own loss on the measured batch, and is tau-inactive iff its score <= tau. As the authors'
code computes it (github torressliu/grad-based-plasticity-metrics, read in its copy rippl-svg/grad-based-plasticity-
metrics at afaecd7, `utils/ReDo.py`, `GradientReDo._get_redo_masks`:
`grad_magnitude = layer.weight.grad.abs().mean(dim=1)`, conv `.mean(dim=(1, 2, 3))`,
`normalized_grad = grad_magnitude / (grad_magnitude.mean() + 1e-9)`, `mask[normalized_grad <= tau] = 1`, on the
gradients the training step's backward pass left). Under a sparse mask the mean runs over the neuron's kept incoming
weights, those the sparse optimizer updates (docs/design.md contract 3; on a dense layer, the authors' mean); a
layer whose gradients are all zero scores 0 everywhere (where the authors' epsilon also gives 0). The layers are the
hidden layers dormancy scores, at its taus (`dormancy.DEFAULT_TAUS`).

srank (Kumar et al. 2021, "Implicit Under-Parameterization Inhibits Data-Efficient Deep RL", section 3, the
effective rank of a feature matrix): srank_delta(Phi) = min{k : sum_{i<=k} sigma_i / sum_i sigma_i >= 1 - delta},
sigma_1 >= sigma_2 >= ... the singular values of Phi, delta = 0.01. Here Phi is each hidden layer's post-activation
output, one row per sample and one column per neuron (conv: a row per sample and spatial position, a column per
channel, the neurons dormancy scores).

Weight magnitude: each layer's mean |w| over its kept (mask-True) kernel weights, the scale a sparse layer
actually computes with (pruned weights are zero and would only dilute it).

Everything here is pure, jittable and vmappable over seeds (docs/design.md contract 1).
"""

from typing import Any, Collection

import jax
import jax.numpy as jnp

from sparserl import dormancy
from sparserl.networks import POST_ACTIVATION
from sparserl.sparse.distributions import leaf_name
from sparserl.sparse.masks import layer_of

SRANK_DELTA = 0.01


@jax.custom_batching.sequential_vmap
def singular_values(features: jax.Array) -> jax.Array:
    """The singular values of a [rows, columns] matrix, largest first.

    Batched (seeds are a vmap axis) they are computed one matrix after another: jaxlib 0.10.2 on CPU deadlocks
    on batched LAPACK factorizations (docs/design.md section 7), so a batch is a loop of unbatched SVDs. The thin
    SVD: without `full_matrices=False` XLA allocates a [rows, rows] U even for singular values only (42 GB for a
    Nature CNN conv layer's 256 x 20 x 20 rows).
    """
    return jnp.linalg.svd(features, full_matrices=False, compute_uv=False)


def effective_rank(features: jax.Array, delta: float = SRANK_DELTA) -> jax.Array:
    """srank_delta of a [rows, columns] feature matrix (Kumar et al. 2021, section 3); 0 for an all-zero matrix."""
    sigma = singular_values(features)
    total = jnp.sum(sigma)
    explained = jnp.cumsum(sigma) / jnp.where(total > 0, total, 1.0)
    rank = jnp.sum(explained < 1.0 - delta) + 1
    return jnp.where(total > 0, rank, 0).astype(jnp.float32)


def srank_metrics(activations: Any, prefix: str = "srank", delta: float = SRANK_DELTA) -> dict[str, jax.Array]:
    """`{prefix}/<layer>`: srank_delta of every hidden layer's post-activation outputs in `activations`, the
    `networks.ACTIVATIONS` collection of a forward pass (docs/design.md contract 6)."""
    metrics = {}
    for path, outputs in jax.tree_util.tree_flatten_with_path(activations)[0]:
        name = leaf_name(path)
        if name.endswith(POST_ACTIVATION):
            layer = name[: -len(POST_ACTIVATION)].rstrip("/")
            metrics[f"{prefix}/{layer}"] = effective_rank(outputs.reshape(-1, outputs.shape[-1]), delta)
    return metrics


def weight_magnitudes(params: Any, masks: Any, prefix: str = "weight_magnitude") -> dict[str, jax.Array]:
    """`{prefix}/<layer>`: the mean |w| over the kept weights of every kernel (0 for a layer with none kept)."""
    metrics = {}
    flat_masks = jax.tree.leaves(masks)
    for (path, kernel), mask in zip(jax.tree_util.tree_flatten_with_path(params)[0], flat_masks):
        layer = layer_of(path)
        if layer is None or kernel.ndim < 2:
            continue
        kept = jnp.sum(mask)
        total = jnp.sum(jnp.where(mask, jnp.abs(kernel), 0.0))
        metrics[f"{prefix}/{layer}"] = total / jnp.maximum(kept, 1)
    return metrics


def gradient_scores(grads: Any, masks: Any, layers: Collection[str]) -> dict[str, jax.Array]:
    """Layer path -> per-neuron GraMa scores (Liu et al. 2025) of the named `layers`, from the gradients `grads`
    of the agent's loss (a pytree like the params) and the `masks`: per output neuron (conv: per output channel)
    the mean |grad| over its kept incoming kernel weights, divided by the layer mean (`dormancy.relative_to_layer_mean`)."""
    scores = {}
    for (path, grad), mask in zip(jax.tree_util.tree_flatten_with_path(grads)[0], jax.tree.leaves(masks)):
        layer = layer_of(path)
        if layer not in layers or grad.ndim < 2:
            continue
        incoming = tuple(range(grad.ndim - 1))
        kept = jnp.maximum(jnp.sum(mask, axis=incoming), 1)
        scores[layer] = dormancy.relative_to_layer_mean(jnp.sum(jnp.where(mask, jnp.abs(grad), 0.0), axis=incoming) / kept)
    return scores
