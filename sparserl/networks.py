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

import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sparserl import linear
from sparserl.sparse import condensed, condensed_native, condensed_pallas

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
    """`nn.Dense` (same params) whose product is `linear.matmul`, or a condensed kernel when given its indices.

    When the `condensed` collection holds `indices` [out, k] for this layer
    (`sparse_network.apply` passes them; see `sparserl.sparse.condensed`), the output
    is `condensed.dense(x, kernel, indices) + bias`, equal to the dense matmul
    when the kernel is zero off the indices (with the `condensed_native` collection instead,
    `condensed_native.dense`: C++ forward and backward passes; on a GPU, `condensed_pallas.dense_on_gpu`: XLA's
    gathers or a Pallas kernel, whichever measured faster). With a `bucket` beside them (a layer whose fan-in
    shrinks: prune), `indices` is a ladder of capacities and the bucket picks one, or the matmul
    (`condensed.run_bucket`); with `offsets` (SRigL's ablating layers and prune's, native only), the neurons' slots
    (`condensed.variable_fan_in`); with `values` (kept-value training, `sparse_network.kept_layers`), the
    product of those kept values, not of the kernel (`condensed_native.dense_kept`). Otherwise it is `linear.matmul(x, kernel) + bias`,
    nn.Dense's function with the kernel gradient written in the kernel's layout (see `sparserl.linear`).
    """

    @nn.compact
    def __call__(self, inputs: jnp.ndarray) -> jnp.ndarray:
        kernel = self.param("kernel", self.kernel_init, (inputs.shape[-1], self.features), self.param_dtype)
        outputs = _kernel_product(self, inputs, kernel, linear.matmul)
        if self.use_bias:
            outputs = outputs + self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        return outputs


def _kernel_product(layer: nn.Module, inputs: jnp.ndarray, kernel: jnp.ndarray, matmul: Callable) -> jnp.ndarray:
    """inputs [batch, in] times kernel [in, out] as `layer`'s condensed collections say (`Dense`), else `matmul`."""
    native = condensed.NATIVE_COLLECTION
    offsets = layer.get_variable(native, "offsets") if layer.has_variable(native, "offsets") else None
    if layer.has_variable(native, "values"):  # kept-value training (`sparse_network.kept_layers`)
        return condensed_native.dense_kept(inputs, layer.get_variable(native, "values"),
                                           layer.get_variable(native, "indices"), offsets)
    condensed_product = condensed_pallas.dense_on_gpu if jax.default_backend() == "gpu" else condensed.dense
    for collection, product in ((native, condensed_native.dense), (condensed.COLLECTION, condensed_product)):
        if layer.has_variable(collection, "indices"):
            indices = layer.get_variable(collection, "indices")
            if product is condensed_native.dense and not condensed.native_runs(inputs.shape[0], kernel, indices):
                break  # a product where native loses: the masked matmul
            if layer.has_variable(collection, "bucket"):
                return condensed.run_bucket(product, inputs, kernel, indices, layer.get_variable(collection, "bucket"),
                                            offsets)
            if offsets is not None:
                return product(inputs, kernel, indices, offsets)
            return product(inputs, kernel, indices)
    return matmul(inputs, kernel)


def _hidden(layer: nn.Module, activation: Callable, x: jnp.ndarray) -> jnp.ndarray:
    """`activation(layer(x))`, stored at `activations/<layer path>/post_activation` for dormancy and ReDo."""
    outputs = activation(layer(x))
    # One entry per call: reduce_fn replaces instead of appending to a tuple.
    layer.sow(ACTIVATIONS, POST_ACTIVATION, outputs, init_fn=lambda: None, reduce_fn=lambda _, y: y)
    return outputs


def _dense_head(x: jnp.ndarray, sizes: Sequence[int], output_size: int, activation: Callable, width_multiplier: float,
                hidden_kernel_init: Callable, output_kernel_init: Callable) -> jnp.ndarray:
    """Hidden `Dense` layers `dense_i` (widths scaled by `width_multiplier`), then the layer `output`.

    Call it from a module's compact method: the layers become that module's submodules, under these names.
    """
    for i, width in enumerate(sizes):
        x = _hidden(Dense(scaled_width(width, width_multiplier), kernel_init=hidden_kernel_init, name=f"dense_{i}"),
                    activation, x)
    return Dense(output_size, kernel_init=output_kernel_init, name="output")(x)


def _dense_chain(sizes: Sequence[int]) -> list[str]:
    """The module paths of `_dense_head`'s layers, in order."""
    return [f"dense_{i}" for i in range(len(sizes))] + ["output"]


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
        x = x.reshape((x.shape[0], -1)).astype(jnp.float32)
        return _dense_head(x, self.hidden_sizes, self.output_size, ACTIVATION_FUNCTIONS[self.activation],
                           self.width_multiplier, self.hidden_kernel_init, self.output_kernel_init)

    def chains(self) -> list[list[str]]:
        return [_dense_chain(self.hidden_sizes)]


class Im2colConv(nn.Module):
    """A 2-D convolution (NHWC, no dilation, one feature group) computed as im2col + one matmul.

    The same function and the same params as `nn.Conv(features, kernel_size, strides, padding)`: `kernel`
    [kh, kw, in, out] with nn.Conv's default init (LeCun normal on that shape) and `bias` [out] (zeros), so
    checkpoints, masks, ERK and ReDo see nn.Conv's tree. The output at (y, x) is
    ``sum_{i, j, c} input[s_h y + i, s_w x + j, c] kernel[i, j, c, :] + bias`` (the cross-correlation of
    `lax.conv_general_dilated`, which nn.Conv calls): the kh * kw strided slices of the padded input are
    stacked in (i, j) order and flattened with the channels, which is the row order of
    ``kernel.reshape(kh * kw * in, out)`` (Chellapilla et al. 2006, "High performance convolutional neural
    networks for document processing", section 3).

    Why: XLA on CPU runs a convolution inside `lax.cond`/`lax.scan` bodies (the compiled loop,
    `sparserl.compiled_runner`) far slower than the same convolution in a plain jitted call, while a dot
    inside control flow runs at full speed. A gradient step of the MinAtar network (batch 32) inside a scan
    of `lax.cond`s took 5.9-19x a plain jitted nn.Conv step timed beside it with nn.Conv, 0.45-2.6x with
    Im2colConv (4 runs on a loaded 2-core machine); the Nature network 15x and 1.5x (docs/studies.md has
    the script). Results agree with nn.Conv to float32 rounding (the products are summed in another order).

    The product is a `Dense`'s: given indices of the kernel's fan-in (kh * kw * in positions per output
    channel, `sparserl.sparse.condensed`), a condensed kernel over the batch x positions patches.
    """

    features: int
    kernel_size: Sequence[int]
    strides: Sequence[int] = (1, 1)
    padding: str = "VALID"
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        (kh, kw), (sh, sw), channels = self.kernel_size, self.strides, x.shape[-1]
        kernel = self.param("kernel", self.kernel_init, (kh, kw, channels, self.features))
        bias = self.param("bias", self.bias_init, (self.features,))
        pads = jax.lax.padtype_to_pads(x.shape[1:3], (kh, kw), (sh, sw), self.padding)
        x = jnp.pad(x, ((0, 0), *pads, (0, 0)))
        out_h, out_w = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
        patches = jnp.stack(
            [x[:, i:i + sh * (out_h - 1) + 1:sh, j:j + sw * (out_w - 1) + 1:sw, :] for i in range(kh) for j in range(kw)],
            axis=3,
        ).reshape(x.shape[0] * out_h * out_w, kh * kw * channels)
        outputs = _kernel_product(self, patches, kernel.reshape(kh * kw * channels, self.features), jnp.matmul)
        return outputs.reshape(x.shape[0], out_h, out_w, self.features) + bias


class NatureCNN(nn.Module):
    """Convolutional torso + dense head (Mnih et al. 2015, "Methods: model architecture").

    Defaults are the Nature DQN network: convs 32/64/64 with kernels 8/4/3 and
    strides 4/2/1, then a 512-unit dense layer. MinAtar's reference network
    (Young & Tian 2019) is `NatureCNN(conv_features=(16,), kernel_sizes=(3,),
    strides=(1,), dense_sizes=(128,))`. Inputs are NHWC; uint8 frames are
    scaled to [0, 1]. The flatten is in HWC order: flat index i belongs to
    channel ``i % C`` of the last conv layer. `hidden_kernel_init` initialises
    the conv and dense kernels, `output_kernel_init` the output layer's (CleanRL's
    `ppo_atari.py` uses orthogonal sqrt(2) and 0.01 / 1). The convolutions are
    `Im2colConv` (nn.Conv's function and params, fast inside the compiled loop's
    control flow).
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
            layer = Im2colConv(
                scaled_width(features, self.width_multiplier),
                (kernel, kernel),
                (stride, stride),
                padding=self.padding,
                kernel_init=self.hidden_kernel_init,
                name=f"conv_{i}",
            )
            x = _hidden(layer, activation, x)
        x = x.reshape((x.shape[0], -1))
        return _dense_head(x, self.dense_sizes, self.output_size, activation, self.width_multiplier,
                           self.hidden_kernel_init, self.output_kernel_init)

    def chains(self) -> list[list[str]]:
        return [[f"conv_{i}" for i in range(len(self.conv_features))] + _dense_chain(self.dense_sizes)]


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
        return [[f"{head}/{layer}" for layer in _dense_chain(self.hidden_sizes)] for head in ("q1", "q2")]


def layer_positions(module: nn.Module, params: Any, *inputs) -> dict[str, int]:
    """{layer path: how many times one example applies the layer's kernel}: 1 for a `Dense` layer, the output's
    spatial positions for an `Im2colConv` (8 x 8 for a 3x3 VALID conv on 10 x 10 inputs). Read from the shapes of
    an abstract forward pass (`jax.eval_shape`: nothing is computed)."""
    positions = {}

    def record(call, args, kwargs, context):
        outputs = call(*args, **kwargs)
        if context.method_name == "__call__" and isinstance(context.module, (Dense, Im2colConv)):
            positions["/".join(context.module.path)] = math.prod(outputs.shape[1:-1])
        return outputs

    with nn.intercept_methods(record):
        jax.eval_shape(lambda params, *inputs: module.apply({"params": params}, *inputs), params, *inputs)
    return positions
