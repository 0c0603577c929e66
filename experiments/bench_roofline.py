"""The compiled loop against its own roofline: `python -m sparserl.bench --rows=compiled`.

The roofline of a training program is the same program with no learning: the
same loops, envs, acting (the network's forward pass), replay writes, metrics
and evaluation schedule, with the agent's `update` replaced by one that
returns its state unchanged. No algorithm can run faster than that on the same
envs and network, so `training / roofline` (at most 1) says how much of the
time learning takes. Both programs are built by `compiled_runner.CompiledLoop`
from the config `sparserl.train` resolves for the same flags, compiled ahead,
warmed up by one call and timed over the next (the same rows), one after the
other in this process.

Workloads: PPO at PureJaxRL's CartPole settings (the classic preset: 4 envs x
128 steps, 4 epochs x 4 minibatches, 2x64 tanh) and DQN at PureJaxRL's
CartPole settings (10 envs, 120-84 MLP, batch 128, an update every 10 env
steps), dense and 90% RigL, one seed.
"""

import tempfile
import time

import jax
import jax.numpy as jnp

from sparserl import compiled_runner, loop, train

# PureJaxRL's dqn.py CartPole settings, as ../shared/peers/side_by_side.py runs them against ours.
PUREJAXRL_DQN = ("--agent=dqn", "--config.network.hidden_sizes=120,84", "--config.batch_size=128",
                 "--config.train_every=10", "--config.learning_rate=2.5e-4", "--config.target_update_period=50",
                 "--config.replay_capacity=10000", "--config.learning_starts=10000", "--config.epsilon_end=0.05",
                 "--config.epsilon_decay_steps=240000", "--config.td_loss=mse", "--config.weight_decay=0",
                 "--config.num_envs=10")
WORKLOADS = {"PPO CartPole (PureJaxRL settings)": ("--agent=ppo",), "DQN CartPole (PureJaxRL settings)": PUREJAXRL_DQN}


def _no_learning(agent):
    """The agent with an `update` that returns its state unchanged and no metrics."""
    return agent._replace(update=lambda state, batch, key, *rest: (state, {}))


def steps_per_second(flags: tuple[str, ...], learning: bool, steps: int) -> float:
    """Env steps per second of one call that runs `steps` env steps (rows of 10% of them), after a warm-up call of
    the same rows from the end of learning_starts (so DQN's call learns throughout)."""
    with tempfile.TemporaryDirectory() as workdir:
        prepared = train.prepare(["sparserl.train", "--env=gymnax:CartPole-v1", f"--steps={2 * steps}",
                                  f"--eval_every={2 * steps}", f"--config.log_every={steps // 10}", *flags,
                                  f"--workdir={workdir}"])
    config, agent = prepared.configs[0], prepared.agents[0]
    agent = agent if learning else _no_learning(agent)
    members = compiled_runner.Members(jnp.asarray(prepared.seeds, jnp.uint32),
                                      jnp.full(len(prepared.seeds), config.sparse.sparsity, jnp.float32))
    compiled_loop = compiled_runner.CompiledLoop(prepared.loop, lambda level: agent, members, config, prepared.env_spec)
    schedule = loop.Schedule(config, compiled_loop.kind.granularity)
    learn_from = config.get("learning_starts", 0)
    rows = [row for row in schedule.rows(0)]
    first, second = rows[:len(rows) // 2], rows[len(rows) // 2:]
    program = compiled_loop.compile(compiled_runner.call_plan(first, schedule, learn_from))
    state, carry = compiled_loop.state, compiled_loop.carry
    timed = 0.0
    for call_rows in (first, second):
        started = time.perf_counter()
        state, carry, outputs = program(members.levels, state, carry, members.seeds,
                                        compiled_runner.call_plan(call_rows, schedule, learn_from))
        jax.block_until_ready(outputs)
        timed = time.perf_counter() - started
    return (second[-1][1] - second[0][0]) / timed


def rows(quick: bool = False) -> list[tuple[str, float, float]]:
    """(workload and sparsity, training env steps/s, roofline env steps/s) for every workload, dense and 90%."""
    steps = 100_000 if quick else 250_000
    results = []
    for name, flags in WORKLOADS.items():
        for sparsity in (0.0, 0.9):
            level_flags = (*flags, f"--sparsity={sparsity:g}")
            results.append((f"{name}, sparsity {sparsity:g}", steps_per_second(level_flags, True, steps),
                            steps_per_second(level_flags, False, steps)))
    return results
