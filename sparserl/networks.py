"""Neural networks shared by every agent (flax.linen).

Every hidden layer stores its post-activation output in the ``activations``
collection at ``<layer path>/post_activation``, so the dormancy module can score it
(Sokar et al. 2023, section 3) and ReDo can find the layer's weights under the
same path in the params tree. Call ``apply(..., mutable=[ACTIVATIONS])`` to
capture them.

Each network also describes its layer *chains*: the ordered module paths from
the first hidden layer to the output layer. ReDo needs them to find the
outgoing weights of a hidden neuron (the kernel of the next layer in its
chain).

The width multiplier scales hidden layers only, never the output layer
(Graesser et al. 2022, section 4.3 "scaling the width").
"""

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sparserl.sparse import condensed

ACTIVATIONS = "activations"
POST_ACTIVATION = "post_activation"

ACTIVATION_FUNCTIONS: dict[str, Callable] = {"relu": nn.relu, "tanh": nn.tanh}  # the `network.activation` names


def scaled_width(width: int, width_multiplier: float) -> int:
    """Width of a hidden layer under a width multiplier (at least one unit)."""
    return max(1, int(round(width * width_multiplier)))


def orthogonal(scale: float = 1.0) -> Callable:
    """Orthogonal initializer (Saxe et al. 2014) whose batches are drawn one after another.

    Under `jax.vmap` (seeds, sweeps, ReDo's re-draw inside the vmapped step) a
    plain `nn.initializers.orthogonal` becomes one batched LAPACK QR, which
    deadlocks jaxlib 0.10.2's CPU runtime (docs/design.md section 7).
    `jax.custom_batching.sequential_vmap` turns the batch into a loop of
    unbatched QRs instead; each draw is the same as without vmap. Every network
    that wants orthogonal init takes it from here.
    """
    base = nn.initializers.orthogonal(scale)

    def init(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
        return jax.custom_batching.sequential_vmap(lambda draw_key: base(draw_key, shape, dtype))(key)

    return init


class Dense(nn.Dense):
    """`nn.Dense` (same params) that runs as a condensed kernel when given its indices.

    When the `condensed` collection holds `indices` [out, k] for this layer
    (`sparse_network.apply` passes them; see `sparserl.sparse.condensed`), the output
    is `condensed.dense(x, kernel, indices) + bias`, equal to the dense matmul
    when the kernel is zero off the indices; otherwise it is `nn.Dense`.
    """

    @nn.compact
    def __call__(self, inputs: jnp.ndarray) -> jnp.ndarray:
        if not self.has_variable(condensed.COLLECTION, "indices"):
            return super().__call__(inputs)
        kernel = self.param("kernel", self.kernel_init, (inputs.shape[-1], self.features), self.param_dtype)
        outputs = condensed.dense(inputs, kernel, self.get_variable(condensed.COLLECTION, "indices"))
        if self.use_bias:
            outputs = outputs + self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        return outputs


def _capture(layer: nn.Module, outputs: jnp.ndarray) -> None:
    """Stores a layer's post-activation outputs at `activations/<layer path>/post_activation`."""
    # One entry per call: reduce_fn replaces instead of appending to a tuple.
    layer.sow(ACTIVATIONS, POST_ACTIVATION, outputs, init_fn=lambda: None, reduce_fn=lambda _, y: y)


class MLP(nn.Module):
    """A multilayer perceptron: hidden layers `dense_i`, then the layer `output`."""

    hidden_sizes: Sequence[int]
    output_size: int
    activation: str = "relu"
    width_multiplier: float = 1.0
    output_kernel_init: Callable = nn.initializers.lecun_normal()
    hidden_kernel_init: Callable = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        activation = ACTIVATION_FUNCTIONS[self.activation]
        x = x.reshape((x.shape[0], -1)).astype(jnp.float32)
        for i, width in enumerate(self.hidden_sizes):
            name = f"dense_{i}"
            layer = Dense(scaled_width(width, self.width_multiplier), kernel_init=self.hidden_kernel_init, name=name)
            x = activation(layer(x))
            _capture(layer, x)
        return Dense(self.output_size, kernel_init=self.output_kernel_init, name="output")(x)

    def chains(self) -> list[list[str]]:
        return [[f"dense_{i}" for i in range(len(self.hidden_sizes))] + ["output"]]


class NatureCNN(nn.Module):
    """Convolutional torso + dense head (Mnih et al. 2015, "Methods: model architecture").

    Defaults are the Nature DQN network: convs 32/64/64 with kernels 8/4/3 and
    strides 4/2/1, then a 512-unit dense layer. MinAtar's reference network
    (Young & Tian 2019) is `NatureCNN(conv_features=(16,), kernel_sizes=(3,),
    strides=(1,), dense_sizes=(128,))`. Inputs are NHWC; uint8 frames are
    scaled to [0, 1]. The flatten is in HWC order: flat index i belongs to
    channel ``i % C`` of the last conv layer. `hidden_kernel_init` initialises
    the conv and dense kernels, `output_kernel_init` the output layer's (CleanRL's
    `ppo_atari.py` uses orthogonal sqrt(2) and 0.01 / 1).
    """

    output_size: int
    conv_features: Sequence[int] = (32, 64, 64)
    kernel_sizes: Sequence[int] = (8, 4, 3)
    strides: Sequence[int] = (4, 2, 1)
    dense_sizes: Sequence[int] = (512,)
    width_multiplier: float = 1.0
    padding: str = "VALID"
    activation: str = "relu"
    output_kernel_init: Callable = nn.initializers.lecun_normal()
    hidden_kernel_init: Callable = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        activation = ACTIVATION_FUNCTIONS[self.activation]
        if x.dtype == jnp.uint8:
            x = x.astype(jnp.float32) / 255.0
        x = x.astype(jnp.float32)
        for i, (features, kernel, stride) in enumerate(zip(self.conv_features, self.kernel_sizes, self.strides)):
            name = f"conv_{i}"
            layer = nn.Conv(
                scaled_width(features, self.width_multiplier),
                (kernel, kernel),
                (stride, stride),
                padding=self.padding,
                kernel_init=self.hidden_kernel_init,
                name=name,
            )
            x = activation(layer(x))
            _capture(layer, x)
        x = x.reshape((x.shape[0], -1))
        for i, width in enumerate(self.dense_sizes):
            name = f"dense_{i}"
            layer = nn.Dense(scaled_width(width, self.width_multiplier), kernel_init=self.hidden_kernel_init, name=name)
            x = activation(layer(x))
            _capture(layer, x)
        return nn.Dense(self.output_size, kernel_init=self.output_kernel_init, name="output")(x)

    def chains(self) -> list[list[str]]:
        convs = [f"conv_{i}" for i in range(len(self.conv_features))]
        denses = [f"dense_{i}" for i in range(len(self.dense_sizes))]
        return [convs + denses + ["output"]]


class TwinCritic(nn.Module):
    """Two independent Q-networks `q1` and `q2` on (observation, action) (Fujimoto et al. 2018)."""

    hidden_sizes: Sequence[int]
    width_multiplier: float = 1.0
    activation: str = "relu"

    def setup(self):
        self.q1 = MLP(self.hidden_sizes, 1, activation=self.activation, width_multiplier=self.width_multiplier)
        self.q2 = MLP(self.hidden_sizes, 1, activation=self.activation, width_multiplier=self.width_multiplier)

    def __call__(self, observations: jnp.ndarray, actions: jnp.ndarray) -> jnp.ndarray:
        inputs = jnp.concatenate([observations.reshape((observations.shape[0], -1)), actions], axis=-1)
        return jnp.stack([self.q1(inputs)[:, 0], self.q2(inputs)[:, 0]])

    def chains(self) -> list[list[str]]:
        chain = [f"dense_{i}" for i in range(len(self.hidden_sizes))] + ["output"]
        return [[f"{head}/{layer}" for layer in chain] for head in ("q1", "q2")]
