"""One benchmark command: `python -m sparserl.bench [--quick] [--peers] [--json PATH] [--rows NAME,...]`.

Every row is a ratio of two things measured side by side in this process (or
in child processes it starts one after the other), so that a loaded machine
slows both sides alike; absolute times are printed for context only. Rows
(issue 13):

- `sparse_update`: one update step, 90% RigL (ERK) vs dense, for the Nature
  CNN DQN (batch 32), the SAC 2x256 update (batch 256) and a PPO update
  (SB3's CartPole settings, time per minibatch step), with RigL's topology
  step counted at each agent's default period.
- `dormancy_redo`: training time with ReDo and dormancy logging at the default
  periods vs without, for DQN on CartPole (Graesser et al.'s protocol) and
  on Atari (Nature CNN): the host loop's jitted step with ReDo on (on the
  updates it is not due on) and off, plus the amortised cost of a recycling
  update and of a dormancy measurement.
- `seeds`: N seeds vmapped vs one seed (N = 1, 4, 8, 16), aggregate steady env
  steps per second of the host loop, DQN and PPO on CartPole.
- `envs_per_seed`: PPO's rollout collected by 4 or 8 envs per seed (one
  `gymnasium.vector.SyncVectorEnv`, one jitted `act` call per vector step) vs
  one env, same rollout size.
- `startup`: process start to the first env step, warm compilation cache vs
  cold (and vs sbx with `--peers`).
- `condensed`: condensed kernels (issue 14), XLA's (`condensed`) and the
  C++ ones (`native`), vs masked dense at 90% constant fan-in: forward and
  forward+backward of single layers (512x512, 4x512, 512x2) at batch 1, 16,
  128, 256; DQN acting at batch 1 and a DQN update at batch 128 on the 2x512
  MLP (Graesser et al.'s protocol); end to end, DQN CartPole at that protocol
  (host loop, steady env steps/s); each DQN row for `sparse.kernels` =
  condensed, auto and native.
- `kernel_gradient`: a 90% RigL update (DQN CartPole 2x512, SAC 2x256, DQN
  Nature CNN) with `sparserl.linear.matmul` in the dense layers vs with
  autodiff's matmul.
- `compiled`: the compiled loop against its roofline (the same program with
  no learning), PPO and DQN at PureJaxRL's CartPole settings, dense and 90%.
- `end_to_end`: steady steps/s and whole-process wall time of short runs of
  `python -m sparserl.train`: DQN CartPole, PPO CartPole, SAC HalfCheetah-v5,
  DQN Pong; with `--peers`, the same settings run with sbx
  (stable-baselines-jax), printing ours/peer ratios.

A row is a function `(Settings) -> list[Row]` registered in `ROWS`; add a
row by writing one more such function. `--quick` shortens every row
(under 5 minutes on 2 CPU cores); `--json PATH` writes the table.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import importlib
import importlib.util
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

import numpy as np

from sparserl import compilation_cache

CHILD_RESULT_PREFIX = "BENCH_CHILD "


@dataclasses.dataclass
class Settings:
    quick: bool
    peers: bool

    def pick(self, full, quick):
        return quick if self.quick else full


@dataclasses.dataclass
class Row:
    """One line of the table: `ratio` compares `ours` with `baseline` (see `ratio_of`)."""

    group: str
    name: str
    ours: float
    baseline: float | None
    unit: str
    ratio: float | None
    ratio_of: str  # what the ratio divides, e.g. "masked / dense"
    goal: str = ""  # e.g. "<= 1.05" (a bound on `ratio`, or on `ours` where `goal_on` is "ours")
    goal_on: str = "ratio"

    @property
    def holds(self) -> bool | None:
        if not self.goal:
            return None
        value = self.ratio if self.goal_on == "ratio" else self.ours
        if value is None:
            return None
        operator, bound = self.goal.split()
        return value <= float(bound) if operator == "<=" else value >= float(bound)

    def as_dict(self) -> dict:
        return dict(dataclasses.asdict(self), holds=self.holds)


# ----------------------------------------------------------------------------------------------------------------------
# Configs and timing helpers


def agent_config(agent: str, env_id: str, overrides: dict[str, Any]):
    """The config `python -m sparserl.train --agent=AGENT --env=ENV --config.<field>=<value>...` resolves to."""
    from sparserl import envs

    module = importlib.import_module(f"sparserl.configs.{agent}")
    config = module.get_config()
    preset = {k: v for k, v in module.PRESETS.get(envs.env_family(env_id), {}).items() if k != "env"}
    config.update_from_flattened_dict(preset)
    config.env = env_id
    config.update_from_flattened_dict(overrides)
    sparse = config.sparse
    if max(sparse.sparsity, sparse.get("actor_sparsity") or 0.0, sparse.get("critic_sparsity") or 0.0) == 0.0:
        sparse.method = "dense"
    return config


def override_flags(overrides: dict[str, Any]) -> list[str]:
    """`--config.<field>=<value>` flags for `sparserl.train`."""
    def text(value):
        if isinstance(value, (tuple, list)):
            return ",".join(str(item) for item in value)
        return str(value).lower() if isinstance(value, bool) else str(value)

    return [f"--config.{field}={text(value)}" for field, value in overrides.items()]


def interleaved_ms(functions: dict[str, Callable[[], Any]], rounds: int, calls: int) -> dict[str, float]:
    """Median ms per call of each function, timed in alternating rounds so that load hits all alike.

    Each function is called once first (compilation), then `rounds` x `calls`
    times; every call is synchronised (`jax.block_until_ready`).
    """
    import jax

    for function in functions.values():
        jax.block_until_ready(function())
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(rounds):
        for name, function in functions.items():
            for _ in range(calls):
                start = time.perf_counter()
                jax.block_until_ready(function())
                times[name].append(1e3 * (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in times.items()}


def random_transitions(env_spec, batch_size: int, seed: int):
    """A replay-shaped batch [1 seed, batch, ...] of random transitions for `env_spec`."""
    from sparserl.replay import Transition

    rng = np.random.default_rng(seed)

    def observations():
        shape = (1, batch_size, *env_spec.observation_shape)
        if env_spec.observation_dtype == np.uint8:
            return rng.integers(0, 256, shape, dtype=np.uint8)
        return rng.normal(size=shape).astype(np.float32)

    if env_spec.discrete:
        actions = rng.integers(0, env_spec.num_actions, (1, batch_size)).astype(np.int32)
    else:
        actions = rng.uniform(env_spec.action_low, env_spec.action_high, (1, batch_size, env_spec.num_actions)).astype(np.float32)
    return Transition(observations(), actions, rng.normal(size=(1, batch_size)).astype(np.float32), observations(),
                      rng.uniform(size=(1, batch_size)) < 0.01)


def random_rollout(env_spec, steps: int, num_envs: int, seed: int):
    """A `ppo.Rollout` [1 seed, steps, num_envs, ...] of random data."""
    from sparserl.agents.ppo import Rollout

    rng = np.random.default_rng(seed)
    shape = (1, steps, num_envs)
    observation = rng.normal(size=(*shape, *env_spec.observation_shape)).astype(np.float32)
    if env_spec.discrete:
        action = rng.integers(0, env_spec.num_actions, shape).astype(np.int32)
    else:
        action = rng.normal(size=(*shape, env_spec.num_actions)).astype(np.float32)
    return Rollout(observation, action, rng.normal(size=shape).astype(np.float32), rng.uniform(size=shape) < 0.01,
                   rng.uniform(size=shape) < 0.001, rng.normal(size=observation.shape).astype(np.float32))


# ----------------------------------------------------------------------------------------------------------------------
# Row: sparse update overhead

SPARSE_SETTINGS = {"sparse.method": "rigl", "sparse.sparsity": 0.9, "sparse.distribution": "erk"}


def _seed_update(agent, config, env_spec):
    """(jitted seed-vmapped update, one seed's state, a random batch, keys): call `update(state, batch, keys)`."""
    import jax

    from sparserl import loop

    state = loop.init_states(agent, [0])
    axes = loop.seed_axes(state)
    update = jax.jit(jax.vmap(agent.update, in_axes=(axes, 0, 0), out_axes=(axes, 0)))
    return update, state, random_transitions(env_spec, config.batch_size, seed=1), loop.seed_keys([1])


def _off_policy_update_ms(agent_name: str, env_id: str, overrides: dict, settings: Settings) -> tuple[float, float, int]:
    """(masked ms, dense ms, topology period) of one gradient step, topology steps amortised at their period."""
    import jax.numpy as jnp

    from sparserl import envs

    env_spec = envs.env_spec(env_id)
    agent_module = importlib.import_module(f"sparserl.agents.{agent_name}")
    functions, period = {}, None
    for variant, extra in (("dense", {}), ("masked", SPARSE_SETTINGS)):
        config = agent_config(agent_name, env_id, {**overrides, **extra, "steps": 10**8})
        period = config.sparse.rigl.update_period
        update, state, batch, keys = _seed_update(agent_module.make(config, env_spec), config, env_spec)
        ordinary = state.replace(step=jnp.int32(period + 1))  # not a topology step
        topology = state.replace(step=jnp.int32(period))  # a topology step (SET/RigL drop and grow)
        functions[variant] = lambda update=update, s=ordinary, b=batch: update(s, b, keys)
        if variant == "masked":
            functions["topology"] = lambda update=update, s=topology, b=batch: update(s, b, keys)
    rounds = settings.pick(10, 4)
    ms = interleaved_ms(functions, rounds=rounds, calls=settings.pick(10, 5))
    masked = (ms["masked"] * (period - 1) + ms["topology"]) / period
    return masked, ms["dense"], period


def _ppo_update_ms(settings: Settings) -> tuple[float, float, int]:
    """(masked ms, dense ms, topology period) per PPO minibatch step, from whole-rollout updates (SB3's settings)."""
    import jax

    from sparserl.agents import ppo
    from sparserl import envs, loop

    env_spec = envs.env_spec("CartPole-v1")
    functions, period, minibatch_steps = {}, None, None
    for variant, extra in (("dense", {}), ("masked", SPARSE_SETTINGS)):
        config = agent_config("ppo", "CartPole-v1", {**PPO_SB3_SETTINGS, **extra, "steps": 10**8})
        period, minibatch_steps = config.sparse.rigl.update_period, config.update_epochs * config.num_minibatches
        agent = ppo.make(config, env_spec)
        states = {"state": loop.init_states(agent, [0])}
        axes = loop.seed_axes(states["state"])
        update = jax.jit(jax.vmap(agent.update, in_axes=(axes, 0, 0), out_axes=(axes, 0)), donate_argnums=(0,))
        rollout = random_rollout(env_spec, config.rollout_steps, config.num_envs, seed=1)
        keys = loop.seed_keys([1])

        def call(update=update, states=states, rollout=rollout):
            states["state"], metrics = update(states["state"], rollout, keys)  # the step counter advances: RigL runs on schedule
            return metrics

        functions[variant] = call
    ms = interleaved_ms(functions, rounds=settings.pick(4, 2), calls=settings.pick(3, 2))
    return ms["masked"] / minibatch_steps, ms["dense"] / minibatch_steps, period


def row_sparse_update(settings: Settings) -> list[Row]:
    """Masked 90% RigL (ERK) update vs the dense update of each agent (goal: at most 1.05x)."""
    rows = []
    measurements = (
        ("DQN Nature CNN, batch 32", _off_policy_update_ms("dqn", "ALE/Pong-v5", {"replay_capacity": 1000}, settings)),
        ("SAC 2x256, batch 256", _off_policy_update_ms("sac", "HalfCheetah-v5", {"replay_capacity": 1000}, settings)),
        ("PPO 2x64 minibatch 64", _ppo_update_ms(settings)),
    )
    for name, (masked, dense, period) in measurements:
        rows.append(Row("sparse update", f"{name} (RigL every {period})", masked, dense, "ms", masked / dense,
                        "masked / dense", "<= 1.05"))
    return rows


# ----------------------------------------------------------------------------------------------------------------------
# Row: dormancy logging and ReDo


def _redo_overhead(env_id: str, overrides: dict, settings: Settings) -> tuple[float, float]:
    """(ms per env step with ReDo and dormancy logging, ms without) of DQN's host loop, amortised.

    Timed side by side: the runner's program for a step that only acts, its
    program for a step that learns with ReDo on (not due: the host loop
    compiles ReDo out of it, `dormancy.recycle_when_due`) and with ReDo off,
    an update on which ReDo is due and one on which it is not (their
    difference is a recycle), and a dormancy measurement. ReDo runs every
    `redo.period` gradient steps and the measurement every `log_every` env
    steps.
    """
    import functools

    import jax
    import jax.numpy as jnp

    from sparserl.agents import dqn
    from sparserl import envs, loop, replay as replay_lib, runner

    env_spec = envs.env_spec(env_id)
    batch = random_transitions(env_spec, 1, seed=2)
    transition, observations = jax.tree.map(lambda leaf: leaf[:, 0], batch), batch.observation
    functions = {}
    for redo in (True, False):
        config = agent_config("dqn", env_id, {**overrides, "redo.enabled": redo, "steps": 10**8})
        agent = dqn.make(config, env_spec)
        state = loop.init_states(agent, [0])
        axes = loop.seed_axes(state)
        step = runner.OffPolicyStep(agent, config, axes)
        replay = jax.vmap(lambda _: replay_lib.init(
            config.replay_capacity, env_spec.observation_shape, env_spec.observation_dtype, (), jnp.int32))(jnp.arange(1))
        carry = {"state": jax.tree.map(jnp.copy, state), "replay": replay}

        def program(learn, step=step, carry=carry, config=config):
            def call():
                new_state, carry["replay"], actions, _ = step.program(learn, False)(
                    carry["state"], carry["replay"], transition, observations, config.learning_starts)
                carry["state"] = new_state if learn else carry["state"].replace(rng=new_state)  # acting returns the key
                return actions
            return call

        functions["learn" if redo else "learn without redo"] = program(True)
        if redo:
            functions["act"] = program(False)

            def update(state, replay, key, plan, agent=agent, config=config):
                sample = functools.partial(replay_lib.sample, replay)
                return agent.update(state, sample(key, config.batch_size), key, sample, plan)

            updates = {plan: jax.jit(jax.vmap(functools.partial(update, plan=plan), in_axes=(axes, 0, 0), out_axes=(axes, 0)))
                       for plan in (True, False)}
            measure = jax.jit(jax.vmap(agent.measure, in_axes=(axes, 0)))
            keys, big_batch = loop.seed_keys([3]), random_transitions(env_spec, config.dormancy.batch_size, seed=3)
            functions["recycling update"] = lambda carry=carry: updates[True](state, carry["replay"], keys)
            functions["update"] = lambda carry=carry: updates[False](state, carry["replay"], keys)
            functions["measure"] = lambda measure=measure, state=state: measure(state, big_batch)
            redo_config = config
    ms = interleaved_ms(functions, rounds=settings.pick(6, 3), calls=settings.pick(10, 4))
    train_every, period = redo_config.train_every, redo_config.redo.period
    acting = (train_every - 1) * ms["act"]
    without = (ms["learn without redo"] + acting) / train_every
    recycle = max(ms["recycling update"] - ms["update"], 0.0)
    with_redo = (ms["learn"] + acting) / train_every + recycle / (period * train_every) + ms["measure"] / redo_config.log_every
    return with_redo, without


def row_dormancy_redo(settings: Settings) -> list[Row]:
    """Training time with ReDo and dormancy logging at the default periods vs without (goal: at most 3% more)."""
    rows = []
    for name, env_id, overrides in (
        ("DQN CartPole 2x512 batch 128 (Graesser)", "CartPole-v1", {}),
        ("DQN Atari Nature CNN batch 32", "ALE/Pong-v5", {"replay_capacity": 1000}),
    ):
        with_redo, without = _redo_overhead(env_id, overrides, settings)
        rows.append(Row("dormancy + ReDo", name, with_redo, without, "ms/env step", with_redo / without,
                        "with / without", "<= 1.03"))
    return rows


# ----------------------------------------------------------------------------------------------------------------------
# The host loop, in process: a clock on the env steps, and the runner with a throw-away run directory

DQN_SBX_SETTINGS = {  # sbx's DQN defaults (stable-baselines3 DQN), with a 1k warm-up and a 100k buffer on both sides
    "network.hidden_sizes": (256, 256), "batch_size": 32, "train_every": 4, "learning_rate": 1e-4,
    "weight_decay": 0.0, "target_update_period": 10_000, "learning_starts": 1_000, "replay_capacity": 100_000,
    "td_loss": "huber",
}
PPO_SB3_SETTINGS = {  # SB3/sbx PPO defaults: 1 env x 2048 steps, minibatch 64, 10 epochs, 2x64 tanh, lr 3e-4
    "num_envs": 1, "rollout_steps": 2048, "num_minibatches": 32, "update_epochs": 10, "learning_rate": 3e-4,
    "ent_coef": 0.0,
}
SAC_SBX_SETTINGS = {"learning_starts": 1_000, "replay_capacity": 100_000}  # 2x256, batch 256: both sides' defaults
DQN_ATARI_SETTINGS = {"learning_starts": 1_000, "replay_capacity": 10_000}  # Dopamine's DQN, short warm-up, small buffer


class StepClock:
    """Env steps and their times: `tick(n)` after each (vector) step of `n` env steps."""

    def __init__(self):
        self.steps: list[int] = []
        self.times: list[float] = []
        self.first_step_wall_time: float | None = None

    def tick(self, env_steps: int) -> None:
        if self.first_step_wall_time is None:
            self.first_step_wall_time = time.time()
        self.steps.append((self.steps[-1] if self.steps else 0) + env_steps)
        self.times.append(time.perf_counter())

    def steady_rate(self, from_fraction: float = 0.5) -> float:
        """Env steps per second from `from_fraction` of the steps to the last one."""
        start = int(len(self.steps) * from_fraction)
        return (self.steps[-1] - self.steps[start]) / (self.times[-1] - self.times[start])


@contextlib.contextmanager
def clocked_training_envs(clock: StepClock):
    """Ticks `clock` on every step of the first `SeedEnvs` that steps (the training envs; eval envs come later)."""
    from sparserl.envs import SeedEnvs

    original = SeedEnvs.step
    first = []

    def step(self, actions):
        result = original(self, actions)
        if not first:
            first.append(self)
        if self is first[0]:
            clock.tick(result.reward.size)
        return result

    SeedEnvs.step = step
    try:
        yield clock
    finally:
        SeedEnvs.step = original


def train_in_process(config, clock: StepClock) -> None:
    """Runs the agent's loop on `config` as `sparserl.train` would, in a throw-away run directory, quietly."""
    from sparserl import checkpoint, envs, loop, runner
    from sparserl.reporting import MetricsWriter, ProgressPrinter

    agent_module = importlib.import_module(f"sparserl.agents.{config.agent}")
    env_spec = envs.env_spec(config.env)
    agent = agent_module.make(config, env_spec)
    seeds = list(range(config.seed, config.seed + config.num_seeds))
    quiet = io.StringIO()
    with tempfile.TemporaryDirectory() as workdir, contextlib.redirect_stdout(quiet):
        seed_dirs = [os.path.join(workdir, f"seed{seed}") for seed in seeds]
        writers = [MetricsWriter(seed_dir, seed) for seed, seed_dir in zip(seeds, seed_dirs)]
        run = loop.Run(seeds, writers, ProgressPrinter("bench", config.steps, stream=quiet), checkpoint.Checkpointer(seed_dirs, 1))
        try:
            with clocked_training_envs(clock):
                runner.LOOPS[agent_module.LOOP](agent, config, env_spec, run)
        finally:
            for writer in writers:
                writer.close()


def row_seeds(settings: Settings) -> list[Row]:
    """Aggregate steady env steps/s of N vmapped seeds vs one seed (host loop, CartPole)."""
    rows = []
    for name, agent, overrides, steps in (
        ("DQN CartPole (sbx settings)", "dqn", DQN_SBX_SETTINGS, settings.pick(8_000, 2_500)),
        ("PPO CartPole (SB3 settings)", "ppo", PPO_SB3_SETTINGS, settings.pick(5 * 2048, 3 * 2048)),
    ):
        rates = {}
        for num_seeds in (1, 4, 8, 16):
            config = agent_config(agent, "CartPole-v1", {
                **overrides, "num_seeds": num_seeds, "steps": steps, "eval_every": 10**9, "eval_episodes": 1,
                "checkpoint_every": 10**9, "checkpoint_replay": False})
            clock = StepClock()
            train_in_process(config, clock)
            rates[num_seeds] = clock.steady_rate(from_fraction=0.4)
        for num_seeds, rate in rates.items():
            seeds = f"{num_seeds} seed{'s' if num_seeds > 1 else ''}"
            rows.append(Row("seeds vmapped", f"{name}, {seeds} vs 1", rate, rates[1], "env steps/s",
                            rate / rates[1], f"{seeds} / 1 seed (aggregate)"))
    return rows


def row_envs_per_seed(settings: Settings) -> list[Row]:
    """PPO CartPole with the 2048-transition rollout collected by E envs per seed (one `SyncVectorEnv`) vs one env."""
    rates = {}
    for num_envs in (1, 4, 8):
        config = agent_config("ppo", "CartPole-v1", {
            **PPO_SB3_SETTINGS, "num_envs": num_envs, "rollout_steps": 2048 // num_envs,
            "steps": settings.pick(6 * 2048, 3 * 2048), "eval_every": 10**9, "eval_episodes": 1,
            "checkpoint_every": 10**9})
        clock = StepClock()
        train_in_process(config, clock)
        rates[num_envs] = clock.steady_rate(from_fraction=0.34)
    return [Row("envs per seed", f"PPO CartPole, {num_envs} envs x {2048 // num_envs} steps vs 1 x 2048", rate, rates[1],
                "env steps/s", rate / rates[1], f"{num_envs} envs / 1 env") for num_envs, rate in rates.items()]


# ----------------------------------------------------------------------------------------------------------------------
# Rows run in child processes: start-up and end to end, ours and sbx's


@dataclasses.dataclass(frozen=True)
class Workload:
    agent: str
    env_id: str
    overrides: dict
    steps: int
    quick_steps: int
    peer_algorithm: str  # the sbx class
    peer_kwargs: dict


WORKLOADS = {
    "dqn_cartpole": Workload("dqn", "CartPole-v1", DQN_SBX_SETTINGS, 20_000, 6_000, "DQN",
                             dict(learning_starts=1_000, buffer_size=100_000)),
    "ppo_cartpole": Workload("ppo", "CartPole-v1", PPO_SB3_SETTINGS, 50_000, 4 * 2048, "PPO", {}),
    "sac_halfcheetah": Workload("sac", "HalfCheetah-v5", SAC_SBX_SETTINGS, 4_000, 2_000, "SAC",
                                dict(learning_starts=1_000, buffer_size=100_000)),
    "dqn_pong": Workload("dqn", "ALE/Pong-v5", DQN_ATARI_SETTINGS, 3_000, 1_600, "DQN",
                         dict(policy="CnnPolicy", learning_starts=1_000, buffer_size=10_000, learning_rate=6.25e-5,
                              target_update_interval=2_000, optimize_memory_usage=False)),
}


def _child_ours(workload: Workload, steps: int, exit_at_first_step: bool) -> dict:
    """Runs `sparserl.train` on the workload in this (child) process; returns the clock's figures."""
    clock = StepClock()
    if exit_at_first_step:
        original_tick = clock.tick

        def tick(env_steps):
            original_tick(env_steps)
            _print_child_result({"first_step_wall_time": clock.first_step_wall_time})
            os._exit(0)

        clock.tick = tick
    from sparserl import train

    with tempfile.TemporaryDirectory() as workdir:
        sys.argv = ["sparserl.train", f"--agent={workload.agent}", f"--env={workload.env_id}", f"--steps={steps}",
                    f"--eval_every={10**9}", f"--workdir={workdir}", "--config.eval_episodes=1",
                    *override_flags(workload.overrides)]
        with clocked_training_envs(clock), contextlib.redirect_stdout(io.StringIO()):
            try:
                train.entry_point()
            except SystemExit as exit_status:
                if exit_status.code not in (0, None):
                    raise
    return {"first_step_wall_time": clock.first_step_wall_time, "steady_rate": clock.steady_rate()}


def _child_peer(workload: Workload, steps: int, exit_at_first_step: bool) -> dict:
    """Runs sbx on the same env (our wrapped `make_env`) and settings; returns the clock's figures."""
    import gymnasium
    import sbx

    from sparserl import envs

    clock = StepClock()

    class Clocked(gymnasium.Wrapper):
        def step(self, action):
            result = self.env.step(action)
            clock.tick(1)
            if exit_at_first_step:
                _print_child_result({"first_step_wall_time": clock.first_step_wall_time})
                os._exit(0)
            return result

    kwargs = dict(workload.peer_kwargs)
    policy = kwargs.pop("policy", "MlpPolicy")
    model = getattr(sbx, workload.peer_algorithm)(policy, Clocked(envs.make_env(workload.env_id)), seed=0, verbose=0,
                                                 **kwargs)
    model.learn(total_timesteps=steps)
    return {"first_step_wall_time": clock.first_step_wall_time, "steady_rate": clock.steady_rate()}


def _print_child_result(result: dict) -> None:
    print(CHILD_RESULT_PREFIX + json.dumps(result), file=sys.__stdout__, flush=True)  # stdout may be redirected


def run_child(side: str, workload_name: str, steps: int, exit_at_first_step: bool = False,
              cache_dir: str | None = None) -> dict:
    """Starts `python -m sparserl.bench --child=SIDE:WORKLOAD` and returns its figures plus `startup_s`, `wall_s`."""
    environment = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")  # several processes may share a GPU
    if cache_dir is not None:
        environment[compilation_cache.ENV_VAR] = cache_dir
    command = [sys.executable, "-m", "sparserl.bench", f"--child={side}:{workload_name}", f"--child_steps={steps}"]
    if exit_at_first_step:
        command.append("--child_exit_at_first_step")
    started = time.time()
    process = subprocess.run(command, capture_output=True, text=True, env=environment)
    wall = time.time() - started
    results = [line for line in process.stdout.splitlines() if line.startswith(CHILD_RESULT_PREFIX)]
    if process.returncode != 0 or not results:
        raise RuntimeError(f"bench child {side}:{workload_name} failed (exit {process.returncode}):\n{process.stderr[-3000:]}")
    result = json.loads(results[-1][len(CHILD_RESULT_PREFIX):])
    return dict(result, startup_s=result["first_step_wall_time"] - started, wall_s=wall)


# ----------------------------------------------------------------------------------------------------------------------
# Row: condensed kernels

CONDENSED_SPARSITY = 0.9
CONDENSED_LAYERS = ((512, 512), (4, 512), (512, 2))


def condensed_dqn_config(kernels: str, overrides: dict):
    """DQN CartPole at Graesser et al.'s protocol (2x512, batch 128, ERK), 90% static fan-in, `kernels`."""
    config = agent_config("dqn", "CartPole-v1", {"sparse.method": "static", "sparse.sparsity": CONDENSED_SPARSITY,
                                                 "sparse.kernels": kernels, **overrides})
    config.sparse.structure = "fan_in"
    return config


def _layer_rows(settings: Settings) -> list[Row]:
    """Forward and forward+backward of one layer, condensed vs masked dense, per layer shape and batch size."""
    import jax
    import jax.numpy as jnp

    from sparserl.sparse import condensed, condensed_native, structure

    rows = []
    for in_features, out_features in CONDENSED_LAYERS:
        k = condensed.fan_in(in_features, CONDENSED_SPARSITY)
        mask = structure.random_mask(condensed.CONSTANT_FAN_IN, jax.random.key(0), (in_features, out_features),
                                     CONDENSED_SPARSITY)
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
            ms = interleaved_ms(functions, rounds=settings.pick(5, 2), calls=settings.pick(20, 5))
            for part in ("forward", "forward+backward"):
                for kind in ("condensed", "native"):
                    masked, ours = ms[f"masked {part}"], ms[f"{kind} {part}"]
                    rows.append(Row("condensed layer", f"{in_features}x{out_features} k={k}, batch {batch}: {part}, {kind}",
                                    ours, masked, "ms", masked / ours, f"masked / {kind} (speed-up)"))
    return rows


def _dqn_program_ms(settings: Settings) -> dict[str, float]:
    """ms per call of DQN's jitted act (batch 1) and update (batch 128), under each of `condensed.KERNELS`."""
    import jax
    import jax.numpy as jnp

    from sparserl.agents import dqn
    from sparserl import envs, loop, runner
    from sparserl.configs.base import network_module
    from sparserl.sparse import condensed

    env_spec = envs.env_spec("CartPole-v1")
    functions = {}
    for kernels in condensed.KERNELS:
        config = condensed_dqn_config(kernels, {"steps": 10**8})
        agent = dqn.make(config, env_spec)
        update, state, batch, keys = _seed_update(agent, config, env_spec)
        actor = runner.make_actor(agent, loop.seed_axes(state), explore=True)
        observation = jnp.zeros((1, 1, *env_spec.observation_shape), jnp.float32)
        functions[f"act {kernels}"] = lambda f=actor, s=state: f(s, observation, keys, config.learning_starts)
        functions[f"update {kernels}"] = lambda f=update, s=state, b=batch: f(s, b, keys)
        if kernels == "masked":  # the network's share of acting: its forward pass alone, one jitted call
            module = network_module(config.network, env_spec.num_actions)
            forward = jax.jit(jax.vmap(lambda params, x: module.apply({"params": params}, x)))
            functions["forward masked"] = lambda f=forward, s=state: f(s.online.params, observation)
    return interleaved_ms(functions, rounds=settings.pick(8, 4), calls=settings.pick(20, 8))


def row_condensed(settings: Settings) -> list[Row]:
    """Condensed kernels vs masked dense at 90% constant fan-in (goals: acting >= 2x, update and end to end >= 1.5x),
    for `kernels` = condensed (every sparse layer, every batch size) and auto (where `condensed.is_faster`)."""
    rows = _layer_rows(settings)
    ms = _dqn_program_ms(settings)
    rows.append(Row("condensed DQN", "DQN act, 2x512, batch 1: the masked network's forward pass alone vs the act call",
                    ms["forward masked"], ms["act masked"], "ms", ms["forward masked"] / ms["act masked"], "forward / act"))
    compared = ("condensed", "auto", "native")
    for program, label, goal in (("act", "DQN act, 2x512, batch 1", ">= 2"), ("update", "DQN update, 2x512, batch 128", ">= 1.5")):
        for kernels in compared:
            masked, ours = ms[f"{program} masked"], ms[f"{program} {kernels}"]
            rows.append(Row("condensed DQN", f"{label}, {kernels}", ours, masked, "ms", masked / ours,
                            "masked / ours (speed-up)", goal))
    rates: dict[str, list[float]] = {"masked": [], **{kernels: [] for kernels in compared}}
    steps = settings.pick(6_000, 2_000)  # learning from step 1,000; the steady rate from half the run on
    for _ in range(settings.pick(2, 1)):  # alternate the sides so that load changes hit all of them
        for kernels in rates:
            config = condensed_dqn_config(kernels, {"steps": steps, "eval_every": 10**9, "eval_episodes": 1,
                                                    "checkpoint_every": 10**9, "checkpoint_replay": False})
            clock = StepClock()
            train_in_process(config, clock)
            rates[kernels].append(clock.steady_rate(from_fraction=0.5))
    masked = statistics.median(rates["masked"])
    for kernels in compared:
        rate = statistics.median(rates[kernels])
        rows.append(Row("condensed DQN", f"DQN CartPole end to end, 2x512 batch 128, {steps:,} steps, {kernels}", rate,
                        masked, "env steps/s", rate / masked, "ours / masked (speed-up)", ">= 1.5"))
    return rows


# ----------------------------------------------------------------------------------------------------------------------
# Row: the dense layers' kernel gradient


def row_kernel_gradient(settings: Settings) -> list[Row]:
    """A 90% RigL (ERK) update with `sparserl.linear.matmul` in the dense layers vs with autodiff's matmul
    (`jnp.matmul` swapped in while the update is traced), same process, interleaved."""
    import unittest.mock

    import jax
    import jax.numpy as jnp

    from sparserl import envs, linear

    rows = []
    for agent_name, env_id, label in (("dqn", "CartPole-v1", "DQN CartPole 2x512, batch 128"),
                                      ("sac", "HalfCheetah-v5", "SAC 2x256, batch 256"),
                                      ("dqn", "ALE/Pong-v5", "DQN Nature CNN, batch 32")):
        env_spec = envs.env_spec(env_id)
        agent_module = importlib.import_module(f"sparserl.agents.{agent_name}")
        config = agent_config(agent_name, env_id, {**SPARSE_SETTINGS, "replay_capacity": 1000, "steps": 10**8})
        functions = {}
        for product in ("linear", "autodiff"):
            patch = unittest.mock.patch.object(linear, "matmul", jnp.matmul) if product == "autodiff" else contextlib.nullcontext()
            with patch:  # the product is chosen when the update is traced, on its first call
                update, state, batch, keys = _seed_update(agent_module.make(config, env_spec), config, env_spec)
                state = state.replace(step=jnp.int32(config.sparse.rigl.update_period + 1))  # not a topology step
                jax.block_until_ready(update(state, batch, keys))
            functions[product] = lambda update=update, s=state, b=batch, k=keys: update(s, b, k)
        ms = interleaved_ms(functions, rounds=settings.pick(8, 4), calls=settings.pick(10, 5))
        rows.append(Row("kernel gradient", f"{label}: update, linear.matmul vs autodiff's matmul", ms["linear"],
                        ms["autodiff"], "ms", ms["autodiff"] / ms["linear"], "autodiff / linear (speed-up)"))
    return rows


def row_compiled(settings: Settings) -> list[Row]:
    """The compiled loop against its roofline, the same program with no learning (`experiments/bench_roofline.py`):
    PPO and DQN at PureJaxRL's CartPole settings, dense and 90% RigL."""
    from sparserl.experiments import bench_roofline

    return [Row("compiled loop", f"{name}: steady env steps/s", training, roofline, "env steps/s", training / roofline,
                "training / roofline (no learning)") for name, training, roofline in bench_roofline.rows(settings.quick)]


def row_startup(settings: Settings) -> list[Row]:
    """Process start to the first env step, DQN CartPole: warm compilation cache vs cold (goal: warm <= 2 s)."""
    with tempfile.TemporaryDirectory() as cache_dir:
        cold = run_child("ours", "dqn_cartpole", 100, exit_at_first_step=True, cache_dir=cache_dir)["startup_s"]
        warm = run_child("ours", "dqn_cartpole", 100, exit_at_first_step=True, cache_dir=cache_dir)["startup_s"]
    rows = [Row("start-up", "DQN CartPole, warm cache vs cold", warm, cold, "s", warm / cold, "warm / cold",
                "<= 2", goal_on="ours")]
    if settings.peers:
        peer = run_child("peer", "dqn_cartpole", 100, exit_at_first_step=True)["startup_s"]
        rows.append(Row("start-up", "DQN CartPole, ours (warm) vs sbx", warm, peer, "s", warm / peer, "ours / sbx"))
    return rows


def row_end_to_end(settings: Settings) -> list[Row]:
    """Steady env steps/s and whole-process wall time of short training runs; with --peers, ours / sbx."""
    rows = []
    for name, workload in WORKLOADS.items():
        steps = settings.pick(workload.steps, workload.quick_steps)
        label = f"{workload.agent.upper()} {workload.env_id}, {steps:,} steps"
        ours = run_child("ours", name, steps)
        peer = run_child("peer", name, steps) if settings.peers else None
        steady_goal, wall_goal = {"dqn": (">= 3", ">= 2"), "ppo": (">= 3", ">= 2"), "sac": (">= 1.5", "")}[workload.agent]
        if workload.env_id.startswith("ALE/"):
            steady_goal, wall_goal = "", ""
        rows.append(Row("end to end", f"{label}: steady steps/s", ours["steady_rate"],
                        peer["steady_rate"] if peer else None, "env steps/s",
                        ours["steady_rate"] / peer["steady_rate"] if peer else None, "ours / sbx",
                        steady_goal if peer else ""))
        rows.append(Row("end to end", f"{label}: wall time", ours["wall_s"], peer["wall_s"] if peer else None, "s",
                        peer["wall_s"] / ours["wall_s"] if peer else None, "sbx wall / ours (speed-up)",
                        wall_goal if peer else ""))
    return rows


ROWS: dict[str, Callable[[Settings], list[Row]]] = {
    "sparse_update": row_sparse_update,
    "dormancy_redo": row_dormancy_redo,
    "seeds": row_seeds,
    "envs_per_seed": row_envs_per_seed,
    "condensed": row_condensed,
    "kernel_gradient": row_kernel_gradient,
    "compiled": row_compiled,
    "startup": row_startup,
    "end_to_end": row_end_to_end,
}


# ----------------------------------------------------------------------------------------------------------------------
# The table


def format_table(rows: list[Row]) -> str:
    header = ["group", "row", "ours", "baseline", "unit", "ratio", "ratio of", "goal", "holds"]
    cells = [[row.group, row.name, f"{row.ours:.4g}", "" if row.baseline is None else f"{row.baseline:.4g}", row.unit,
              "" if row.ratio is None else f"{row.ratio:.2f}", row.ratio_of,
              (row.goal + (" s" if row.goal_on == "ours" else "")) if row.goal else "",
              {True: "yes", False: "NO", None: ""}[row.holds]] for row in rows]
    widths = [max(len(line[i]) for line in [header, *cells]) for i in range(len(header))]
    lines = ["| " + " | ".join(cell.ljust(width) for cell, width in zip(line, widths)) + " |" for line in [header, *cells]]
    lines.insert(1, "|" + "|".join("-" * (width + 2) for width in widths) + "|")
    return "\n".join(lines)


def describe_machine() -> dict:
    import jax

    device = jax.devices()[0]
    return {"platform": device.platform, "device": device.device_kind, "devices": jax.device_count(),
            "cpus": os.cpu_count(), "jax": jax.__version__, "python": sys.version.split()[0]}


def peers_available() -> bool:
    return importlib.util.find_spec("sbx") is not None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparserl.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter rows (under 5 minutes on 2 CPU cores)")
    parser.add_argument("--peers", action="store_true", help="also run sbx on the same settings (pip install sparserl[bench])")
    parser.add_argument("--json", metavar="PATH", help="write the table as JSON to PATH")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated rows to run: {', '.join(ROWS)} (default all)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child_steps", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child_exit_at_first_step", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # on a GPU, leave memory to the child processes
    compilation_cache.enable()
    if args.child:
        side, workload = args.child.split(":")
        child = {"ours": _child_ours, "peer": _child_peer}[side]
        _print_child_result(child(WORKLOADS[workload], args.child_steps, args.child_exit_at_first_step))
        return 0

    names = [name.strip() for name in args.rows.split(",") if name.strip()]
    unknown = [name for name in names if name not in ROWS]
    if unknown or not names:
        print(f"error: --rows: unknown row(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(ROWS)}",
              file=sys.stderr)
        return 2
    if args.peers and not peers_available():
        print("error: --peers needs sbx (stable-baselines-jax), which is not installed: pip install 'sparserl[bench]'",
              file=sys.stderr)
        return 2
    if args.json and not os.access(os.path.dirname(os.path.abspath(args.json)), os.W_OK):
        print(f"error: --json: cannot write {args.json!r}", file=sys.stderr)
        return 2

    settings = Settings(quick=args.quick, peers=args.peers)
    machine = describe_machine()
    print(f"sparserl.bench{' --quick' if args.quick else ''}{' --peers' if args.peers else ''}: "
          f"{machine['platform']} ({machine['device']}), {machine['cpus']} CPUs, jax {machine['jax']}", flush=True)
    started = time.perf_counter()
    rows: list[Row] = []
    for name in names:
        row_started = time.perf_counter()
        new_rows = ROWS[name](settings)
        rows += new_rows
        print(format_table(new_rows), flush=True)
        print(f"  ({name}: {time.perf_counter() - row_started:.0f} s)\n", flush=True)
    print(format_table(rows))
    print(f"ratios from one run; absolute times depend on the machine's load ({time.perf_counter() - started:.0f} s in all)")
    if args.json:
        table = {"command": " ".join(["python -m sparserl.bench", *(argv if argv is not None else sys.argv[1:])]),
                 "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                 "machine": machine, "quick": args.quick, "rows": [row.as_dict() for row in rows]}
        with open(args.json, "w") as file:
            json.dump(table, file, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
