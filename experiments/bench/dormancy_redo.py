"""Row `dormancy_redo`: training time with a remedy (ReDo; on CartPole also ReGraMa, Shrink & Perturb and the reset
of the last layer) and the logged measures (dormancy, GraMa, srank, weight magnitude) at the default periods vs
without (goal: at most 3% more), for DQN on CartPole (Graesser et al.'s protocol) and on Atari (Nature CNN).

Timed side by side: the host loop's program for a step that only acts, its program for a step that learns with
ReDo on (not due: the host loop compiles ReDo out of it, `dormancy.recycle_when_due`) and with ReDo off, an update
on which ReDo is due and one on which it is not (their difference is a recycle), and a measurement. The remedy
runs every `redo.period` gradient steps (its own, `configs.base.REMEDY_PERIODS`) and the measurement every
`log_every` env steps; both are amortised.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections

from sparserl import envs, loop, replay as replay_lib, runner
from sparserl.agent_contract import Agent
from sparserl.batches import Transition
from sparserl.configs.base import REMEDIES
from sparserl.experiments.bench import agent_programs, timing, training
from sparserl.experiments.bench.table import Row, Settings


def host_step(config: ml_collections.ConfigDict, batch: Transition) -> tuple[Agent, Any, dict, Callable]:
    """(the agent, one seed's initial state, the loop's carry {state, replay}, `program(learn)`): a call of the host
    loop's program for one env step of `batch` ([1 seed, 1 env, ...]), which learns or only acts, on the carry."""
    agent, env_spec = agent_programs.make_agent(config)
    state = loop.init_states(agent, [0])
    step = runner.OffPolicyStep(agent, config, loop.seed_axes(state))
    carry = {"state": jax.tree.map(jnp.copy, state), "replay": loop.init_replay(config, env_spec, 1)}

    def program(learn: bool) -> Callable:
        def call():
            new_state, carry["replay"], actions, _ = step.program(learn, False)(
                carry["state"], carry["replay"], batch, batch.observation, config.learning_starts)
            carry["state"] = new_state if learn else carry["state"].replace(rng=new_state)  # acting returns the key
            return actions
        return call

    return agent, state, carry, program


def redo_functions(agent: Agent, config: ml_collections.ConfigDict, env_spec: envs.EnvSpec, state: Any,
                   carry: dict) -> dict[str, Callable]:
    """Calls of an update on which ReDo is due ("recycling update"), one on which it is not ("update"), and of a
    dormancy measurement ("measure")."""
    axes = loop.seed_axes(state)

    def update(state, replay, key, plan):
        sample = functools.partial(replay_lib.sample, replay)
        return agent.update(state, sample(key, config.batch_size), key, sample, plan)

    plans = {due: agent.plan(1, 1)._replace(recycle=due) for due in (True, False)}  # update 1, ReDo due or not
    updates = {due: jax.jit(jax.vmap(functools.partial(update, plan=plan), in_axes=(axes, 0, 0), out_axes=(axes, 0)))
               for due, plan in plans.items()}
    measure = jax.jit(jax.vmap(agent.measure, in_axes=(axes, 0)))
    keys, big_batch = loop.seed_keys([3]), agent_programs.random_transitions(env_spec, config.dormancy.batch_size, seed=3)
    return {"recycling update": lambda: updates[True](state, carry["replay"], keys),
            "update": lambda: updates[False](state, carry["replay"], keys),
            "measure": lambda: measure(state, big_batch)}


def redo_overhead(env_id: str, overrides: dict, settings: Settings, remedy: str = "redo") -> tuple[float, float]:
    """(ms per env step with the remedy and the logged measures, ms without) of DQN's host loop, amortised."""
    env_spec = envs.env_spec(env_id)
    batch = agent_programs.random_transitions(env_spec, 1, seed=2)
    functions, config = {}, None
    for redo in (True, False):
        redo_config = training.train_config("dqn", env_id, {**overrides, "redo.enabled": redo, "redo.remedy": remedy,
                                                             "steps": 10**8})
        agent, state, carry, program = host_step(redo_config, batch)
        functions["learn" if redo else "learn without redo"] = program(True)
        if redo:
            config = redo_config
            functions["act"] = program(False)
            functions.update(redo_functions(agent, config, env_spec, state, carry))
    ms = timing.interleaved_ms(functions, rounds=settings.pick(6, 3), calls=settings.pick(10, 4))
    train_every, period = config.train_every, config.redo.period
    acting = (train_every - 1) * ms["act"]
    without = (ms["learn without redo"] + acting) / train_every
    recycle = max(ms["recycling update"] - ms["update"], 0.0)
    with_redo = (ms["learn"] + acting) / train_every + recycle / (period * train_every) + ms["measure"] / config.log_every
    return with_redo, without


def rows(settings: Settings) -> list[Row]:
    """Training time with each remedy and the logged measures at the default periods vs without (goal: at most 3%
    more)."""
    rows = []
    for name, env_id, overrides, remedy in (
        *(("DQN CartPole 2x512 batch 128 (Graesser)", "CartPole-v1", {}, remedy) for remedy in REMEDIES),
        ("DQN Atari Nature CNN batch 32", "ALE/Pong-v5", {"replay_capacity": 1000}, "redo"),
    ):
        with_remedy, without = redo_overhead(env_id, overrides, settings, remedy)
        rows.append(Row(f"measures + {remedy}", name, with_remedy, without, "ms/env step", with_remedy / without,
                        "with / without", "<= 1.03"))
    return rows
