"""Row `condensed_agents`: native condensed kernels (`--config.sparse.kernels=native`) against masked, at 90% static
constant fan-in (ERK), in SAC and PPO: the SAC 2x256 update at batch 256 (goal >= 1.5x), SAC end to end on
`gymnax:Pendulum-v1` in the compiled loop (goal >= 1.3x), the PPO update at the MinAtar preset (conv 16, dense 128,
minibatch 256) and at the MuJoCo preset's width (2x64 tanh, the classic preset's minibatch 128) (goal >= 1.3x);
90% SRigL DQN CartPole end to end at Graesser et al.'s protocol (goal >= 1.5x); and the scaling goal, the MinAtar DQN
network 4x wide at 95% (static, native) against 1x dense, env steps/s in the compiled loop (goal: at least as fast);
the scaling grid's 4x prune update in its masked phase and at its final kept count against 4x static and dense;
and a sweep of fan_in levels in one program, native (every level's own k in the lowest level's budget of slots)
against masked and against its levels run one at a time natively (what sharing one program costs)."""

from __future__ import annotations

import statistics
import tempfile

from sparserl import train
from sparserl.configs import base
from sparserl.experiments.bench import agent_programs, condensed, timing, training
from sparserl.experiments.bench.table import Row, Settings

SPARSITY = 0.9
KERNELS = ("masked", "native")


def fan_in_overrides(kernels: str) -> dict:
    """90% static ERK with constant fan-in under `kernels`."""
    return {"sparse.method": "static", "sparse.sparsity": SPARSITY, "sparse.structure": "fan_in",
            "sparse.kernels": kernels}


def sac_update_ms(settings: Settings) -> dict[str, float]:
    """ms per SAC update (2x256, batch 256) under each of `KERNELS`, the state donated as the loops donate it."""
    functions = {}
    for kernels in KERNELS:
        config = training.train_config("sac", "gymnax:Pendulum-v1", {**fan_in_overrides(kernels), "steps": 10**8})
        functions[kernels] = agent_programs.donated_update_call(*agent_programs.make_agent(config), config)
    return timing.interleaved_ms(functions, rounds=settings.pick(10, 4), calls=settings.pick(10, 5))


def ppo_update_ms(env_id: str, settings: Settings) -> tuple[dict[str, float], str]:
    """(ms per PPO minibatch step under each of `KERNELS`, a description of the workload) on `env_id`'s preset,
    from whole-rollout updates."""
    functions, description = {}, ""
    for kernels in KERNELS:
        config = training.train_config("ppo", env_id, {**fan_in_overrides(kernels), "steps": 10**8})
        minibatch_steps = config.update_epochs * config.num_minibatches
        minibatch = config.num_envs * config.rollout_steps // config.num_minibatches
        network = (f"conv {','.join(map(str, config.network.conv_features))} dense "
                   f"{','.join(map(str, config.network.dense_sizes))}" if config.network.kind == "cnn"
                   else "x".join(map(str, config.network.hidden_sizes)))
        description = f"PPO update, {network}, minibatch {minibatch}"
        functions[kernels] = agent_programs.donated_update_call(*agent_programs.make_agent(config), config)
    ms = timing.interleaved_ms(functions, rounds=settings.pick(4, 2), calls=settings.pick(3, 2))
    return {kernels: value / minibatch_steps for kernels, value in ms.items()}, description


def sac_end_to_end_rates(settings: Settings) -> tuple[int, dict[str, float]]:
    """(steps, median steady env steps/s per kernels) of SAC on gymnax:Pendulum-v1 (compiled loop, one update per
    env step from step 1,000), over alternating runs."""
    steps = settings.pick(8_000, 3_000)
    rates: dict[str, list[float]] = {kernels: [] for kernels in KERNELS}
    for _ in range(settings.pick(2, 1)):
        for kernels in KERNELS:
            overrides = {**fan_in_overrides(kernels), **training.quiet_run(steps), "learning_starts": 1_000}
            rates[kernels].append(training.steady_rate_in_process("sac", "gymnax:Pendulum-v1", overrides,
                                                                  from_fraction=0.5))
    return steps, {kernels: statistics.median(values) for kernels, values in rates.items()}


def srigl_dqn_rates(settings: Settings) -> tuple[int, dict[str, float]]:
    """(steps, median steady env steps/s per kernels) of 90% SRigL DQN CartPole at Graesser et al.'s protocol (the
    `condensed` row's workload, host loop), native against masked, over alternating runs."""
    steps = settings.pick(6_000, 2_000)
    rates: dict[str, list[float]] = {kernels: [] for kernels in KERNELS}
    for _ in range(settings.pick(2, 1)):
        for kernels in KERNELS:
            overrides = {**condensed.dqn_overrides(kernels), "sparse.method": "srigl", **training.quiet_run(steps),
                         "checkpoint_replay": False}
            rates[kernels].append(training.steady_rate_in_process("dqn", "CartPole-v1", overrides, from_fraction=0.5))
    return steps, {kernels: statistics.median(values) for kernels, values in rates.items()}


# The scaling goal: the MinAtar DQN network 4x wide at 95% (static ERK, constant fan-in, native kernels) against the
# 1x dense one, wall time per env step in the compiled loop (gymnax:Breakout-MinAtar, the MinAtar preset).
SCALING_SIDES = {"1x dense": {"sparse.method": "dense", "sparse.sparsity": 0.0},
                 "4x 95% static": {"network.width_multiplier": 4.0, "sparse.method": "static", "sparse.sparsity": 0.95,
                                   "sparse.structure": "fan_in", "sparse.kernels": "native"}}


def scaling_rates(settings: Settings) -> tuple[int, dict[str, float]]:
    """(steps, median steady env steps/s per side of `SCALING_SIDES`), one seed, learning from step 2,000."""
    steps = settings.pick(20_000, 6_000)
    rates: dict[str, list[float]] = {side: [] for side in SCALING_SIDES}
    for _ in range(settings.pick(2, 1)):
        for side, overrides in SCALING_SIDES.items():
            run = {**overrides, **training.quiet_run(steps), "learning_starts": 2_000}
            rates[side].append(training.steady_rate_in_process("dqn", "gymnax:Breakout-MinAtar", run, from_fraction=0.5))
    return steps, {side: statistics.median(values) for side, values in rates.items()}


# The scaling grid's prune cell at 4x (95%, constant fan-in, native) against the 4x static and dense cells: the DQN
# update (batch 32, one seed, as the compiled loop runs it: no plan) in prune's masked phase (before its first
# pruning step) and at its final kept count (from its last pruning step on, `Window.update_end`).
SPARSE_4X = {"sparse.sparsity": 0.95, "sparse.structure": "fan_in", "sparse.kernels": "native"}
PRUNE_SIDES = {"4x dense": {"sparse.method": "dense", "sparse.sparsity": 0.0},
               "4x 95% static": {"sparse.method": "static", **SPARSE_4X},
               "4x 95% prune": {"sparse.method": "prune", **SPARSE_4X}}


def prune_update_ms(settings: Settings) -> dict[str, float]:
    """ms per update of each side of `PRUNE_SIDES` (prune: "masked phase" and "final k") on gymnax:Breakout-MinAtar,
    the MinAtar preset 4x wide over 100k steps."""
    functions = {}
    for side, overrides in PRUNE_SIDES.items():
        config = training.train_config("dqn", "gymnax:Breakout-MinAtar",
                                       {"network.width_multiplier": 4.0, "steps": 100_000, **overrides})
        agent, env_spec = agent_programs.make_agent(config)
        if side.endswith("prune"):
            window = base.sparsity_config(config.sparse, base.off_policy_updates(config), 0.95).settings
            for phase, first_step in (("masked phase", 0), ("final k", window.update_end)):
                functions[f"{side}, {phase}"] = agent_programs.donated_update_call(agent, env_spec, config, first_step)
        else:
            functions[side] = agent_programs.donated_update_call(agent, env_spec, config)
    return timing.interleaved_ms(functions, rounds=settings.pick(6, 3), calls=settings.pick(10, 5))


# A sweep of fan_in levels in one compiled program (`--sparsity=0.8,0.9,0.95`): native kernels hold the lowest level's
# budget of k slots per neuron for every level (`sparse.index_level`), each level using its own k of them (offsets);
# DQN on gymnax:CartPole-v1.
SWEEP_LEVELS = (0.8, 0.9, 0.95)


def sweep_rate(kernels: str, levels: tuple[float, ...], steps: int) -> float:
    """Steady env steps/s of one member (the first level's seed) of a sweep of `levels` (one level: a plain run) of
    static fan_in DQN on gymnax:CartPole-v1 under `kernels`, trained in this process."""
    overrides = {"sparse.method": "static", "sparse.structure": "fan_in", "sparse.kernels": kernels,
                 **training.quiet_run(steps), "learning_starts": 1_000}
    argv = ["sparserl.train", "--agent=dqn", "--env=gymnax:CartPole-v1",
            f"--sparsity={','.join(str(level) for level in levels)}", *training.override_flags(overrides)]
    with tempfile.TemporaryDirectory() as workdir:
        prepared = train.prepare_run(train.configs_from_arguments(argv), workdir, None)
        training.train_quietly(prepared)
        return timing.steady_rate(prepared.run_dirs[0], from_fraction=0.5)


def sweep_rates(settings: Settings) -> tuple[int, dict[str, float]]:
    """(steps, env steps/s per member): the sweep of `SWEEP_LEVELS` native and masked, and the levels run one at a
    time natively (their rate: one env step of every level per summed second)."""
    steps = settings.pick(6_000, 2_000)
    rates = {kernels: sweep_rate(kernels, SWEEP_LEVELS, steps) for kernels in KERNELS}
    rates["one by one"] = 1.0 / sum(1.0 / sweep_rate("native", (level,), steps) for level in SWEEP_LEVELS)
    return steps, rates


def rows(settings: Settings) -> list[Row]:
    """Native vs masked kernels in SAC and PPO at 90% static constant fan-in."""
    sac = sac_update_ms(settings)
    rows = [Row("condensed SAC/PPO", "SAC update, 2x256, batch 256, native", sac["native"], sac["masked"], "ms",
                sac["masked"] / sac["native"], "masked / native (speed-up)", ">= 1.5")]
    steps, rates = sac_end_to_end_rates(settings)
    rows.append(Row("condensed SAC/PPO", f"SAC gymnax:Pendulum-v1 end to end, {steps:,} steps, native",
                    rates["native"], rates["masked"], "env steps/s", rates["native"] / rates["masked"],
                    "native / masked (speed-up)", ">= 1.3"))
    for env_id in ("gymnax:Breakout-MinAtar", "gymnax:Pendulum-v1"):
        ms, description = ppo_update_ms(env_id, settings)
        rows.append(Row("condensed SAC/PPO", f"{description} ({env_id}), per minibatch step, native", ms["native"],
                        ms["masked"], "ms", ms["masked"] / ms["native"], "masked / native (speed-up)", ">= 1.3"))
    steps, rates = srigl_dqn_rates(settings)
    rows.append(Row("condensed SAC/PPO", f"SRigL 90% DQN CartPole end to end, 2x512 batch 128, {steps:,} steps, native",
                    rates["native"], rates["masked"], "env steps/s", rates["native"] / rates["masked"],
                    "native / masked (speed-up)", ">= 1.5"))
    steps, rates = scaling_rates(settings)
    rows.append(Row("condensed SAC/PPO", f"DQN Breakout-MinAtar, 4x wide 95% static native vs 1x dense, {steps:,} steps",
                    rates["4x 95% static"], rates["1x dense"], "env steps/s", rates["4x 95% static"] / rates["1x dense"],
                    "4x sparse / 1x dense (speed)", ">= 1"))
    ms = prune_update_ms(settings)
    for phase in ("masked phase", "final k"):
        prune = ms[f"4x 95% prune, {phase}"]
        for side in ("4x dense", "4x 95% static"):
            rows.append(Row("condensed SAC/PPO", f"DQN Breakout-MinAtar update, 4x 95% prune native in its {phase} vs "
                            f"{side}", prune, ms[side], "ms", ms[side] / prune, f"{side} / prune (speed)"))
    steps, rates = sweep_rates(settings)
    levels = ",".join(str(level) for level in SWEEP_LEVELS)
    rows.append(Row("condensed SAC/PPO", f"DQN gymnax:CartPole-v1 sweep {levels} (static fan_in, one program), {steps:,} "
                    "steps, native (each level's k in the lowest level's slots)", rates["native"], rates["masked"],
                    "env steps/s", rates["native"] / rates["masked"], "native / masked (speed-up)"))
    rows.append(Row("condensed SAC/PPO", f"the same sweep native against its levels run one at a time natively",
                    rates["native"], rates["one by one"], "env steps/s",
                    rates["native"] / rates["one by one"], "sweep / one by one"))
    return rows
