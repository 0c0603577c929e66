"""Obando-Ceron et al. 2024 and Ma et al. 2025: wide dense against wide 95%-sparse networks, in one command.

    python -m sparserl.experiments.scaling_study --agent=dqn --out=studies/scaling_dqn            # --scale=small
    python -m sparserl.experiments.scaling_study --agent=dqn --widths=1,2,4,8 --out=studies/scaling_dqn --dry_run

Obando-Ceron, Courville and Castro (ICML 2024, "In value-based deep reinforcement learning, a pruned network is a
good network", Figure 1) find that as a DQN network widens the dense network's return falls, while the network
pruned to 95% by gradual magnitude pruning (their eq. 1, Zhu & Gupta 2017's cubic schedule, from 20% to 80% of
training, Section 4.1) keeps improving. Ma et al. (ICML 2025, "Network sparsity unlocks the scaling potential of
deep RL") find the same of networks sparse from initialisation. The grid: widths (`--widths`, multipliers of every
hidden layer, `network.width_multiplier`) x sides {dense, prune (gradual magnitude pruning to 95%), static (a fixed
95% ERK mask from the start)} x seeds. The sparse sides use constant fan-in masks and `kernels=auto`
(`SPARSE_FLAGS`): the kernels `configs.base.kernels` picks for them, condensed where they can run and masked
elsewhere.

One process per (side, width), its seeds side by side in one program: widths differ in their parameters' shapes,
so no two cells share a program. summary.md gives the IQM return and the wall time per env step (from the `sps`
column every run writes into metrics.csv) against the width for each side, and states, point by point, where the
papers' findings appear; `scaling.png` draws both against the width, a line per side.

Scales: `smoke` (the tests: the tiny CartPole MLP of `study.SMOKE`, a few hundred steps); `small` (DQN on
gymnax:Breakout-MinAtar with the MinAtar network through the compiled loop, at a length whose default grid costs a
few CPU-hours; `--dry_run` estimates it from `MINATAR_DQN_CPU_SECONDS`).
"""

from __future__ import annotations

import os
import sys

import numpy as np

from sparserl.cli import UsageError
from sparserl.experiments import aggregate, study
from sparserl.reporting import read_csv

SIDES = ("dense", "prune", "static")
SPARSITY = 0.95  # Obando-Ceron et al.'s level (Section 4.2: "95% sparsity consistently yielded the best performance")
WIDTHS = (1.0, 2.0, 4.0)
SPARSE_FLAGS = ("--structure=fan_in", "--config.sparse.kernels=auto")

SCALES = {
    "smoke": study.SMOKE,
    "small": {
        # The MinAtar preset of configs/dqn.py (Young & Tian's network, one update per env step, learning from 5k steps,
        # epsilon decayed over 100k steps; prune from 20% to 80% of the gradient steps every 1,000, as Obando-Ceron
        # et al. schedule it). 100k steps, the end of the epsilon decay: the default grid (3 widths x 3 sides x 3
        # seeds) costs a few CPU-hours (`--dry_run`); 10 evaluations of 10 episodes.
        "dqn": study.Scale("gymnax:Breakout-MinAtar", 100_000, 3, ("--eval_every=10000",)),
    },
}

# CPU-seconds per 100k env steps per seed of DQN on gymnax:Breakout-MinAtar (the MinAtar preset, one update per env step),
# by side and width multiplier: each process's CPU time (user + sys, start-up and compilation included) over its 3
# seeds, two processes at a time on an idle 2-core CPU machine (docs/studies.md). Dense and static: the default grid,
# 2026-12-07. Prune: its three processes run again, with its native kernels in kept-count phases (`kept_counts`),
# later that day on another machine of the kind (its 4x process had not finished in the grid). Between and beyond the
# measured widths: the quadratic through them (the dense layer's multiply-adds grow with the square of the width, the
# conv's with the width).
MINATAR_DQN_CPU_SECONDS = {"dense": {1.0: 160.0, 2.0: 320.0, 4.0: 1237.0}, "prune": {1.0: 216.0, 2.0: 397.0, 4.0: 1442.0},
                           "static": {1.0: 142.0, 2.0: 185.0, 4.0: 427.0}}

# How `network.width_multiplier` widens the MinAtar network and how the papers widen theirs, and how its pruning
# follows Obando-Ceron et al.'s (summary.md says both on MinAtar).
WIDTH_NOTE = (
    "What widens: `network.width_multiplier` scales every hidden layer, the MinAtar network's conv layer (16 channels "
    "at 1x) and its dense layer (128 units at 1x) alike, never the output layer (`sparserl.networks.NatureCNN`). "
    "Obando-Ceron et al. widen the Impala ResNet's convolutional layers (Section 4.2: \"we have scaled the "
    "convolutional layers by a factor of 3\"); whether their dense layer (512 units) grows with them the paper does "
    "not say (Table 4 lists a convolutional width of 1 and a dense width of 512).")
PRUNE_NOTE = (
    "Pruning: the project's prune defaults for MinAtar, which are Obando-Ceron et al.'s schedule (eq. 1, the cubic "
    "schedule of Zhu & Gupta 2017, from 20% to 80% of training, then fixed; Section 4.1 after Graesser et al. 2022), "
    "every 1,000 gradient steps, per-layer targets from ERK. Here each neuron is pruned to the same fan-in "
    "(`--structure=fan_in`, the structure condensed kernels need); they prune each layer unstructured (JaxPruner).")


def build(argv):
    """The study from its command line: (arguments, plan, specs, summarize), as `study.main` runs it."""
    parser = study.parser(__doc__.splitlines()[0], ("dqn",), tuple(SCALES))
    parser.add_argument("--widths", default=",".join(f"{width:g}" for width in WIDTHS),
                        help="comma-separated width multipliers, at least two, each > 0 (e.g. 1,2,4,8)")
    parser.add_argument("--methods", default=",".join(SIDES), help=f"comma-separated subset of {', '.join(SIDES)}")
    arguments, overrides = study.parse(parser, argv, grid_fields=("network.width_multiplier", "sparse.structure",
                                                                  "sparse.kernels"))
    widths = parse_widths(arguments.widths)
    sides = [side for side in arguments.methods.split(",") if side]
    unknown = [side for side in sides if side not in SIDES]
    if unknown or not sides or len(set(sides)) < len(sides):
        raise UsageError(f"--methods: choose each of {', '.join(SIDES)} at most once"
                         + (f", not {unknown[0]!r}" if unknown else ""))
    scale = SCALES[arguments.scale][arguments.agent]
    env, steps, seeds = arguments.env or scale.env, arguments.steps or scale.steps, arguments.seeds or scale.seeds
    common = [f"--agent={arguments.agent}", f"--env={env}", f"--steps={steps}", f"--num_seeds={seeds}", "--seed=0",
              *scale.flags, *overrides]
    specs = []
    for side in sides:
        method = ["--method=dense", "--sparsity=0"] if side == "dense" else [f"--method={side}", f"--sparsity={SPARSITY:g}",
                                                                             *SPARSE_FLAGS]
        for width in widths:
            specs.append(study.run_spec([*common, *method, f"--config.network.width_multiplier={width!r}"], seeds,
                                        f"_w{width:g}"))
    plan = dict(study="scaling", command=" ".join(["python -m sparserl.experiments.scaling_study", *argv]),
                agent=arguments.agent, env=env, scale=arguments.scale, steps=steps, seeds=seeds, sides=sides,
                widths=widths, sparsity=SPARSITY, runs_dir=os.path.join(arguments.out, "runs"),
                estimate=cost_estimate(env, steps, seeds, widths, sides))
    return arguments, plan, specs, summarize


def parse_widths(text: str) -> list[float]:
    """`--widths`: at least two different width multipliers, each > 0, in increasing order."""
    widths = study.parse_floats(text, "--widths")
    if len(widths) < 2 or len(set(widths)) < len(widths) or not all(width > 0 for width in widths):
        raise UsageError(f"--widths: give at least two different width multipliers, each > 0 (e.g. 1,2,4), got {text!r}")
    return sorted(widths)


def cpu_seconds_per_100k(side: str, width: float) -> float:
    """CPU-seconds per 100k env steps per seed of a side at a width multiplier: `MINATAR_DQN_CPU_SECONDS`, and
    between or beyond its widths the quadratic through them."""
    measured = sorted(MINATAR_DQN_CPU_SECONDS[side].items())
    return float(np.polyval(np.polyfit([w for w, _ in measured], [c for _, c in measured], 2), width))


def cost_estimate(env: str, steps: int, seeds: int, widths: list[float], sides: list[str]) -> str | None:
    """The grid's cost in CPU-hours for DQN on Breakout-MinAtar, where it was measured (None elsewhere)."""
    if env != SCALES["small"]["dqn"].env:
        return None
    per_100k = sum(cpu_seconds_per_100k(side, width) for side in sides for width in widths)
    hours = per_100k * steps / 100_000 * seeds / 3600
    return (f"estimated cost: {hours:,.1f} CPU-hours ({len(sides)} sides x widths {', '.join(f'{w:g}' for w in widths)} x "
            f"{seeds} seeds x {steps:,} steps; measured CPU time per width on a 2-core CPU machine, docs/studies.md)")


# ------------------------------------------------------------------------------------------------------- summary.md

def wall_seconds_per_step(run_dir: str) -> float:
    """Wall seconds per env step of a run, as its process recorded them: each metrics row's steps over its `sps`
    (env steps per second of the row, every seed of the process stepping side by side), summed over the rows, over
    the last row's step; the mean over the seed directories (one process: the same rows)."""
    per_seed = []
    for name in sorted(os.listdir(run_dir)):
        if not name.startswith("seed"):
            continue
        rows = read_csv(os.path.join(run_dir, name, "metrics.csv"))
        steps = [0.0] + [row["step"] for row in rows]
        per_seed.append(sum((done - start) / row["sps"] for start, done, row in zip(steps, steps[1:], rows)) / steps[-1])
    return float(np.mean(per_seed))


def final_multiply_adds(run_dir: str) -> float | None:
    """The multiply-adds of one example's forward pass at the kept weights (`multiply_adds/total`, what a kernel
    that skipped every zero would compute) in the last metrics row, the same in every seed directory; None for a run
    that did not log them (older runs)."""
    rows = read_csv(os.path.join(run_dir, sorted(name for name in os.listdir(run_dir) if name.startswith("seed"))[0],
                                 "metrics.csv"))
    return rows[-1].get("multiply_adds/total")


def summarize(plan: dict, result: dict) -> str:
    """summary.md: IQM return and wall ms per env step against the width for each side, and the papers' four
    findings checked in numbers (`findings`)."""
    table = {}
    for entry in result["table"]:
        entry["ms_per_step"] = 1000 * wall_seconds_per_step(os.path.join(plan["runs_dir"], entry["run"]))
        entry["multiply_adds"] = final_multiply_adds(os.path.join(plan["runs_dir"], entry["run"]))
        table.setdefault(entry["method"], {})[entry["width_multiplier"]] = entry
    widths = sorted({width for cells in table.values() for width in cells})
    sides = [side for side in SIDES if side in table]
    header = " | ".join(f"{width:g}x" for width in widths)
    lines = [study.header("Scaling study (Obando-Ceron et al. 2024, Ma et al. 2025)", plan, result),
             f"Sides: dense, and {plan['sparsity']:.0%} sparse by gradual magnitude pruning (prune) or from a fixed "
             "ERK mask (static), both with constant fan-in masks and `--config.sparse.kernels=auto`. Wall time: ms "
             "per env step of the run's process (its seeds side by side), from the `sps` its metrics.csv records "
             "(compiled loop: evaluations included); wall time on a shared machine moves with the other users.\n",
             "## IQM of the final return against the width\n", f"| side | {header} |", "|---|" + "---|" * len(widths)]
    lines += [f"| {side} | " + " | ".join(study.interval(table[side][w]) if w in table[side] else "" for w in widths)
              + " |" for side in sides]
    lines += ["\n## Wall time per env step (ms) against the width\n", f"| side | {header} |", "|---|" + "---|" * len(widths)]
    lines += [f"| {side} | " + " | ".join(f"{table[side][w]['ms_per_step']:.3g}" if w in table[side] else "" for w in widths)
              + " |" for side in sides]
    lines += ["\n## Multiply-adds of one example's forward pass at the kept weights (every zero skipped)\n",
              f"| side | {header} |", "|---|" + "---|" * len(widths)]
    lines += [f"| {side} | " + " | ".join(_count(table[side][w]["multiply_adds"]) if w in table[side] else "" for w in widths)
              + " |" for side in sides]
    lines += ["\n## The papers' findings, point by point\n", *findings(table)]
    if plan["env"] == SCALES["small"]["dqn"].env:
        lines += ["", WIDTH_NOTE, "", PRUNE_NOTE]
    lines += ["\nPlots: `scaling.png` (return and wall time per env step against the width), `return_vs_step.png`, "
              "`performance_profiles.png`.\n"]
    figure_reason = plot_scaling(table, os.path.join(os.path.dirname(plan["runs_dir"]), "scaling.png"))
    if figure_reason:
        lines.append(f"No figure: {figure_reason}.\n")
    return "\n".join(lines)


def _count(multiply_adds: float | None) -> str:
    return "not logged" if multiply_adds is None else f"{multiply_adds:,.0f}"


def _course(cells: dict) -> str:
    """A side's IQM returns by width, `1x: 3.2, 2x: 4.1`."""
    return ", ".join(f"{width:g}x: {cells[width]['iqm']:.4g}" for width in sorted(cells))


def _trend(cells: dict) -> tuple[str, bool]:
    """(how a side's IQM return moves as the width grows, whether it rises with every step up)."""
    widths = sorted(cells)
    values = [cells[width]["iqm"] for width in widths]
    if all(b > a for a, b in zip(values, values[1:])):
        return "rises with every step up in width", True
    best = widths[int(np.argmax(values))]
    if best == widths[-1]:
        return f"is highest at the largest width ({best:g}x) but does not rise with every step up", False
    largest = cells[widths[-1]]
    apart = "lower, CIs apart: it degrades" if not study.overlaps(largest, cells[best]) else "CIs overlap: it stops improving"
    return (f"peaks at {best:g}x ({study.interval(cells[best])}); at {widths[-1]:g}x it is "
            f"{study.interval(largest)} ({apart})"), False


def findings(table: dict) -> list[str]:
    """The four points: (1) dense return stops improving or degrades with width; (2) sparse return keeps improving;
    (3) at the largest width sparse beats dense; (4) the largest sparse run's wall time per env step against the
    smallest dense one's."""
    lines = []
    dense = table.get("dense", {})
    sparse = {side: table[side] for side in SIDES if side != "dense" and side in table}
    if len(dense) > 1:
        trend, rising = _trend(dense)
        lines.append(f"1. Dense return stops improving or degrades as width grows? {'No' if rising else 'Yes'}: "
                     f"IQM {_course(dense)}; it {trend}.")
    for side, cells in sparse.items():
        if len(cells) > 1:
            trend, rising = _trend(cells)
            lines.append(f"2. {side} return keeps improving with width? {'Yes' if rising else 'No'}: IQM {_course(cells)}; "
                         f"it {trend}.")
    for side, cells in sparse.items():
        largest = max(cells)
        if largest in dense:
            mine, theirs = cells[largest], dense[largest]
            verdict = ("higher" if mine["iqm"] > theirs["iqm"] else "not higher") + (
                ", CIs overlap" if study.overlaps(mine, theirs) else ", CIs apart")
            lines.append(f"3. At the largest width ({largest:g}x) {side} beats dense? {study.interval(mine)} vs dense "
                         f"{study.interval(theirs)}: {verdict}.")
    if dense:
        smallest = dense[min(dense)]
        for side, cells in sparse.items():
            largest = max(cells)
            ratio = cells[largest]["ms_per_step"] / smallest["ms_per_step"]
            work = cells[largest]["multiply_adds"], smallest["multiply_adds"]
            lines.append(f"4. Cost: {side} at {largest:g}x takes {cells[largest]['ms_per_step']:.3g} ms of wall time per "
                         f"env step against dense at {min(dense):g}x {smallest['ms_per_step']:.3g} ms ({ratio:.2f}x)"
                         + (f"; dense at {largest:g}x {dense[largest]['ms_per_step']:.3g} ms" if largest in dense else "")
                         + (f"; a forward pass at its kept weights is {work[0] / work[1]:.2f}x dense {min(dense):g}x's "
                            "multiply-adds." if None not in work else "."))
    return lines


def plot_scaling(table: dict, path: str) -> str | None:
    """Two panels against the width (log2 axis): the IQM return with its 95% CI band, and wall ms per env step; a
    line per side. Returns why there is no figure, or None."""
    if not any(len(cells) > 1 for cells in table.values()):
        return "every side ran one width"
    plt, figure, axes = aggregate._figure(2)
    for side, cells in table.items():
        widths = sorted(cells)
        line, = axes[0][0].plot(widths, [cells[w]["iqm"] for w in widths], "o-", label=side)
        axes[0][0].fill_between(widths, [cells[w]["iqm_low"] for w in widths], [cells[w]["iqm_high"] for w in widths],
                                color=line.get_color(), alpha=0.2)
        axes[0][1].plot(widths, [cells[w]["ms_per_step"] for w in widths], "o-", color=line.get_color(), label=side)
    for axis, ylabel in zip(axes[0], ("IQM of the final return (95% CI)", "wall ms per env step")):
        axis.set_xscale("log", base=2)
        aggregate._label(axis, ylabel.split(" (")[0], "width multiplier", ylabel, legend_size=8)
    aggregate._save(plt, figure, path)
    return None


def main(argv=None) -> int:
    """The study's command line: exit status 0, 1 when a run failed, 2 on bad input (`study.main`)."""
    return study.main(build, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
