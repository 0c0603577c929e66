"""Row `compiled`: the compiled loop (gymnax envs, `sparserl.compiled_runner`) against its roofline, and against the
host loop.

The roofline of a training program is the same program with no learning: the same loops, envs, acting (the
network's forward pass), replay writes, metrics and evaluation schedule, with the agent's `update` replaced by one
that returns its state unchanged. No algorithm runs faster than that on the same envs and network, so `training /
roofline` (at most 1) says how much of the time learning takes. Both programs are built by
`compiled_runner.CompiledLoop` from the run `sparserl.train` prepares for the same arguments, compiled ahead, warmed
up by one call and timed over the next (the same rows), one after the other in this process. Workloads: PPO at
PureJaxRL's CartPole settings (the classic preset: 4 envs x 128 steps, 4 epochs x 4 minibatches, 2x64 tanh) and DQN
at PureJaxRL's (10 envs, 120-84 MLP, batch 128, an update every 10 env steps), dense and 90% RigL, one seed.

Against the host loop: the same arguments trained on `gymnax:<id>` (the compiled loop) and on the Gymnasium id (the
host loop), one run after the other, aggregate steady env steps/s (`timing.steady_rate`).
"""

from __future__ import annotations

import tempfile
import time

import jax
import jax.numpy as jnp

from sparserl import compiled_runner, loop
from sparserl.agent_contract import Agent
from sparserl.experiments.bench import training
from sparserl.experiments.bench.table import Row, Settings
from sparserl.experiments.bench.workloads import DQN_SBX_SETTINGS

# PureJaxRL's dqn.py CartPole settings, as ../shared/peers/side_by_side.py runs them against ours.
PUREJAXRL_DQN = {"network.hidden_sizes": (120, 84), "batch_size": 128, "train_every": 10, "learning_rate": 2.5e-4,
                 "target_update_period": 50, "replay_capacity": 10_000, "learning_starts": 10_000, "epsilon_end": 0.05,
                 "epsilon_decay_steps": 240_000, "td_loss": "mse", "weight_decay": 0, "num_envs": 10}
ROOFLINE_WORKLOADS = {"PPO CartPole (PureJaxRL settings)": ("ppo", {}),
                      "DQN CartPole (PureJaxRL settings)": ("dqn", PUREJAXRL_DQN)}

# DQN at sbx's network and update settings; PPO at the classic preset (4 envs x 128 steps, 4 epochs of 4 minibatches).
SBX_DQN = {field: DQN_SBX_SETTINGS[field]
           for field in ("network.hidden_sizes", "batch_size", "train_every", "learning_rate")}
# name, agent, overrides, seeds, (steps of the compiled run, steps of the host run)
HOST_WORKLOADS = (
    ("PPO CartPole-v1, 16 seeds", "ppo", {}, 16, (40_960, 10_240)),
    ("DQN CartPole-v1 (sbx settings), 1 seed", "dqn", SBX_DQN, 1, (40_000, 8_000)),
    ("DQN CartPole-v1 (sbx settings), 16 seeds", "dqn", SBX_DQN, 16, (20_000, 5_000)),
)


def without_learning(agent: Agent) -> Agent:
    """The agent with an `update` that returns its state unchanged and no metrics."""
    return agent._replace(update=lambda state, batch, key, *rest: (state, {}))


def roofline_steps_per_second(agent_name: str, overrides: dict, learning: bool, steps: int) -> float:
    """Env steps per second of one compiled call that runs `steps` env steps (rows of 10% of them), after a warm-up
    call of the same rows from the end of learning_starts (so DQN's call learns throughout)."""
    with tempfile.TemporaryDirectory() as workdir:  # the run is prepared, not trained: nothing is written there
        prepared = training.prepare(agent_name, "gymnax:CartPole-v1", {
            **overrides, "steps": 2 * steps, "eval_every": 2 * steps, "log_every": steps // 10}, workdir)
    config, agent = prepared.configs[0], prepared.agents[0]
    agent = agent if learning else without_learning(agent)
    members = compiled_runner.Members(jnp.asarray(prepared.seeds, jnp.uint32),
                                      jnp.full(len(prepared.seeds), config.sparse.sparsity, jnp.float32))
    compiled_loop = compiled_runner.CompiledLoop(prepared.loop, lambda level: agent, members, config, prepared.env_spec)
    schedule = loop.Schedule(config, compiled_loop.kind.granularity)
    learn_from = config.get("learning_starts", 0)
    rows = list(schedule.rows(0))
    first, second = rows[:len(rows) // 2], rows[len(rows) // 2:]
    program = compiled_loop.compile(compiled_runner.call_plan(first, schedule, learn_from))
    state, carry, outputs = program(members.levels, compiled_loop.state, compiled_loop.carry, members.seeds,
                                    compiled_runner.call_plan(first, schedule, learn_from))  # the warm-up call
    jax.block_until_ready(outputs)
    started = time.perf_counter()
    jax.block_until_ready(program(members.levels, state, carry, members.seeds,
                                  compiled_runner.call_plan(second, schedule, learn_from)))
    return (second[-1][1] - second[0][0]) / (time.perf_counter() - started)


def roofline_rows(settings: Settings) -> list[Row]:
    """Training vs roofline env steps/s of every roofline workload, dense and 90% RigL."""
    steps = settings.pick(250_000, 100_000)
    rows = []
    for name, (agent_name, overrides) in ROOFLINE_WORKLOADS.items():
        for sparsity in (0.0, 0.9):
            level = {**overrides, "sparse.sparsity": sparsity}
            training_rate, roofline = (roofline_steps_per_second(agent_name, level, learning, steps)
                                       for learning in (True, False))
            rows.append(Row("compiled loop", f"{name}, sparsity {sparsity:g}: steady env steps/s", training_rate,
                            roofline, "env steps/s", training_rate / roofline, "training / roofline (no learning)"))
    return rows


def host_rows(settings: Settings) -> list[Row]:
    """Compiled vs host loop aggregate steady env steps/s, same agent settings (a quarter of the steps quick)."""
    scale = settings.pick(1, 4)
    rows = []
    for name, agent_name, overrides, seeds, (compiled_steps, host_steps) in HOST_WORKLOADS:
        log_every = 2_048 if agent_name == "ppo" else 1_000
        rates = {}
        for env_id, steps in (("gymnax:CartPole-v1", compiled_steps // scale),
                              ("CartPole-v1", max(host_steps // scale, 4 * log_every))):
            run = {**overrides, **training.quiet_run(steps), "log_every": log_every, "num_seeds": seeds}
            rates[env_id] = training.steady_rate_in_process(agent_name, env_id, run, from_fraction=0.4)
        compiled, host = rates["gymnax:CartPole-v1"], rates["CartPole-v1"]
        rows.append(Row("compiled loop", f"{name}: compiled vs host loop", compiled, host, "env steps/s",
                        compiled / host, "compiled / host"))
    return rows


def rows(settings: Settings) -> list[Row]:
    """The compiled loop against its roofline, then against the host loop."""
    return roofline_rows(settings) + host_rows(settings)
