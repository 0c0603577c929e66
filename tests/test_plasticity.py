"""Tests for sparserl.plasticity: GraMa (Liu et al. 2025), srank (Kumar et al. 2021) and weight magnitude, against
plain numpy on a hand-built network with a masked layer, and srank under vmap."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sparserl import networks, plasticity, sparse_network
from sparserl.sparse import SparsityConfig

# A 2 -> 3 -> 1 ReLU MLP whose hidden layer is masked; hidden neuron 2 only sees -x_0 < 0, so it is dead.
INPUTS = np.array([[1.0, 2.0], [2.0, -1.0], [0.5, 0.5], [3.0, 1.0]], np.float32)
HIDDEN_MASK = np.array([[True, False, True], [True, True, False]])
HIDDEN_KERNEL = np.array([[0.5, 0.0, -1.0], [-0.25, 2.0, 0.0]], np.float32)
HIDDEN_BIAS = np.array([0.1, 0.0, 0.0], np.float32)
OUTPUT_KERNEL = np.array([[1.5], [-0.5], [2.0]], np.float32)
NETWORK = sparse_network.make_network(networks.MLP((3,), 1), optax.sgd(0.1), SparsityConfig(), "critic")


def _state() -> sparse_network.NetworkState:
    params = {"dense_0": {"kernel": jnp.asarray(HIDDEN_KERNEL), "bias": jnp.asarray(HIDDEN_BIAS)},
              "output": {"kernel": jnp.asarray(OUTPUT_KERNEL), "bias": jnp.zeros(1)}}
    masks = jax.tree.map(lambda leaf: jnp.ones(leaf.shape, bool), params)
    masks["dense_0"]["kernel"] = jnp.asarray(HIDDEN_MASK)
    opt_state = NETWORK.optimizer.init(jax.random.key(0), params)[1]
    return sparse_network.NetworkState(params, opt_state._replace(masks=masks))


def _numpy_srank(features: np.ndarray, delta: float = 0.01) -> int:
    sigma = np.linalg.svd(features, compute_uv=False)
    return int(np.argmax(np.cumsum(sigma) / sigma.sum() >= 1.0 - delta)) + 1


def _mean_output(params, state, batch):
    """The loss whose gradient GraMa reads here: the batch mean of the network's output."""
    del state
    return jnp.mean(sparse_network.apply(NETWORK, params, batch))


def test_grama_srank_and_weight_magnitude_match_numpy_on_a_masked_layer():
    pre_activation = INPUTS @ HIDDEN_KERNEL + HIDDEN_BIAS
    hidden = np.maximum(pre_activation, 0.0)
    # d mean(out) / d hidden kernel, by hand: x^T [(1/B) w_out^T * relu'(z)].
    hidden_grad = INPUTS.T @ (OUTPUT_KERNEL[:, 0] / len(INPUTS) * (pre_activation > 0))
    kept_magnitude = (np.abs(hidden_grad) * HIDDEN_MASK).sum(0) / HIDDEN_MASK.sum(0)
    grama_scores = kept_magnitude / kept_magnitude.mean()
    np.testing.assert_allclose(grama_scores, [81 / 34, 21 / 34, 0.0])  # kept mean |grad| 27/16, 7/16, 0

    state = _state()
    grads = jax.grad(_mean_output)(state.params, None, jnp.asarray(INPUTS))
    scores = plasticity.gradient_scores(grads, state.opt_state.masks, {"dense_0"})
    assert list(scores) == ["dense_0"]
    np.testing.assert_allclose(scores["dense_0"], grama_scores, rtol=1e-6)

    metrics = sparse_network.metrics(NETWORK, state, jnp.asarray(INPUTS), grads=grads)
    for tau in ("0", "0.025", "0.1"):
        expected = np.float32(np.mean(grama_scores <= float(tau)))  # 1/3: the dead neuron
        assert float(metrics[f"grama/{tau}/critic/dense_0"]) == float(metrics[f"grama/{tau}/critic/total"]) == expected
    assert float(metrics["srank/critic/dense_0"]) == _numpy_srank(hidden) == 2
    np.testing.assert_allclose(metrics["weight_magnitude/critic/dense_0"],
                               np.abs(HIDDEN_KERNEL)[HIDDEN_MASK].mean(), rtol=1e-6)  # (0.5 + 1 + 0.25 + 2) / 4
    np.testing.assert_allclose(metrics["weight_magnitude/critic/output"], np.abs(OUTPUT_KERNEL).mean(), rtol=1e-6)
    assert "srank/critic/output" not in metrics and "grama/0.1/critic/output" not in metrics
    assert "grama/0.1/critic/total" not in sparse_network.metrics(NETWORK, state, jnp.asarray(INPUTS))


def test_srank_is_the_numpy_rank_and_zero_for_zero_features():
    rng = np.random.default_rng(0)
    for rank in (1, 3, 8):
        features = rng.normal(size=(32, rank)) @ rng.normal(size=(rank, 8)) * np.linspace(1.0, 0.05, 8)
        assert float(plasticity.effective_rank(jnp.asarray(features, jnp.float32))) == _numpy_srank(features)
    assert float(plasticity.effective_rank(jnp.zeros((4, 3)))) == 0.0


def test_srank_vmapped_over_seeds_and_levels_equals_each_alone():
    """Seeds (and a sweep's levels) are vmap axes: the SVDs run one matrix after another, each as alone."""
    rng = np.random.default_rng(1)
    scales = np.stack([np.linspace(1.0, decay, 6) for decay in (1.0, 0.3, 0.01)])
    features = jnp.asarray(rng.normal(size=(2, 3, 16, 6)) * scales[None, :, None, :], jnp.float32)
    batched = jax.jit(jax.vmap(jax.vmap(plasticity.effective_rank)))(features)
    alone = [[float(plasticity.effective_rank(features[level, seed])) for seed in range(3)] for level in range(2)]
    np.testing.assert_array_equal(batched, np.asarray(alone, np.float32))
    assert len({rank for ranks in alone for rank in ranks}) > 1
