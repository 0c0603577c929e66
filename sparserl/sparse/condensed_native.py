"""Native condensed kernels: constant fan-in layers as XLA:CPU custom calls (XLA FFI), forward and backward.

`--config.sparse.kernels=native` runs every constant fan-in layer of a batch
of at least `condensed.NATIVE_MIN_BATCH` examples through `dense`, whose forward and backward
passes are C++ (`condensed_native.cc`) built for this CPU with the machine's
g++ on first use and cached (`library_path`). For W [in, out] kept at
indices idx [out, k] (Lasby et al. 2023, section 3.1):

    y[b, o]          = sum_j x[b, idx[o, j]] W[idx[o, j], o]
    dx[b, i]         = sum_{(o, j): idx[o, j] = i} W[i, o] dy[b, o]
    dW[idx[o, j], o] = sum_b x[b, idx[o, j]] dy[b, o],   0 off the indices

so each costs batch * out * k multiply-adds instead of batch * in * out.
Every call also takes `offsets` [out + 1]: the [out, k] buffers are read as
out * k slots and neuron o keeps the slots [offsets[o], offsets[o + 1]) (none
given: o * k, constant fan-in). So a layer whose neurons keep different
numbers of inputs within the same budget out * k (SRigL's ablation: k' each
for the active neurons, none for the ablated ones; `condensed.variable_fan_in`)
runs at the same cost; the slots from offsets[out] on belong to no neuron, and
their values and value gradients are 0.
Unlike `sparserl.sparse.condensed.dense` (masked backward), the kernel
gradient is only computed at the kept connections: RigL's growth, which needs
the dense gradient, gets it from `sparse_network.joint_value_and_grad`, which runs
the masked network on topology-update steps alone. A batch of 1 runs masked
when the values would be gathered from the dense kernel (there the gathers
lose to the matrix-vector product, `condensed.native_is_faster`), and natively
from the kept values a network state stores (`dense_kept`;
`sparse_network.indices_of`).

CPU only, float32 only; vmappable (seeds become leading axes of every buffer).
"""

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "condensed_native.cc")
FORWARD, BACKWARD = "sparserl_condensed_forward", "sparserl_condensed_backward"
FORWARD_KEPT, BACKWARD_KEPT = "sparserl_condensed_forward_kept", "sparserl_condensed_backward_kept"
BACKWARD_INPUT = "sparserl_condensed_backward_input"
GATHER, SCATTER = "sparserl_condensed_gather", "sparserl_condensed_scatter"
_TARGETS = {FORWARD: "SparserlCondensedForward", BACKWARD: "SparserlCondensedBackward",
            FORWARD_KEPT: "SparserlCondensedForwardKept", BACKWARD_KEPT: "SparserlCondensedBackwardKept",
            BACKWARD_INPUT: "SparserlCondensedBackwardInput",
            GATHER: "SparserlCondensedGather", SCATTER: "SparserlCondensedScatter"}
LANES = 16  # examples per tile (condensed_native.cc kLanes)
COMPILE_FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-pthread")

_registered = False


def library_path() -> str:
    """Where the compiled library lives: the compilation cache's parent (`$XDG_CACHE_HOME/sparserl`), under a
    name that hashes the source, the flags, jaxlib's version and the CPU (-march=native)."""
    import jaxlib

    with open(SOURCE, "rb") as source:
        digest = hashlib.sha256(source.read())
    digest.update(" ".join(COMPILE_FLAGS).encode())
    digest.update(f"{jaxlib.__version__} {platform.machine()} {_cpu_flags()}".encode())
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "sparserl", "native", f"condensed_native-{digest.hexdigest()[:16]}.so")


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next((line for line in cpuinfo if line.startswith(("flags", "Features"))), "")
    except OSError:
        return platform.processor()


def build() -> str:
    """The compiled library's path, compiling it first if it is not cached (RuntimeError: why it cannot be)."""
    path = library_path()
    if os.path.exists(path):
        return path
    compiler = shutil.which("g++")
    if compiler is None:
        raise RuntimeError("native kernels need a C++ compiler: g++ is not on PATH")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tempfile.TemporaryDirectory(dir=os.path.dirname(path)) as directory:
        partial = os.path.join(directory, os.path.basename(path))
        result = subprocess.run([compiler, *COMPILE_FLAGS, f"-I{jax.ffi.include_dir()}", SOURCE, "-o", partial],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"native kernels failed to compile: {result.stderr.strip().splitlines()[-1:]}")
        os.replace(partial, path)  # atomic: a killed build leaves no half-written library behind
    return path


def unavailable_reason() -> str | None:
    """None when native kernels can run here, else why not (one line): not on a CPU backend, or no build."""
    if jax.default_backend() != "cpu":
        return f"native kernels run on the CPU only (this process runs on {jax.default_backend()})"
    try:
        register()
    except RuntimeError as error:
        return str(error)
    return None


def register() -> None:
    """Builds (or finds) the library and registers its custom calls with XLA, once per process."""
    global _registered
    if _registered:
        return
    library = ctypes.CDLL(build())
    for target, symbol in _TARGETS.items():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)), platform="cpu")
    _registered = True


def _tiles(batch: int) -> int:
    return -(-batch // LANES)


def _offsets_for(offsets: jax.Array | None) -> jax.Array:
    """The offsets operand: the given ones, or none (an empty array) for constant fan-in, which the kernels read as
    o * k without an array to build."""
    return jnp.zeros((0,), jnp.int32) if offsets is None else offsets


def _forward_call(x: jax.Array, kernel: jax.Array, indices: jax.Array, offsets: jax.Array):
    """(y [batch, out], values [out, k]) from the custom call; its tile scratch is dropped."""
    register()
    (batch, in_features), (out_features, k) = x.shape, indices.shape
    shapes = (jax.ShapeDtypeStruct((batch, out_features), jnp.float32),
              jax.ShapeDtypeStruct((out_features, k), jnp.float32),
              jax.ShapeDtypeStruct((_tiles(batch) * (in_features + out_features) * LANES,), jnp.float32))
    y, values, _ = jax.ffi.ffi_call(FORWARD, shapes, vmap_method="broadcast_all")(x, kernel, indices, offsets)
    return y, values


def _check(x: jax.Array, kernel: jax.Array, indices: jax.Array) -> None:
    if x.dtype != jnp.float32 or kernel.dtype != jnp.float32 or indices.dtype != jnp.int32:
        raise TypeError(f"native condensed kernels take float32 x and kernel and int32 indices, not "
                        f"{x.dtype}, {kernel.dtype}, {indices.dtype}")


def dense(x: jax.Array, kernel: jax.Array, indices: jax.Array, offsets: jax.Array | None = None) -> jax.Array:
    """x [..., in] times the kernel [in, out] restricted to `indices` [out, k] (and `offsets`, default constant
    fan-in), forward and backward in C++.

    Equal to `x @ kernel` when the kernel is zero off the indices (the masked params),
    and so is dx; the kernel gradient equals the masked network's at the kept
    connections and is 0 elsewhere (see the module docstring).
    """
    return _dense(x, kernel, indices, _offsets_for(offsets))


@jax.custom_vjp
def _dense(x, kernel, indices, offsets):
    return _dense_forward(x, kernel, indices, offsets)[0]


def _dense_forward(x, kernel, indices, offsets):
    _check(x, kernel, indices)
    y, values = _forward_call(x.reshape(-1, x.shape[-1]), kernel, indices, offsets)
    return y.reshape(*x.shape[:-1], kernel.shape[1]), (x, values, indices, offsets)


def _dense_backward(residuals, output_grad):
    x, values, indices, offsets = residuals
    flat = x.reshape(-1, x.shape[-1])
    (batch, in_features), out_features = flat.shape, values.shape[0]
    shapes = (jax.ShapeDtypeStruct(flat.shape, jnp.float32),
              jax.ShapeDtypeStruct((in_features, out_features), jnp.float32),
              jax.ShapeDtypeStruct((2 * _tiles(batch) * (in_features + out_features) * LANES,), jnp.float32))
    dx, dkernel, _ = jax.ffi.ffi_call(BACKWARD, shapes, vmap_method="broadcast_all")(
        flat, values, indices, offsets, output_grad.reshape(-1, out_features))
    return dx.reshape(x.shape), dkernel, *_no_gradient(indices, offsets)


def _no_gradient(*integer_operands):
    return tuple(np.zeros(operand.shape, jax.dtypes.float0) for operand in integer_operands)


_dense.defvjp(_dense_forward, _dense_backward)


# Kept-value training (`sparserl.sparse_network.kept_layers`): the kept values [out, k] are what the optimizer
# trains, so the layer takes them as its operand and its gradient is theirs, [out, k]; the dense kernel is only
# read and written between steps (`gather`, `scatter`).


def gather(kernel: jax.Array, indices: jax.Array, offsets: jax.Array | None = None) -> jax.Array:
    """The kept values [out, k]: each slot s of neuron o holds kernel[idx[s], o]; a slot of no neuron, 0 (not
    differentiable)."""
    register()
    shape = jax.ShapeDtypeStruct((*kernel.shape[:-2], *indices.shape[-2:]), jnp.float32)
    return jax.ffi.ffi_call(GATHER, shape, vmap_method="broadcast_all")(kernel, indices, _offsets_for(offsets))


def scatter(kernel: jax.Array, indices: jax.Array, values: jax.Array, offsets: jax.Array | None = None) -> jax.Array:
    """`kernel` with kernel[idx[s], o] = values[s] for each slot s of each neuron o (the other entries unchanged;
    in place where XLA can hand the call the kernel's buffer; not differentiable)."""
    register()
    return jax.ffi.ffi_call(SCATTER, jax.ShapeDtypeStruct(kernel.shape, jnp.float32), vmap_method="broadcast_all",
                            input_output_aliases={0: 0})(kernel, indices, _offsets_for(offsets), values)


def dense_kept(x: jax.Array, values: jax.Array, indices: jax.Array, offsets: jax.Array | None = None) -> jax.Array:
    """x [..., in] times the layer whose kept values are `values` [out, k] at `indices` [out, k] (and `offsets`):
    `dense` with the values as the operand, so the gradient is dvalues[s] = sum_b x[b, idx[s]] dy[b, o] for each
    slot s of neuron o, the masked network's kernel gradient at the kept connections, in the values' own shape
    (0 in the slots of no neuron). Where the values are not differentiated (SAC's critics inside its actor loss),
    the backward pass computes dx alone."""
    return _dense_kept(x, values, indices, _offsets_for(offsets))


@jax.custom_vjp
def _dense_kept(x, values, indices, offsets):
    return _dense_kept_call(x, values, indices, offsets)


def _dense_kept_call(x, values, indices, offsets):
    _check(x, values, indices)
    register()
    flat = x.reshape(-1, x.shape[-1])
    (batch, in_features), out_features = flat.shape, indices.shape[0]
    shapes = (jax.ShapeDtypeStruct((batch, out_features), jnp.float32),
              jax.ShapeDtypeStruct((_tiles(batch) * (in_features + out_features) * LANES,), jnp.float32))
    y, _ = jax.ffi.ffi_call(FORWARD_KEPT, shapes, vmap_method="broadcast_all")(flat, values, indices, offsets)
    return y.reshape(*x.shape[:-1], out_features)


def _dense_kept_forward(x, values, indices, offsets):
    """With symbolic zeros: each argument comes with whether it is differentiated (`perturbed`); the residuals
    remember the values' (an empty tuple for yes, None for no) for the backward pass to pick its kernel."""
    primals = (x.value, values.value, indices.value, offsets.value)
    return _dense_kept_call(*primals), (*primals, () if values.perturbed else None)


def _dense_kept_backward(residuals, output_grad):
    x, values, indices, offsets, values_differentiated = residuals
    flat = x.reshape(-1, x.shape[-1])
    (batch, in_features), out_features = flat.shape, values.shape[0]
    if isinstance(output_grad, jax.custom_derivatives.SymbolicZero):
        output_grad = jnp.zeros((*x.shape[:-1], out_features), jnp.float32)
    scratch = jax.ShapeDtypeStruct((2 * _tiles(batch) * (in_features + out_features) * LANES,), jnp.float32)
    operands = (flat, values, indices, offsets, output_grad.reshape(-1, out_features))
    if values_differentiated is None:
        dx, _ = jax.ffi.ffi_call(BACKWARD_INPUT, (jax.ShapeDtypeStruct(flat.shape, jnp.float32), scratch),
                                 vmap_method="broadcast_all")(*operands)
        return dx.reshape(x.shape), None, None, None
    shapes = (jax.ShapeDtypeStruct(flat.shape, jnp.float32), jax.ShapeDtypeStruct(values.shape, jnp.float32), scratch)
    dx, dvalues, _ = jax.ffi.ffi_call(BACKWARD_KEPT, shapes, vmap_method="broadcast_all")(*operands)
    return dx.reshape(x.shape), dvalues, None, None


_dense_kept.defvjp(_dense_kept_forward, _dense_kept_backward, symbolic_zeros=True)
