"""Row `condensed_gpu`: on a GPU, the condensed forward pass as a Pallas kernel (`condensed_pallas.dense`) vs XLA's
gathers (`condensed.dense`) vs masked dense (`linear.matmul`), at 90% constant fan-in: layers 1024x1024 and
2048x2048 at batch 1, 16 and 256, forward and forward+backward of a squared error (both condensed layers run the
masked backward pass). Each program applies the layer to `repeats` different batches in one `lax.scan`, so a
kernel's time is not hidden behind a call's dispatch and synchronisation; the rows give ms per application.

Goal (the GPU path's issue): the condensed forward at batch 256 >= 1.3x masked (SRigL, Lasby et al. 2023, report
1.7x for their condensed layer at batch 256 on a GPU). Forward+backward has no goal: its backward pass is the
masked one, so it cannot pass 1.5x (a masked backward costs about two forwards). The last row says which condensed
forward was faster over every program measured: the value `condensed_pallas.GPU_FORWARD` should take.

On a CPU it times nothing (Pallas runs there only in interpret mode, slowly): no rows, one printed line."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from sparserl import linear
from sparserl.experiments.bench import timing
from sparserl.experiments.bench.table import Row, Settings
from sparserl.sparse import condensed, condensed_pallas, structure

SPARSITY = 0.9
LAYERS = ((1024, 1024), (2048, 2048))
BATCHES = (1, 16, 256)
GOAL_BATCH, GOAL = 256, ">= 1.3"
PARTS = ("forward", "forward+backward")
# Each a layer (x, kernel, indices) -> y; "masked" ignores the indices.
LAYER_FUNCTIONS = {"masked": lambda x, kernel, indices: linear.matmul(x, kernel),
                   "xla": condensed.dense,
                   "pallas": lambda x, kernel, indices: condensed_pallas.dense(x, kernel, indices, interpret=False)}
CONDENSED = ("pallas", "xla")


def random_layer(in_features: int, out_features: int) -> tuple[jax.Array, jax.Array]:
    """(kernel [in, out] zero off a random constant fan-in mask at `SPARSITY`, its indices [out, k])."""
    mask = structure.random_mask(condensed.CONSTANT_FAN_IN, jax.random.key(0), (in_features, out_features), SPARSITY)
    kernel = jnp.where(mask, jax.random.normal(jax.random.key(1), mask.shape), 0.0)
    return kernel, structure.fan_in_indices(mask, condensed.fan_in(in_features, SPARSITY))


def scanned_programs(layer: Callable[..., jax.Array]) -> dict[str, Callable[..., Any]]:
    """The jitted programs a row times, each `layer` applied once per batch of xs [repeats, batch, in]:
    "forward" (xs, kernel, indices) -> ys, and "forward+backward" (xs, targets, kernel, indices) -> (the kernel
    gradients of sum((y - target)^2) summed over the batches, the input gradients)."""

    def forward(xs, kernel, indices):
        return jax.lax.scan(lambda _, x: (None, layer(x, kernel, indices)), None, xs)[1]

    def forward_backward(xs, targets, kernel, indices):
        gradient = jax.grad(lambda x, kernel, target: jnp.sum((layer(x, kernel, indices) - target) ** 2),
                            argnums=(0, 1))

        def add_gradient(kernel_gradient_sum, example):
            x, target = example
            input_gradient, kernel_gradient = gradient(x, kernel, target)
            return kernel_gradient_sum + kernel_gradient, input_gradient

        return jax.lax.scan(add_gradient, jnp.zeros_like(kernel), (xs, targets))

    return {"forward": jax.jit(forward), "forward+backward": jax.jit(forward_backward)}


def layer_ms(settings: Settings, in_features: int, out_features: int, batch: int) -> dict[str, float]:
    """ms per application of every layer function and part ("pallas forward", ...), timed interleaved."""
    repeats = settings.pick(32, 8)
    kernel, indices = random_layer(in_features, out_features)
    xs = jax.random.normal(jax.random.key(2), (repeats, batch, in_features))
    targets = jax.random.normal(jax.random.key(3), (repeats, batch, out_features))
    functions = {}
    for name, layer in LAYER_FUNCTIONS.items():
        programs = scanned_programs(layer)
        functions[f"{name} forward"] = lambda f=programs["forward"]: f(xs, kernel, indices)
        functions[f"{name} forward+backward"] = lambda f=programs["forward+backward"]: f(xs, targets, kernel, indices)
    ms = timing.interleaved_ms(functions, rounds=settings.pick(5, 2), calls=settings.pick(10, 3))
    return {name: value / repeats for name, value in ms.items()}


def rows(settings: Settings) -> list[Row]:
    """Pallas and XLA condensed layers vs masked on a GPU (goal: forward at batch 256 >= 1.3x), and the faster
    condensed forward; on any other backend nothing is timed and no row comes back."""
    if jax.default_backend() != "gpu":
        print(f"condensed_gpu: not run, it needs a GPU (this process runs on {jax.default_backend()})", flush=True)
        return []
    rows, totals = [], {name: 0.0 for name in CONDENSED}
    for in_features, out_features in LAYERS:
        k = condensed.fan_in(in_features, SPARSITY)
        for batch in BATCHES:
            ms = layer_ms(settings, in_features, out_features, batch)
            for part in PARTS:
                masked = ms[f"masked {part}"]
                for name in CONDENSED:
                    ours = ms[f"{name} {part}"]
                    totals[name] += ours
                    goal = GOAL if (part, batch) == ("forward", GOAL_BATCH) else ""
                    rows.append(Row("condensed GPU", f"{in_features}x{out_features} k={k}, batch {batch}: {part}, "
                                    f"{name}", ours, masked, "ms", masked / ours, f"masked / {name} (speed-up)", goal))
    winner = min(CONDENSED, key=totals.get)
    rows.append(Row("condensed GPU", f"faster condensed forward: {winner} (condensed_pallas.GPU_FORWARD is "
                    f"{condensed_pallas.GPU_FORWARD!r}), every program above summed", totals["pallas"], totals["xla"],
                    "ms", totals["xla"] / totals["pallas"], "xla / pallas (above 1: pallas)"))
    return rows
