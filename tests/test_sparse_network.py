"""sparserl.sparse_network, a sparse network and its state: sparse-aware init (rigl's fixed_sparse_init), ReDo's re-draw at that scale, the target
kept on the online mask, and one gradient-norm clip over several networks."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from sparserl import networks, remedies, sparse_network
from sparserl.sparse import SparsityConfig, apply_masks


def _network(distribution="erk", sparsity=0.9, rescale=True, module=None):
    module = module or networks.MLP((256, 256), 6)
    return sparse_network.make_network(module, optax.adam(1e-3), SparsityConfig(method="static", sparsity=sparsity,
                                distribution=distribution), sparse_init_rescale=rescale)


def _output_std(network, num_inits=8):
    """Std of the outputs of a 17-256-256-6 ReLU MLP on N(0, 1) inputs, pooled over `num_inits` inits."""
    inputs = jax.random.normal(jax.random.key(99), (2048, 17))
    init = jax.jit(lambda key: sparse_network.init(network, key, inputs[:1]).params)
    outputs = [sparse_network.apply(network, init(jax.random.key(seed)), inputs) for seed in range(num_inits)]
    return float(jnp.std(jnp.stack(outputs)))


@pytest.mark.parametrize("distribution", ["erk", "uniform"])
def test_sparse_init_keeps_the_output_scale_of_the_dense_network(distribution):
    """The issue's case: dense std 0.52; masking a dense init to 90% gave 0.086 (ERK) and 0.0125 (uniform)."""
    dense = _output_std(_network(sparsity=0.0))
    rescaled = _output_std(_network(distribution))
    masked_only = _output_std(_network(distribution, rescale=False))
    assert 0.8 < rescaled / dense < 1.2, (rescaled, dense)
    assert masked_only / dense < 0.5, (masked_only, dense)  # what the switch turns off


def test_rescale_is_per_unit_sqrt_of_dense_over_sparse_fan_in():
    kernel = jnp.ones((4, 3))
    mask = jnp.array([[1, 1, 0], [0, 1, 0], [0, 1, 0], [0, 1, 0]], bool)  # fan-ins 1, 4, 0
    conv = jnp.ones((2, 2, 3, 2))
    conv_mask = jnp.zeros((2, 2, 3, 2), bool).at[0, 0, 0, 0].set(True).at[:, :, :2, 1].set(True)  # fan-ins 1, 8
    params = {"dense": {"kernel": kernel * mask, "bias": jnp.ones(3)}, "conv": {"kernel": conv * conv_mask}}
    masks = {"dense": {"kernel": mask, "bias": jnp.ones(3, bool)}, "conv": {"kernel": conv_mask}}
    scaled = sparse_network.rescale_to_sparse_fan_in(params, masks)
    np.testing.assert_allclose(scaled["dense"]["kernel"], mask * np.array([2.0, 1.0, 2.0]), rtol=1e-6)
    np.testing.assert_array_equal(scaled["dense"]["bias"], np.ones(3))
    np.testing.assert_allclose(scaled["conv"]["kernel"], conv_mask * np.array([np.sqrt(12.0), np.sqrt(12.0 / 8.0)]), rtol=1e-6)
    dense_masks = jax.tree.map(lambda leaf: jnp.ones(leaf.shape, bool), params)
    jax.tree.map(np.testing.assert_array_equal, sparse_network.rescale_to_sparse_fan_in(params, dense_masks), params)


def test_orthogonal_init_is_rescaled_the_same_way():
    """PPO's sequentially batched orthogonal init: each unit's incoming weights scaled by sqrt(dense / sparse fan-in)."""
    module = networks.MLP((64, 64), 2, hidden_kernel_init=networks.orthogonal(np.sqrt(2.0)))
    inputs = jnp.zeros((1, 8))
    plain = sparse_network.init(_network(module=module, rescale=False), jax.random.key(0), inputs)
    rescaled = sparse_network.init(_network(module=module), jax.random.key(0), inputs)
    expected = sparse_network.rescale_to_sparse_fan_in(plain.params, plain.opt_state.masks)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), rescaled.params, expected)
    assert not np.allclose(rescaled.params["dense_1"]["kernel"], plain.params["dense_1"]["kernel"])


def test_redo_redraws_at_the_sparse_fan_in_scale():
    """With every neuron recycled, the first layer's active weights are exactly a fresh init at the sparse scale."""
    network = _network()
    inputs = jax.random.normal(jax.random.key(1), (64, 17))
    state = sparse_network.init(network, jax.random.key(0), inputs[:1])
    redo = ml_collections.ConfigDict(dict(remedy="redo", tau=1e9))  # every neuron recycled
    recycled, result = remedies.apply(redo, network, state, jax.random.key(5), (inputs,), None)
    assert int(result.num_recycled) == 512
    masks = state.opt_state.masks
    fresh = sparse_network.rescale_to_sparse_fan_in(network.module.init(jax.random.key(5), inputs)["params"], masks)
    np.testing.assert_allclose(recycled.params["dense_0"]["kernel"], apply_masks(fresh, masks)["dense_0"]["kernel"], rtol=1e-6)


def test_soft_update_target_stays_on_the_online_mask():
    mask = jnp.array([[True, False], [True, True]])
    online = sparse_network.NetworkState({"w": jnp.array([[1.0, 0.0], [2.0, 3.0]])}, _opt_state({"w": mask}))
    target = {"w": jnp.array([[5.0, 7.0], [6.0, 1.0]])}  # 7.0: a connection the online network dropped
    new_target = sparse_network.soft_update_target(online, target, 0.1)
    np.testing.assert_allclose(new_target["w"], [[0.1 + 4.5, 0.0], [0.2 + 5.4, 0.3 + 0.9]], rtol=1e-6)


def _opt_state(masks):
    from sparserl.sparse import SparseOptState

    return SparseOptState(inner=(), masks=masks)


def test_clip_by_joint_norm_scales_every_network_by_one_factor():
    """CleanRL/SB3: one clip over actor and critic. The norm is of the gradients the masks let through."""
    actor = sparse_network.NetworkState({"w": jnp.zeros(3)}, _opt_state({"w": jnp.array([True, True, False])}))
    critic = sparse_network.NetworkState({"w": jnp.zeros(2)}, _opt_state({"w": jnp.array([True, True])}))
    actor_grads, critic_grads = {"w": jnp.array([3.0, 0.0, 100.0])}, {"w": jnp.array([0.0, 4.0])}  # masked norm 5
    clipped_actor, clipped_critic = sparse_network.clip_by_joint_norm([actor, critic], [actor_grads, critic_grads], 1.0)
    np.testing.assert_allclose(clipped_actor["w"], [0.6, 0.0, 20.0], rtol=1e-6)
    np.testing.assert_allclose(clipped_critic["w"], [0.0, 0.8], rtol=1e-6)
    unclipped, _ = sparse_network.clip_by_joint_norm([actor, critic], [actor_grads, critic_grads], 10.0)
    np.testing.assert_allclose(unclipped["w"], actor_grads["w"])

