"""Tests for sparserl.networks: shapes, width multiplier, captured activations, uint8 scaling, chains."""

import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flax.linen as nn

from sparserl.networks import (
    ACTIVATIONS, MLP, POST_ACTIVATION, Im2colConv, NatureCNN, TwinCritic, orthogonal, scaled_width,
)
from sparserl.sparse import condensed, structure
from tests.helpers import cli_environment

KEY = jax.random.key(0)
SMALL_CNN = dict(conv_features=(8, 16), kernel_sizes=(3, 3), strides=(2, 1), dense_sizes=(32,))


def _shapes(tree):
    return jax.tree.map(lambda x: x.shape, tree)


def test_mlp_shapes_and_activations():
    net = MLP((32, 16), 3)
    x = jax.random.normal(KEY, (5, 7))
    params = net.init(KEY, x)["params"]
    assert _shapes(params) == {
        "dense_0": {"kernel": (7, 32), "bias": (32,)},
        "dense_1": {"kernel": (32, 16), "bias": (16,)},
        "output": {"kernel": (16, 3), "bias": (3,)},
    }
    out, state = net.apply({"params": params}, x, mutable=[ACTIVATIONS])
    assert out.shape == (5, 3)
    acts = state[ACTIVATIONS]
    assert set(acts) == {"dense_0", "dense_1"}  # never the output layer
    assert acts["dense_0"][POST_ACTIVATION].shape == (5, 32)
    assert acts["dense_1"][POST_ACTIVATION].shape == (5, 16)
    # Post-activation: relu of the layer's pre-activation.
    h0 = jax.nn.relu(x @ params["dense_0"]["kernel"] + params["dense_0"]["bias"])
    np.testing.assert_allclose(acts["dense_0"][POST_ACTIVATION], h0, rtol=1e-5, atol=1e-6)
    h1 = jax.nn.relu(h0 @ params["dense_1"]["kernel"] + params["dense_1"]["bias"])
    np.testing.assert_allclose(acts["dense_1"][POST_ACTIVATION], h1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out, h1 @ params["output"]["kernel"] + params["output"]["bias"], rtol=1e-5, atol=1e-6)
    # Without mutable, apply returns just the output.
    np.testing.assert_allclose(net.apply({"params": params}, x), out)


def test_mlp_is_the_flax_dense_network():
    """MLP draws the params of the same stack of nn.Dense layers (names, inits, values) and computes its function."""
    hidden_init, output_init = orthogonal(2.0 ** 0.5), nn.initializers.zeros_init()

    class FlaxMLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            for i, width in enumerate((12, 6)):
                x = nn.tanh(nn.Dense(width, kernel_init=hidden_init, name=f"dense_{i}")(x))
            return nn.Dense(2, kernel_init=output_init, name="output")(x)

    net = MLP((8, 4), 2, activation="tanh", width_multiplier=1.5, hidden_kernel_init=hidden_init,
              output_kernel_init=output_init)
    x = jax.random.normal(KEY, (3, 5))
    params = net.init(KEY, x)["params"]
    jax.tree.map(np.testing.assert_array_equal, params, FlaxMLP().init(KEY, x)["params"])
    np.testing.assert_allclose(net.apply({"params": params}, x), FlaxMLP().apply({"params": params}, x),
                               rtol=1e-6, atol=1e-6)


def test_mlp_tanh_activation_and_flattening():
    net = MLP((8,), 2, activation="tanh")
    x = jax.random.normal(KEY, (4, 2, 3))
    params = net.init(KEY, x)["params"]
    assert params["dense_0"]["kernel"].shape == (6, 8)
    _, state = net.apply({"params": params}, x, mutable=[ACTIVATIONS])
    expected = jnp.tanh(x.reshape(4, 6) @ params["dense_0"]["kernel"] + params["dense_0"]["bias"])
    np.testing.assert_allclose(state[ACTIVATIONS]["dense_0"][POST_ACTIVATION], expected, rtol=1e-5, atol=1e-6)


def test_activations_are_replaced_not_accumulated():
    net = MLP((8,), 2)
    x = jnp.ones((3, 4))
    variables = net.init(KEY, x)
    _, state = net.apply(variables, x, mutable=[ACTIVATIONS])  # variables already hold init's activations
    assert state[ACTIVATIONS]["dense_0"][POST_ACTIVATION].shape == (3, 8)


@pytest.mark.parametrize("multiplier, hidden", [(0.5, (16, 8)), (2.0, (64, 32)), (0.25, (8, 4))])
def test_mlp_width_multiplier(multiplier, hidden):
    net = MLP((32, 16), 3, width_multiplier=multiplier)
    params = net.init(KEY, jnp.zeros((1, 7)))["params"]
    assert params["dense_0"]["kernel"].shape == (7, hidden[0])
    assert params["dense_1"]["kernel"].shape == hidden
    assert params["output"]["kernel"].shape == (hidden[1], 3)  # output width never scaled


def test_scaled_width():
    assert scaled_width(256, 1.0) == 256
    assert scaled_width(256, 0.5) == 128
    assert scaled_width(100, 0.333) == 33
    assert scaled_width(3, 0.1) == 1


def test_nature_cnn_shapes():
    net = NatureCNN(6)
    x = jnp.zeros((2, 84, 84, 4), jnp.uint8)
    params = jax.eval_shape(net.init, KEY, x)["params"]  # shapes only: nothing runs
    assert _shapes(params) == {
        "conv_0": {"kernel": (8, 8, 4, 32), "bias": (32,)},
        "conv_1": {"kernel": (4, 4, 32, 64), "bias": (64,)},
        "conv_2": {"kernel": (3, 3, 64, 64), "bias": (64,)},
        "dense_0": {"kernel": (3136, 512), "bias": (512,)},
        "output": {"kernel": (512, 6), "bias": (6,)},
    }
    out, state = jax.eval_shape(lambda p: net.apply({"params": p}, x, mutable=[ACTIVATIONS]), params)
    assert out.shape == (2, 6)
    assert _shapes(state[ACTIVATIONS]) == {
        "conv_0": {POST_ACTIVATION: (2, 20, 20, 32)},
        "conv_1": {POST_ACTIVATION: (2, 9, 9, 64)},
        "conv_2": {POST_ACTIVATION: (2, 7, 7, 64)},
        "dense_0": {POST_ACTIVATION: (2, 512)},
    }


@pytest.mark.parametrize("kernel, strides, padding, size", [
    ((8, 8), (4, 4), "VALID", 20), ((3, 3), (1, 1), "VALID", 10), ((3, 2), (2, 1), "SAME", 7),
])
def test_im2col_conv_is_flax_conv(kernel, strides, padding, size):
    """Same params (names, shapes, initial values) as nn.Conv, and the same outputs and gradients to float32
    rounding, over Nature/MinAtar shapes, odd sizes, non-square kernels and SAME padding."""
    x = jax.random.normal(jax.random.key(1), (2, size, size + 1, 3))
    ours, theirs = Im2colConv(5, kernel, strides, padding), nn.Conv(5, kernel, strides, padding=padding)
    params = ours.init(KEY, x)
    jax.tree.map(np.testing.assert_array_equal, params, theirs.init(KEY, x))
    params = jax.tree.map(lambda p: p + jax.random.normal(jax.random.key(2), p.shape), params)  # a nonzero bias too
    np.testing.assert_allclose(ours.apply(params, x), theirs.apply(params, x), rtol=1e-5, atol=1e-5)
    loss = lambda module: jax.grad(lambda p: jnp.sum(jnp.sin(module.apply(p, x))))(params)  # noqa: E731
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), loss(ours), loss(theirs))


@pytest.mark.parametrize("collection", [condensed.COLLECTION, pytest.param(condensed.NATIVE_COLLECTION, marks=pytest.mark.skipif(
    shutil.which("g++") is None, reason="native kernels are built with g++, not on PATH"))])
def test_a_conv_with_fan_in_indices_runs_condensed_over_its_patches_and_equals_the_masked_conv(collection):
    """A 3x3 conv of 4 -> 6 channels whose mask keeps k = 9 of every output channel's 36 fan-in positions: given the
    indices of the mask (`condensed.layer_indices`), the outputs and the gradients of input and kernel equal the
    masked conv's on the mask (the native kernel gradient is 0 off it)."""
    x = jax.random.normal(jax.random.key(1), (3, 6, 5, 4))
    conv = Im2colConv(6, (3, 3), (1, 1), "VALID")
    params = conv.init(KEY, x)["params"]
    mask = structure.random_mask(condensed.CONSTANT_FAN_IN, jax.random.key(2), params["kernel"].shape, 0.75)
    params = {**params, "kernel": jnp.where(mask, params["kernel"], 0.0), "bias": jnp.ones(6)}
    indices = condensed.layer_indices({"conv": {"kernel": mask}}, {"conv": 0.75})["conv"]
    assert indices["indices"].shape == (6, 9)

    def loss(x, params, variables):
        return jnp.sum(jnp.sin(conv.apply({"params": params, **variables}, x)))

    condensed_value, condensed_grads = jax.value_and_grad(loss, argnums=(0, 1))(x, params, {collection: indices})
    masked_value, masked_grads = jax.value_and_grad(loss, argnums=(0, 1))(x, params, {})
    assert float(condensed_value) == pytest.approx(float(masked_value), rel=1e-5)
    np.testing.assert_allclose(condensed_grads[0], masked_grads[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(jnp.where(mask, condensed_grads[1]["kernel"], 0.0),
                               jnp.where(mask, masked_grads[1]["kernel"], 0.0), rtol=1e-4, atol=1e-5)


def test_nature_cnn_is_the_flax_conv_network():
    """NatureCNN with Im2colConv computes what the same network with nn.Conv computes, on the same params."""

    class FlaxConvCNN(nn.Module):
        @nn.compact
        def __call__(self, x):
            for i, (features, kernel, stride) in enumerate(zip((8, 16), (3, 3), (2, 1))):
                x = nn.relu(nn.Conv(features, (kernel, kernel), (stride, stride), padding="VALID", name=f"conv_{i}")(x))
            x = nn.relu(nn.Dense(32, name="dense_0")(x.reshape((x.shape[0], -1))))
            return nn.Dense(4, name="output")(x)

    x = jax.random.normal(KEY, (3, 12, 12, 2))
    params = NatureCNN(4, **SMALL_CNN).init(KEY, x)["params"]
    jax.tree.map(np.testing.assert_array_equal, params, FlaxConvCNN().init(KEY, x)["params"])
    np.testing.assert_allclose(NatureCNN(4, **SMALL_CNN).apply({"params": params}, x),
                               FlaxConvCNN().apply({"params": params}, x), rtol=1e-5, atol=1e-5)


def test_minatar_cnn_and_width_multiplier():
    net = NatureCNN(5, conv_features=(16,), kernel_sizes=(3,), strides=(1,), dense_sizes=(128,), width_multiplier=2.0)
    x = jnp.zeros((3, 10, 10, 4))
    params = net.init(KEY, x)["params"]
    assert params["conv_0"]["kernel"].shape == (3, 3, 4, 32)
    assert params["dense_0"]["kernel"].shape == (8 * 8 * 32, 256)
    assert params["output"]["kernel"].shape == (256, 5)
    assert net.apply({"params": params}, x).shape == (3, 5)


def test_uint8_input_is_scaled():
    net = NatureCNN(4, **SMALL_CNN)
    frames = jax.random.randint(KEY, (3, 12, 12, 2), 0, 256).astype(jnp.uint8)
    params = net.init(KEY, frames)["params"]
    from_uint8 = net.apply({"params": params}, frames)
    from_float = net.apply({"params": params}, frames.astype(jnp.float32) / 255.0)
    np.testing.assert_allclose(from_uint8, from_float, rtol=1e-6, atol=1e-6)
    # Unscaled floats give something else: the scaling really happens.
    assert not np.allclose(net.apply({"params": params}, frames.astype(jnp.float32)), from_uint8, atol=1e-3)


def test_cnn_activations_are_post_relu():
    net = NatureCNN(4, **SMALL_CNN)
    x = jax.random.normal(KEY, (2, 12, 12, 2))
    params = net.init(KEY, x)["params"]
    _, state = net.apply({"params": params}, x, mutable=[ACTIVATIONS])
    for layer, value in state[ACTIVATIONS].items():
        assert float(jnp.min(value[POST_ACTIVATION])) >= 0.0, layer
    assert "output" not in state[ACTIVATIONS]


def test_twin_critic():
    net = TwinCritic((32, 16), width_multiplier=0.5)
    obs, actions = jax.random.normal(KEY, (5, 3)), jnp.ones((5, 2))
    params = net.init(KEY, obs, actions)["params"]
    assert set(params) == {"q1", "q2"}
    for head in ("q1", "q2"):
        assert params[head]["dense_0"]["kernel"].shape == (5, 16)
        assert params[head]["dense_1"]["kernel"].shape == (16, 8)
        assert params[head]["output"]["kernel"].shape == (8, 1)
    out, state = net.apply({"params": params}, obs, actions, mutable=[ACTIVATIONS])
    assert out.shape == (2, 5)
    assert not np.allclose(out[0], out[1])  # independent heads
    q1 = MLP((32, 16), 1, width_multiplier=0.5).apply({"params": params["q1"]}, jnp.concatenate([obs, actions], -1))
    np.testing.assert_allclose(out[0], q1[:, 0], rtol=1e-5, atol=1e-6)
    assert _shapes(state[ACTIVATIONS]) == {
        head: {"dense_0": {POST_ACTIVATION: (5, 16)}, "dense_1": {POST_ACTIVATION: (5, 8)}} for head in ("q1", "q2")
    }


def test_chains_name_real_layers():
    assert MLP((8, 8, 8), 2).chains() == [["dense_0", "dense_1", "dense_2", "output"]]
    assert NatureCNN(4).chains() == [["conv_0", "conv_1", "conv_2", "dense_0", "output"]]
    assert NatureCNN(4, **SMALL_CNN).chains() == [["conv_0", "conv_1", "dense_0", "output"]]
    twin = TwinCritic((8, 8))
    assert twin.chains() == [["q1/dense_0", "q1/dense_1", "q1/output"], ["q2/dense_0", "q2/dense_1", "q2/output"]]
    params = twin.init(KEY, jnp.zeros((1, 3)), jnp.zeros((1, 1)))["params"]
    for chain in twin.chains():
        for path in chain:
            head, layer = path.split("/")
            assert "kernel" in params[head][layer]


def test_orthogonal_draws_are_orthogonal_and_equal_under_vmap():
    init = orthogonal(2.0)
    keys = jax.random.split(KEY, 3)
    batched = jax.jit(jax.vmap(lambda key: init(key, (6, 4))))(keys)
    for key, matrix in zip(keys, batched):
        np.testing.assert_array_equal(matrix, init(key, (6, 4)))  # a vmapped draw is the unbatched draw
        np.testing.assert_allclose(matrix.T @ matrix, 4.0 * np.eye(4), atol=1e-5)  # scale**2 * I
    nested = jax.vmap(jax.vmap(lambda key: init(key, (3, 3))))(jax.random.split(KEY, 6).reshape(2, 3))
    assert nested.shape == (2, 3, 3, 3)


# Vmapped PPO init (orthogonal kernels) and a ReDo recycle that re-draws every hidden neuron, over 4 seeds, many
# times. With flax's own orthogonal initializer this became a batched LAPACK QR, which deadlocked jaxlib 0.10.2 on
# CPU within the first calls (issue: "vmapped orthogonal init hangs on CPU").
_VMAPPED_ORTHOGONAL_SCRIPT = textwrap.dedent("""
    import jax
    from sparserl.agents import ppo
    from sparserl.configs import ppo as ppo_config
    from sparserl import batches, envs, loop

    config = ppo_config.get_config()
    config.redo.tau = 1e9  # every hidden neuron is dormant: each recycle re-draws all incoming weights
    agent = ppo.make(config, envs.env_spec("CartPole-v1"))
    seeds = [0, 1, 2, 3]
    states = loop.init_states(agent, seeds)
    axes = loop.seed_axes(states)
    observations = jax.numpy.ones((len(seeds), 8, 4))
    init = jax.jit(jax.vmap(agent.init, out_axes=axes))
    recycle = jax.jit(jax.vmap(lambda state, obs, key: agent.recycle(state, batches.Rollout(obs, None, None, None, None, None), key),
                               in_axes=(axes, 0, 0), out_axes=(axes, 0)))
    for i in range(300):
        states = init(loop.seed_keys([4 * i + s for s in seeds]))
        states, recycled = recycle(states, observations[:, :, None], jax.random.split(jax.random.key(i), len(seeds)))
        assert int(recycled.neurons.min()) == 256, recycled  # 2x64 actor + 2x64 critic
    jax.block_until_ready(states)
    print("finished")
""")


@pytest.mark.slow
def test_vmapped_orthogonal_init_and_recycle_do_not_hang():
    completed = subprocess.run([sys.executable, "-c", _VMAPPED_ORTHOGONAL_SCRIPT], capture_output=True, text=True,
                               env=cli_environment(), timeout=240)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.strip().endswith("finished")
