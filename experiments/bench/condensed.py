"""Row `condensed`: condensed kernels, XLA's (`condensed`) and the C++ ones (`native`), vs masked dense at 90%
constant fan-in: forward and forward+backward of single layers (512x512, 4x512, 512x2) at batch 1, 16, 128, 256;
DQN acting at batch 1 and a DQN update at batch 128 on the 2x512 MLP (Graesser et al.'s protocol); end to end,
DQN CartPole at that protocol (host loop, steady env steps/s); each DQN row for `sparse.kernels` = condensed, auto
(condensed where `condensed.is_faster`) and native."""

from __future__ import annotations

import statistics

import jax
import jax.numpy as jnp
import ml_collections

from sparserl import loop, runner
from sparserl.configs.base import network_module
from sparserl.experiments.bench import agent_programs, timing, training
from sparserl.experiments.bench.table import Row, Settings
from sparserl.sparse import condensed, condensed_native, structure

SPARSITY = 0.9
LAYERS = ((512, 512), (4, 512), (512, 2))
COMPARED = ("condensed", "auto", "native")  # each against `masked`


def dqn_overrides(kernels: str) -> dict:
    """DQN CartPole at Graesser et al.'s protocol (2x512, batch 128, ERK), 90% static fan-in, `kernels`."""
    return {"sparse.method": "static", "sparse.sparsity": SPARSITY, "sparse.structure": "fan_in",
            "sparse.kernels": kernels}


def dqn_config(kernels: str, overrides: dict) -> ml_collections.ConfigDict:
    """The config of `dqn_overrides(kernels)` and `overrides`."""
    return training.train_config("dqn", "CartPole-v1", {**dqn_overrides(kernels), **overrides})


def layer_rows(settings: Settings) -> list[Row]:
    """Forward and forward+backward of one layer, condensed vs masked dense, per layer shape and batch size."""
    rows = []
    for in_features, out_features in LAYERS:
        k = condensed.fan_in(in_features, SPARSITY)
        mask = structure.random_mask(condensed.CONSTANT_FAN_IN, jax.random.key(0), (in_features, out_features), SPARSITY)
        kernel = jnp.where(mask, jax.random.normal(jax.random.key(1), mask.shape), 0.0)
        indices = structure.fan_in_indices(mask, k)
        for batch in (1, 16, 128, 256):
            x = jax.random.normal(jax.random.key(2), (batch, in_features))
            target = jax.random.normal(jax.random.key(3), (batch, out_features))
            forwards = {"masked": lambda x, w: x @ w, "condensed": lambda x, w: condensed.dense(x, w, indices),
                        "native": lambda x, w: condensed_native.dense(x, w, indices)}
            functions = {}
            for name, forward in forwards.items():
                functions[f"{name} forward"] = lambda f=jax.jit(forward): f(x, kernel)
                # A squared error, so that the gradient needs the forward pass (a linear loss would let XLA drop it).
                backward = jax.jit(jax.grad(lambda x, w, forward=forward: jnp.sum((forward(x, w) - target) ** 2),
                                            argnums=(0, 1)))
                functions[f"{name} forward+backward"] = lambda f=backward: f(x, kernel)
            ms = timing.interleaved_ms(functions, rounds=settings.pick(5, 2), calls=settings.pick(20, 5))
            for part in ("forward", "forward+backward"):
                for kind in ("condensed", "native"):
                    masked, ours = ms[f"masked {part}"], ms[f"{kind} {part}"]
                    rows.append(Row("condensed layer", f"{in_features}x{out_features} k={k}, batch {batch}: {part}, {kind}",
                                    ours, masked, "ms", masked / ours, f"masked / {kind} (speed-up)"))
    return rows


def dqn_program_ms(settings: Settings) -> dict[str, float]:
    """ms per call of DQN's jitted act (batch 1) and update (batch 128, the state donated), under each of `condensed.KERNELS`, and of
    the masked network's forward pass alone ("forward masked")."""
    functions = {}
    for kernels in condensed.KERNELS:
        config = dqn_config(kernels, {"steps": 10**8})
        agent, env_spec = agent_programs.make_agent(config)
        update, state, batch, keys = agent_programs.seed_update(agent, env_spec, config)
        actor = runner.make_actor(agent, loop.seed_axes(state), explore=True)
        observation = jnp.zeros((1, 1, *env_spec.observation_shape), jnp.float32)
        functions[f"act {kernels}"] = (lambda f=actor, s=state, k=keys, step=config.learning_starts:
                                       f(s, observation, k, step))
        functions[f"update {kernels}"] = agent_programs.donated_update_call(agent, env_spec, config)
        if kernels == "masked":  # the network's share of acting: its forward pass alone, one jitted call
            module = network_module(config.network, env_spec.num_actions)
            forward = jax.jit(jax.vmap(lambda params, x: module.apply({"params": params}, x)))
            functions["forward masked"] = lambda f=forward, s=state: f(s.online.params, observation)
    return timing.interleaved_ms(functions, rounds=settings.pick(8, 4), calls=settings.pick(20, 8))


def end_to_end_rates(settings: Settings) -> tuple[int, dict[str, float]]:
    """(steps, median steady env steps/s of DQN CartPole per kernels) over alternating runs of every kernels."""
    steps = settings.pick(6_000, 2_000)  # learning from step 1,000; the steady rate from half the run on
    rates: dict[str, list[float]] = {kernels: [] for kernels in ("masked", *COMPARED)}
    for _ in range(settings.pick(2, 1)):  # alternate the sides so that load changes hit all of them
        for kernels in rates:
            overrides = {**dqn_overrides(kernels), **training.quiet_run(steps), "checkpoint_replay": False}
            rates[kernels].append(training.steady_rate_in_process("dqn", "CartPole-v1", overrides, from_fraction=0.5))
    return steps, {kernels: statistics.median(values) for kernels, values in rates.items()}


def rows(settings: Settings) -> list[Row]:
    """Condensed kernels vs masked dense at 90% constant fan-in (goals: acting >= 2x, update and end to end >= 1.5x)."""
    rows = layer_rows(settings)
    ms = dqn_program_ms(settings)
    rows.append(Row("condensed DQN", "DQN act, 2x512, batch 1: the masked network's forward pass alone vs the act call",
                    ms["forward masked"], ms["act masked"], "ms", ms["forward masked"] / ms["act masked"], "forward / act"))
    for program, label, goal in (("act", "DQN act, 2x512, batch 1", ">= 2"),
                                 ("update", "DQN update, 2x512, batch 128", ">= 1.5")):
        for kernels in COMPARED:
            masked, ours = ms[f"{program} masked"], ms[f"{program} {kernels}"]
            rows.append(Row("condensed DQN", f"{label}, {kernels}", ours, masked, "ms", masked / ours,
                            "masked / ours (speed-up)", goal))
    steps, rates = end_to_end_rates(settings)
    for kernels in COMPARED:
        rows.append(Row("condensed DQN", f"DQN CartPole end to end, 2x512 batch 128, {steps:,} steps, {kernels}",
                        rates[kernels], rates["masked"], "env steps/s", rates[kernels] / rates["masked"],
                        "ours / masked (speed-up)", ">= 1.5"))
    return rows
