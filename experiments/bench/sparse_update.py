"""Row `sparse_update`: one update step, 90% RigL (ERK) vs dense (goal: at most 1.05x), for the Nature CNN DQN
(batch 32), the SAC 2x256 update (batch 256) and a PPO update (SB3's CartPole settings, time per minibatch step),
with RigL's topology step counted at each agent's default period."""

from __future__ import annotations

import jax.numpy as jnp

from sparserl.experiments.bench import agent_programs, timing, training
from sparserl.experiments.bench.table import Row, Settings
from sparserl.experiments.bench.workloads import PPO_SB3_SETTINGS, RIGL_90

VARIANTS = {"dense": {}, "masked": RIGL_90}


def off_policy_update_ms(agent_name: str, env_id: str, overrides: dict, settings: Settings) -> tuple[float, float, int]:
    """(masked ms, dense ms, topology period) of one gradient step, topology steps amortised at their period."""
    functions, period = {}, None
    for variant, extra in VARIANTS.items():
        config = training.train_config(agent_name, env_id, {**overrides, **extra, "steps": 10**8})
        period = config.sparse.rigl.update_period
        update, state, batch, keys = agent_programs.seed_update(*agent_programs.make_agent(config), config)
        ordinary = state.replace(step=jnp.int32(period + 1))  # not a topology step
        topology = state.replace(step=jnp.int32(period))  # a topology step (SET/RigL drop and grow)
        functions[variant] = lambda update=update, s=ordinary, b=batch, k=keys: update(s, b, k)
        if variant == "masked":
            functions["topology"] = lambda update=update, s=topology, b=batch, k=keys: update(s, b, k)
    ms = timing.interleaved_ms(functions, rounds=settings.pick(10, 4), calls=settings.pick(10, 5))
    masked = (ms["masked"] * (period - 1) + ms["topology"]) / period
    return masked, ms["dense"], period


def ppo_update_ms(settings: Settings) -> tuple[float, float, int]:
    """(masked ms, dense ms, topology period) per PPO minibatch step, from whole-rollout updates (SB3's settings)."""
    functions, period, minibatch_steps = {}, None, None
    for variant, extra in VARIANTS.items():
        config = training.train_config("ppo", "CartPole-v1", {**PPO_SB3_SETTINGS, **extra, "steps": 10**8})
        period, minibatch_steps = config.sparse.rigl.update_period, config.update_epochs * config.num_minibatches
        functions[variant] = agent_programs.donated_update_call(*agent_programs.make_agent(config), config)
    ms = timing.interleaved_ms(functions, rounds=settings.pick(4, 2), calls=settings.pick(3, 2))
    return ms["masked"] / minibatch_steps, ms["dense"] / minibatch_steps, period


def rows(settings: Settings) -> list[Row]:
    """Masked 90% RigL (ERK) update vs the dense update of each agent (goal: at most 1.05x)."""
    measurements = (
        ("DQN Nature CNN, batch 32", off_policy_update_ms("dqn", "ALE/Pong-v5", {"replay_capacity": 1000}, settings)),
        ("SAC 2x256, batch 256", off_policy_update_ms("sac", "HalfCheetah-v5", {"replay_capacity": 1000}, settings)),
        ("PPO 2x64 minibatch 64", ppo_update_ms(settings)),
    )
    return [Row("sparse update", f"{name} (RigL every {period})", masked, dense, "ms", masked / dense,
                "masked / dense", "<= 1.05") for name, (masked, dense, period) in measurements]
