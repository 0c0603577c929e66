"""Row `kernel_gradient`: a 90% RigL (ERK) update with the dense layers' product `sparserl.linear.matmul` (the kernel
gradient written as x^T dy, in the kernel's layout) vs autodiff's (`linear.autodiff_backward`), for DQN CartPole
2x512, SAC 2x256 and DQN Nature CNN, in one process, interleaved."""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp

from sparserl import linear
from sparserl.experiments.bench import agent_programs, timing, training
from sparserl.experiments.bench.table import Row, Settings
from sparserl.experiments.bench.workloads import RIGL_90

PRODUCTS = {"linear": contextlib.nullcontext, "autodiff": linear.autodiff_backward}  # the context each is traced in


def rows(settings: Settings) -> list[Row]:
    """The update with `linear.matmul` vs with autodiff's matmul in the dense layers (speed-up of ours)."""
    rows = []
    for agent_name, env_id, label in (("dqn", "CartPole-v1", "DQN CartPole 2x512, batch 128"),
                                      ("sac", "HalfCheetah-v5", "SAC 2x256, batch 256"),
                                      ("dqn", "ALE/Pong-v5", "DQN Nature CNN, batch 32")):
        config = training.train_config(agent_name, env_id, {**RIGL_90, "replay_capacity": 1000, "steps": 10**8})
        functions = {}
        for product, context in PRODUCTS.items():
            update, state, batch, keys = agent_programs.seed_update(*agent_programs.make_agent(config), config)
            state = state.replace(step=jnp.int32(config.sparse.rigl.update_period + 1))  # not a topology step
            with context():  # the product is chosen when the update is traced, on its first call
                jax.block_until_ready(update(state, batch, keys))
            functions[product] = lambda update=update, s=state, b=batch, k=keys: update(s, b, k)
        ms = timing.interleaved_ms(functions, rounds=settings.pick(8, 4), calls=settings.pick(10, 5))
        rows.append(Row("kernel gradient", f"{label}: update, linear.matmul vs autodiff's matmul", ms["linear"],
                        ms["autodiff"], "ms", ms["autodiff"] / ms["linear"], "autodiff / linear (speed-up)"))
    return rows
