"""Sokar et al. 2023, "The Dormant Neuron Phenomenon in Deep Reinforcement Learning", in one command.

    python -m sparserl.experiments.dormant_neuron_study --agent=dqn --out=studies/dormant_dqn          # --scale=small
    python -m sparserl.experiments.dormant_neuron_study --agent=dqn --scale=medium --remedies=redo,regrama,shrink_perturb,reset --out=studies/dormant_medium
    python -m sparserl.experiments.dormant_neuron_study --agent=sac --out=studies/dormant_sac

The grid: replay ratios (gradient updates per env step) x {no remedy, and each of `--remedies`: ReDo by default,
ReGraMa, Shrink & Perturb, reset of the last layers (sparserl/remedies.py)} x seeds, dense networks. DQN reaches
its ratios through `train_every` 4, 2, 1 (ratios 0.25, 0.5, 1) and `gradient_steps` 2 and 4 at `train_every` 1
(ratios 2, 4); SAC through `gradient_steps` 1, 2, 4. Every run logs the dormant fraction at tau 0, 0.025 and 0.1
(Sokar et al., eq. 1), GraMa, srank and weight magnitude with its returns; the aggregate plots dormant % against
steps per replay ratio, a line style per remedy, and summary.md compares the remedies' returns and measures with
95% CIs and states, point by point, which of Sokar et al.'s findings appear.

One process per (replay ratio, remedy), its seeds vmapped in one program: the runs differ in what the program does
(updates per env step, the remedy), not in a sparsity level, so no two of them share a program.

Scales: `smoke` (the tests); `small` (MinAtar Breakout with the MinAtar network for DQN, 20k steps and 2 seeds as
the pilot chose them (see `SMALL_DQN_CHOICE` and docs/studies.md), Pendulum for SAC, gymnax through the compiled
loop); `medium` (DQN on MinAtar Breakout for 1M steps and 3 seeds, the length at which the growth of dormancy was
looked for (docs/studies.md; `--dry_run` gives its cost in CPU-hours); for a GPU or a cluster); `paper` (Atari DQN
and MuJoCo SAC lengths). The remedies' periods are their own (`configs.base.REMEDY_PERIODS`) but for
`SCALE_PERIODS`: a short run would never reach a 20,000-update reset.
"""

from __future__ import annotations

import math
import sys

from sparserl.cli import UsageError
from sparserl.configs.base import REMEDIES
from sparserl.experiments import study
from sparserl.experiments.aggregate import REMEDY_LABELS, TAUS

# replay ratio -> (train_every, gradient_steps)
REPLAY_RATIOS = {
    "dqn": {0.25: (4, 1), 0.5: (2, 1), 1.0: (1, 1), 2.0: (1, 2), 4.0: (1, 4)},
    "sac": {1.0: (1, 1), 2.0: (1, 2), 4.0: (1, 4)},
}

MEDIUM_FLAGS = ("--eval_every=50000", "--checkpoint_every=100000", "--config.log_every=10000")
SCALES = {
    "smoke": study.SMOKE,
    "small": {
        # From the pilot (docs/studies.md): at 20k steps and 2 seeds ReDo's effect is plain (tau = 0.1 dormant
        # fraction 28% -> 6%, 13% -> 0.2%, 5.6% -> 0.4% at replay ratios 0.25, 1, 4); the growth with the replay
        # ratio does not appear there. SMALL_DQN_CHOICE says so in summary.md.
        "dqn": study.Scale("gymnax:Breakout-MinAtar", 20_000, 2, ("--eval_every=10000",)),
        "sac": study.Scale("gymnax:Pendulum-v1", 20_000, 3),
    },
    "medium": {
        # The 1M-step pilot's length (issue 25; docs/studies.md), with 3 seeds for CIs.
        "dqn": study.Scale("gymnax:Breakout-MinAtar", 1_000_000, 3, MEDIUM_FLAGS),
        "sac": study.Scale("gymnax:Pendulum-v1", 200_000, 3, MEDIUM_FLAGS),
    },
    "paper": {
        # Issue 12's paper settings: Atari DQN with the Dopamine settings of configs/dqn.py for 10M frames (2.5M agent
        # steps at frame skip 4); MuJoCo SAC for 1M steps. Seeds: 5 (check against the paper before comparing).
        "dqn": study.Scale("ALE/Pong-v5", 2_500_000, 5),
        "sac": study.Scale("HalfCheetah-v5", 1_000_000, 5),
    },
}

# Gradient steps between remedies where a scale's runs are too short for a remedy's own period: the smoke runs'
# 200 updates, and the small runs' 3,750-80,000 (a reset every 2,500 updates, ReDo's every 1,000 as its own).
SCALE_PERIODS = {
    "smoke": {remedy: 50 for remedy in REMEDIES},
    "small": {"shrink_perturb": 2_500, "reset": 2_500},
}

# CPU-seconds per 100k env steps per seed of DQN on Breakout-MinAtar, by replay ratio, measured by the 1M-step pilot
# (docs/studies.md; the process's CPU time over its steps on the 2-core CPU machine: ratio 0.25 with 2 seeds in one
# process, ratio 4 with one seed per process); between and beyond them, linear in the ratio. What `--dry_run`
# estimates a grid's cost from.
MINATAR_DQN_CPU_SECONDS = {0.25: 47.0, 4.0: 541.0}


# summary.md of a small DQN study says how its defaults were chosen (issue 12: pilot first, say so).
SMALL_DQN_CHOICE = (
    "How the small-scale DQN defaults were chosen: a pilot on Breakout-MinAtar at 20k steps and 2 seeds "
    "(replay ratios 0.25, 1, 4, with and without ReDo; docs/studies.md) showed ReDo's effect plainly (tau = 0.1 "
    "dormant fraction 28.5% -> 6.1%, 12.7% -> 0.2%, 5.6% -> 0.4%), but not the growth with the replay ratio: "
    "without ReDo the fraction fell with the replay ratio (28.5%, 12.7%, 5.6%), and so it did at 40k steps "
    "(1 seed, ratios 0.25 and 4: 13.9% and 6.2%). At these lengths training has not left its start, where 19-35% "
    "of the dense layer is dormant at initialisation on MinAtar's sparse binary frames and more updates wake "
    "neurons up; Sokar et al. see the growth over 10M Atari frames, and a 1M-step pilot (docs/studies.md) sees it "
    "here after 100-200k steps. The defaults are the smallest setting that "
    "shows ReDo's effect (20k steps, 2 seeds, all five ratios), not tuned to make the plots look like the paper.")


def build(argv):
    """The study from its command line: (arguments, plan, specs, summarize), as `study.main` runs it."""
    parser = study.parser(__doc__.splitlines()[0], ("dqn", "sac"), tuple(SCALES))
    parser.add_argument("--replay_ratios", default=None,
                        help="comma-separated subset of the agent's ratios (dqn: 0.25,0.5,1,2,4; sac: 1,2,4)")
    parser.add_argument("--remedies", default="redo",
                        help=f"comma-separated remedies, each run beside no remedy at every ratio: {', '.join(REMEDIES)}")
    arguments, overrides = study.parse(parser, argv, grid_fields=("train_every", "gradient_steps", "redo.remedy"))
    available = REPLAY_RATIOS[arguments.agent]
    ratios = (study.parse_floats(arguments.replay_ratios, "--replay_ratios") if arguments.replay_ratios is not None
              else list(available))
    unknown = [ratio for ratio in ratios if ratio not in available]
    if unknown or not ratios:
        raise UsageError(f"--replay_ratios: {arguments.agent} runs ratios {', '.join(f'{r:g}' for r in available)}"
                         + (f", not {unknown[0]:g}" if unknown else ""))
    remedies = list(dict.fromkeys(part.strip() for part in arguments.remedies.split(",") if part.strip()))
    unknown_remedies = [remedy for remedy in remedies if remedy not in REMEDIES]
    if unknown_remedies or not remedies:
        raise UsageError(f"--remedies: choose from {', '.join(REMEDIES)}"
                         + (f", not {unknown_remedies[0]!r}" if unknown_remedies else ""))
    scale = SCALES[arguments.scale][arguments.agent]
    env, steps, seeds = arguments.env or scale.env, arguments.steps or scale.steps, arguments.seeds or scale.seeds
    common = [f"--agent={arguments.agent}", f"--env={env}", f"--steps={steps}", f"--num_seeds={seeds}", "--seed=0",
              "--method=dense", "--sparsity=0", *scale.flags, *overrides]
    periods = SCALE_PERIODS.get(arguments.scale, {})
    specs = []
    for ratio in ratios:
        train_every, gradient_steps = available[ratio]
        for remedy in ("none", *remedies):
            args = [*common, f"--config.train_every={train_every}", f"--config.gradient_steps={gradient_steps}",
                    f"--recycle={remedy}", *([f"--redo_period={periods[remedy]}"] if remedy in periods else [])]
            specs.append(study.run_spec(args, seeds, f"_rr{ratio:g}"))
    plan = dict(study="dormant_neurons", command=" ".join(["python -m sparserl.experiments.dormant_neuron_study", *argv]),
                agent=arguments.agent, env=env, scale=arguments.scale, steps=steps, seeds=seeds,
                remedies=["none", *remedies],
                replay_ratios={f"{r:g}": dict(zip(("train_every", "gradient_steps"), available[r])) for r in ratios},
                estimate=cost_estimate(arguments.agent, env, steps, seeds, ratios, 1 + len(remedies)))
    return arguments, plan, specs, summarize


def cpu_seconds_per_100k(ratio: float) -> float:
    """Measured CPU-seconds per 100k env steps per seed of MinAtar DQN at a replay ratio (`MINATAR_DQN_CPU_SECONDS`,
    linear in the ratio through the two measured points)."""
    (low, low_cost), (high, high_cost) = sorted(MINATAR_DQN_CPU_SECONDS.items())
    return low_cost + (ratio - low) * (high_cost - low_cost) / (high - low)


def cost_estimate(agent: str, env: str, steps: int, seeds: int, ratios, variants: int) -> str | None:
    """The grid's cost in CPU-hours, for DQN on MinAtar Breakout, where it was measured (None elsewhere)."""
    if agent != "dqn" or env != SCALES["medium"]["dqn"].env:
        return None
    hours = sum(cpu_seconds_per_100k(ratio) for ratio in ratios) * steps / 100_000 * seeds * variants / 3600
    return (f"estimated cost: {hours:,.1f} CPU-hours ({len(ratios)} replay ratios x {variants} remedy settings x "
            f"{seeds} seeds x {steps:,} steps; the pilot's CPU time on a 2-core CPU machine, docs/studies.md)")


REMEDY_ORDER = ("none", *REMEDIES)


def _percent(entry: dict, name: str, with_interval: bool = False) -> str:
    value = 100 * entry.get(name, math.nan)
    if with_interval and f"{name}_low" in entry:
        return f"{value:.2f} [{100 * entry[name + '_low']:.2f}, {100 * entry[name + '_high']:.2f}]"
    return f"{value:.2f}"


def _value(entry: dict, name: str) -> str:
    if f"{name}_low" in entry:
        return f"{entry[name]:.3g} [{entry[name + '_low']:.3g}, {entry[name + '_high']:.3g}]"
    return f"{entry.get(name, math.nan):.3g}"


def summarize(plan: dict, result: dict) -> str:
    """summary.md: final dormant fractions, GraMa, srank and returns per (replay ratio, remedy) with 95% CIs, and
    Sokar et al.'s four findings checked point by point in numbers (`findings`)."""
    table = sorted(result["table"], key=lambda e: (e["replay_ratio"], REMEDY_ORDER.index(e["remedy"])))
    names = list(dict.fromkeys(name for e in table for name in e))
    dormant = [name for tau in TAUS for name in names if name.startswith(f"dormant/{tau}/") and not name.endswith(("_low", "_high"))]
    grama = [name for name in names if name.startswith("grama/0.1/") and name.endswith("total")]
    srank = [name for name in names if name.startswith("srank/") and not name.endswith(("_low", "_high"))]
    headline = [name for name in dormant if name.startswith("dormant/0.1/")]
    lines = [study.header("Dormant neuron study (Sokar et al. 2023)", plan, result),
             "Measures: the mean of the last 10% of log rows per seed, then the mean over seeds; dormant and GraMa "
             "in % of neurons; 95% CIs (stratified bootstrap over seeds) in brackets.\n",
             "## Final dormant neurons, measures and returns\n",
             "| replay ratio | remedy | " + " | ".join(f"{name} (%)" for name in dormant + grama)
             + "".join(f" | {name}" for name in srank) + " | IQM return |",
             "|---|---|" + "---|" * (len(dormant) + len(grama) + len(srank) + 1)]
    for e in table:
        lines.append(f"| {e['replay_ratio']:g} | {REMEDY_LABELS[e['remedy']] or 'none'} | "
                     + " | ".join(_percent(e, name, name in headline) for name in dormant)
                     + "".join(f" | {_percent(e, name, True)}" for name in grama)
                     + "".join(f" | {_value(e, name)}" for name in srank) + f" | {study.interval(e)} |")
    lines.append("\n## Sokar et al.'s findings, point by point\n")
    for name in headline:
        lines.extend(findings(table, name, result.get("courses", {})))
    if plan["scale"] == "small" and plan["agent"] == "dqn" and plan["env"] == SCALES["small"]["dqn"].env:
        lines.append(f"\n{SMALL_DQN_CHOICE}")
    lines.append("\nPlots: `dormant_vs_step.png`, `return_vs_step.png`, `performance_profiles.png`.\n")
    return "\n".join(lines)


def findings(table: list[dict], name: str, courses: dict) -> list[str]:
    """The four findings of Sokar et al. 2023 for the dormant total `name`, each as a line of numbers."""
    without = [e for e in table if e["remedy"] == "none"]
    lines = []
    growth = []
    for e in without:
        steps, means = courses.get(e["run"], {}).get(name, ((), ()))
        if len(steps):
            lowest = int(means.argmin())
            growth.append(f"{e['replay_ratio']:g}: {100 * means[0]:.2f}% at step {steps[0]:,.0f}, lowest "
                          f"{100 * means[lowest]:.2f}% at step {steps[lowest]:,.0f}, {100 * e[name]:.2f}% at the end "
                          f"({'+' if e[name] >= means[lowest] else ''}{100 * (e[name] - means[lowest]):.2f} points "
                          f"over the lowest)")
    if growth:
        lines.append(f"1. Dormancy grows over training? {name} without a remedy, per replay ratio: {'; '.join(growth)}.")
    if len(without) > 1:
        values = [100 * e[name] for e in without]
        trend = ("grows with every step up in replay ratio" if all(b > a for a, b in zip(values, values[1:]))
                 else "falls with every step up in replay ratio" if all(b < a for a, b in zip(values, values[1:]))
                 else "does not grow monotonically with the replay ratio")
        ratios = ", ".join(f"{e['replay_ratio']:g}" for e in without)
        lines.append(f"2. Dormancy grows with the replay ratio? {name} without a remedy, by replay ratio ({ratios}): "
                     f"{', '.join(f'{v:.2f}%' for v in values)}; it {trend}.")
    return lines + _remedy_findings(table, name)


def _remedy_findings(table: list[dict], name: str) -> list[str]:
    """Findings 3 (the remedy keeps dormancy low) and 4 (it helps returns at high replay ratios), per remedy."""
    by_ratio = {}
    for e in table:
        by_ratio.setdefault(e["replay_ratio"], {})[e["remedy"]] = e
    lines = []
    for remedy in REMEDY_ORDER[1:]:
        pairs = {ratio: (runs["none"], runs[remedy]) for ratio, runs in by_ratio.items() if "none" in runs and remedy in runs}
        if not pairs:
            continue
        label = REMEDY_LABELS[remedy]
        lower = sum(treated[name] < plain[name] for plain, treated in pairs.values())
        differences = "; ".join(f"{ratio:g}: {100 * plain[name]:.2f}% -> {100 * treated[name]:.2f}%"
                                for ratio, (plain, treated) in pairs.items())
        lines.append(f"3. {label} keeps dormancy low? {name} without -> with {label}, per replay ratio: {differences} "
                     f"(lower with {label} at {lower} of {len(pairs)} ratios).")
        highest = max(pairs)
        plain, treated = pairs[highest]
        verdict = ("the CIs overlap" if study.overlaps(plain, treated)
                   else "higher, CIs apart" if treated["iqm"] > plain["iqm"] else "lower, CIs apart")
        lines.append(f"4. {label} helps returns at high replay ratios? At replay ratio {highest:g}: IQM return "
                     f"{study.interval(treated)} with {label} vs {study.interval(plain)} without ({verdict}).")
    return lines
def main(argv=None) -> int:
    """The study's command line: exit status 0, 1 when a run failed, 2 on bad input (`study.main`)."""
    return study.main(build, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
