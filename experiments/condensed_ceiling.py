"""How fast can a condensed layer get on this CPU? A hand-written kernel as a bound for `sparserl.sparse.condensed`.

    python -m sparserl.experiments.condensed_ceiling           # the table (about 30 s on 2 cores)
    python -m sparserl.bench --rows=condensed_ceiling          # the same rows inside the bench table

Issue 14 asks condensed kernels (constant fan-in k, indices [out, k]) for
acting at batch 1 at least 2x faster than the masked dense network and a DQN
update at batch 128 at least 1.5x faster. XLA's gathers do not get there
(`python -m sparserl.bench --rows=condensed`). This experiment asks whether
any implementation could: it compiles `condensed_ceiling.cc` with the
machine's g++ (-O3 -march=native), the forward pass

    y[b, o] = sum_j x[b, idx[o, j]] * values[o, j]       (Lasby et al. 2023, section 3.1)

written for the CPU by hand, and times it against XLA's masked dense `x @ W`
on the same 90% constant fan-in 512x512 layer (Graesser et al.'s DQN hidden
layer). Below multiples of 16 examples it gathers scalars; otherwise it
transposes 16 examples at a time into a tile [in, 16] that stays in L1, and
every kept connection adds one vector of that tile, scaled, into a register
(four outputs at a time).

The comparison favours the hand-written kernel: its values are already
condensed (no gather from the dense kernel); it is timed inside C++ (no call
overhead; XLA's time includes a jitted call's dispatch, overlapped with the
previous call as the C++ loop's passes are); on 2 threads, each starts once
and runs all its passes without waiting for the other (no wake-up or
barrier per pass); and the faster of 1 and 2 threads counts. `dqn_bounds`
then charges each of the DQN update's four 512x512 products (two forward
passes, dx, the kernel gradient) this forward time, though the backward
products need a scatter-add and gathered dot products, and also takes the
products out altogether, which bounds any kernel.
"""

import argparse
import ctypes
import os
import shutil
import subprocess
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from sparserl import bench
from sparserl.sparse import condensed, structure

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "condensed_ceiling.cc")
LAYER = (512, 512)  # in, out: the 2x512 MLP's hidden layer
SPARSITY = 0.9
BATCHES = (1, 16, 128, 256)  # acting (1), small batches, DQN's batch (128) and a larger one


def build(directory: str) -> ctypes.CDLL:
    """`condensed_ceiling.cc` compiled into `directory` and loaded (RuntimeError when there is no g++)."""
    compiler = shutil.which("g++")
    if compiler is None:
        raise RuntimeError("condensed_ceiling needs a C++ compiler: g++ is not on PATH")
    library_path = os.path.join(directory, "condensed_ceiling.so")
    subprocess.run([compiler, "-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-pthread", SOURCE,
                    "-o", library_path], check=True, capture_output=True)
    library = ctypes.CDLL(library_path)
    library.condensed_forward_ns.restype = ctypes.c_double
    library.condensed_forward_ns.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 6
    return library


def forward(library: ctypes.CDLL, x: np.ndarray, values: np.ndarray, indices: np.ndarray, repeats: int,
            threads: int) -> tuple[np.ndarray, float]:
    """The hand-written forward pass of x [batch, in] and its mean ms over `repeats` passes on `threads` threads."""
    x = np.ascontiguousarray(x, np.float32)
    values = np.ascontiguousarray(values, np.float32)
    indices = np.ascontiguousarray(indices, np.int32)
    (batch, in_features), (out_features, k) = x.shape, indices.shape
    y = np.empty((batch, out_features), np.float32)
    nanoseconds = library.condensed_forward_ns(x.ctypes.data, values.ctypes.data, indices.ctypes.data, y.ctypes.data,
                                               batch, in_features, out_features, k, repeats, threads)
    return y, nanoseconds / 1e6


def constant_fan_in_layer(in_features: int, out_features: int, sparsity: float):
    """A random constant fan-in mask's masked kernel [in, out], its indices [out, k] and values [out, k]."""
    mask = structure.random_mask(condensed.CONSTANT_FAN_IN, jax.random.key(0), (in_features, out_features), sparsity)
    kernel = jnp.where(mask, jax.random.normal(jax.random.key(1), mask.shape), 0.0)
    indices = structure.fan_in_indices(mask, condensed.fan_in(in_features, sparsity))
    values = jnp.take_along_axis(kernel.T, indices, axis=1)
    return np.asarray(kernel), np.asarray(indices), np.asarray(values)


def pipelined_ms(function, arguments: tuple, repeats: int) -> float:
    """Mean ms per call of `repeats` back-to-back calls of a jitted function, synchronised once at the end
    (as the C++ loop runs its passes: one call's dispatch overlaps the previous call's work)."""
    jax.block_until_ready(function(*arguments))
    start = time.perf_counter()
    for _ in range(repeats):
        y = function(*arguments)
    jax.block_until_ready(y)
    return 1e3 * (time.perf_counter() - start) / repeats


def layer_ms(library: ctypes.CDLL, settings: bench.Settings, in_features: int, out_features: int, sparsity: float,
             batch: int) -> dict:
    """ms of one forward pass at `batch`: hand-written condensed (the faster of 1 and 2 threads, checked against
    x @ W before it is timed) and XLA's masked `x @ W`; with the thread count and k."""
    kernel, indices, values = constant_fan_in_layer(in_features, out_features, sparsity)
    x = np.random.default_rng(batch).normal(size=(batch, in_features)).astype(np.float32)
    repeats, rounds = settings.pick(200, 50), settings.pick(5, 3)
    hand_written_ms = {}
    for threads in (1, 2):
        y, _ = forward(library, x, values, indices, repeats=1, threads=threads)
        np.testing.assert_allclose(y, x @ kernel, rtol=1e-4, atol=1e-4)
        hand_written_ms[threads] = min(forward(library, x, values, indices, repeats, threads)[1] for _ in range(rounds))
    threads = min(hand_written_ms, key=hand_written_ms.get)
    masked_forward = jax.jit(lambda x, w: x @ w)
    masked_ms = min(pipelined_ms(masked_forward, (jnp.asarray(x), jnp.asarray(kernel)), repeats) for _ in range(rounds))
    return {"hand_written": hand_written_ms[threads], "masked": masked_ms, "threads": threads, "k": indices.shape[1]}


def dqn_bounds(library: ctypes.CDLL, settings: bench.Settings) -> list[bench.Row]:
    """Bounds on the DQN rows of `python -m sparserl.bench --rows=condensed` (2x512, ERK 90% constant fan-in),
    from measured parts: the masked program's time with its 512x512 products replaced by hand-written forward
    passes, and with them taken out (free), which bounds any kernel. The programs are timed as that row times
    them (`bench.interleaved_ms`: each call waited for, as an env loop waits for its action); the products as
    `layer_ms` times them.

    Act (batch 1) has one such product, the update (batch 128) four: the online and
    the target forward passes, dx and the kernel gradient. The bound charges every
    one of them the hand-written *forward* time, which the backward products
    (a scatter-add, gathered dot products) would not reach, and keeps the rest
    (Adam on the dense kernels, the small layers, the TD loss, the call): an upper
    bound on any condensed kernel under docs/design.md contract 3 (dense weights).
    """
    from sparserl import envs, runner
    from sparserl.agents import dqn

    config = bench.condensed_dqn_config("masked", {"steps": 10**8})
    env_spec = envs.env_spec(config.env)
    agent = dqn.make(config, env_spec)
    update, state, batch, keys = bench.seed_update(agent, config, env_spec)
    actor = runner.make_actor(agent, runner.seed_axes(state), explore=True)
    observation = jnp.zeros((1, 1, *env_spec.observation_shape), jnp.float32)
    hidden_mask = next(mask[0] for mask in jax.tree.leaves(state.online.opt_state.masks) if mask.shape[1:] == (512, 512))
    sparsity = 1 - int(hidden_mask[:, 0].sum()) / 512  # ERK's sparsity of that layer (a multiple of 1/512: exact)
    repeats, rounds = settings.pick(200, 50), settings.pick(5, 3)
    rows = []
    for program, batch_size, products, goal in (("act", 1, 1, ">= 2"), ("update", 128, 4, ">= 1.5")):
        call = (lambda: actor(state, observation, keys, config.learning_starts)) if program == "act" else (
            lambda: update(state, batch, keys))
        program_ms = bench.interleaved_ms({program: call}, rounds=rounds, calls=repeats // 10)[program]
        layer = layer_ms(library, settings, 512, 512, sparsity, batch_size)
        label = f"DQN {program}, 2x512 batch {batch_size}: bound, its {products} masked 512x512 product(s)"
        for replaced_by, product_ms in ((f"the hand-written forward (k={layer['k']})", layer["hand_written"]),
                                        ("nothing (free: the bound for any kernel)", 0.0)):
            bound_ms = program_ms - products * (layer["masked"] - product_ms)
            rows.append(bench.Row("condensed ceiling", f"{label} replaced by {replaced_by}", bound_ms, program_ms, "ms",
                                  program_ms / bound_ms, "masked / bound (speed-up)", goal))
    return rows


def rows(settings: bench.Settings) -> list[bench.Row]:
    """Per batch size, the hand-written condensed forward pass vs XLA's masked x @ W; then `dqn_bounds`."""
    in_features, out_features = LAYER
    result = []
    with tempfile.TemporaryDirectory() as directory:
        library = build(directory)
        for batch in BATCHES:
            layer = layer_ms(library, settings, in_features, out_features, SPARSITY, batch)
            gmacs = batch * out_features * layer["k"] / layer["hand_written"] / 1e6
            result.append(bench.Row(
                "condensed ceiling",
                f"{in_features}x{out_features} k={layer['k']}, batch {batch}: hand-written condensed forward "
                f"({layer['threads']} thread{'s' if layer['threads'] > 1 else ''}, {gmacs:.1f} GMAC/s) vs XLA masked",
                layer["hand_written"], layer["masked"], "ms", layer["masked"] / layer["hand_written"],
                "masked / hand-written (speed-up)"))
        result += dqn_bounds(library, settings)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    arguments = parser.parse_args()
    print(bench.format_table(rows(bench.Settings(quick=arguments.quick, peers=False))))


if __name__ == "__main__":
    main()
