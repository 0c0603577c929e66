"""What both studies share: scales, their command line, resolving a run's config as `sparserl.train` would, and the
plan -> launch -> aggregate -> summary.md sequence of a study directory.

A study directory `--out` holds `plan.json` (the grid: every process's name,
flags, seeds and, for a sweep of sparsity levels, its levels' run
directories), `runs/` (the run directories), `logs/` (one log per process),
the aggregate's `results.csv`, `iqm.csv` and plots, and `summary.md`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import sys
from typing import Callable

from sparserl.cli import OneLineParser, UsageError, report_usage
from sparserl.experiments import aggregate, launch
from sparserl.reporting import atomic_write_text

SCALES = ("smoke", "small", "paper")  # what every study offers; a study may add its own (`parser(scales=)`)


@dataclasses.dataclass(frozen=True)
class Scale:
    """The default env, length, seeds and extra `sparserl.train` flags of one agent at one scale."""

    env: str
    steps: int
    seeds: int
    flags: tuple[str, ...] = ()


# Tiny networks and a few hundred steps on gymnax envs (the compiled loop, where a study trains a method's sparsity
# levels as one program, as at the small scale): the tests' scale.
SMOKE_FLAGS = ("--eval_every=100", "--checkpoint_every=1000", "--config.eval_episodes=2", "--config.log_every=100",
               "--config.network.hidden_sizes=16,16")
SMOKE = {
    "dqn": Scale("gymnax:CartPole-v1", 300, 2, SMOKE_FLAGS + ("--config.learning_starts=100", "--config.batch_size=32")),
    "sac": Scale("gymnax:Pendulum-v1", 300, 2, SMOKE_FLAGS + ("--config.learning_starts=100", "--config.batch_size=32")),
    "ppo": Scale("gymnax:CartPole-v1", 512, 2, SMOKE_FLAGS + ("--config.rollout_steps=64", "--config.num_envs=2")),
}


def parser(description: str, agents: tuple[str, ...], scales: tuple[str, ...] = SCALES) -> OneLineParser:
    """The command line both studies share; `--config.<field>=value` arguments pass through to every run."""
    result = OneLineParser(description=description)
    result.add_argument("--agent", default=agents[0], choices=agents)
    result.add_argument("--env", default=None, help="environment id (default: the scale's)")
    result.add_argument("--scale", default="small", choices=scales)
    result.add_argument("--seeds", type=int, default=None, help="seeds per run (default: the scale's)")
    result.add_argument("--steps", type=int, default=None, help="environment steps per run (default: the scale's)")
    result.add_argument("--out", required=True, help="the study directory")
    result.add_argument("--launcher", default="local", choices=launch.LAUNCHERS)
    result.add_argument("--ray_address", default=None, help="join this Ray cluster (default: start a local one)")
    result.add_argument("--max_parallel", type=int, default=None, help="local runs at once (default: the cores)")
    result.add_argument("--gpus_per_run", type=float, default=0.25, help="GPU fraction per Ray task where GPUs exist")
    result.add_argument("--bootstrap_reps", type=int, default=10_000, help="bootstrap resamples per CI")
    result.add_argument("--dry_run", action="store_true", help="write plan.json and print the commands only")
    return result


# Config fields every study sets per run: an override would silently undo the grid.
GRID_FIELDS = ("agent", "env", "steps", "seed", "num_seeds", "sparse.method", "sparse.sparsity", "redo.enabled")


def parse(parser_: OneLineParser, argv, grid_fields: tuple[str, ...] = ()) -> tuple:
    """(arguments, overrides): the study's flags and the `--config.<field>=value` ones for every run; an override of
    a field the grid sets (`GRID_FIELDS` and the study's own `grid_fields`) is bad input."""
    arguments, unknown = parser_.parse_known_args(argv)
    overrides = [argument for argument in unknown if argument.startswith("--config.")]
    for argument in overrides:
        field = argument.removeprefix("--config.").split("=", 1)[0]
        if field in GRID_FIELDS + grid_fields:
            parser_.error(f"--config.{field}: the study sets it for each run; use the study's flags instead")
    others = [argument for argument in unknown if not argument.startswith("--config.")]
    if others:
        parser_.error(f"unrecognized arguments: {' '.join(others)}")
    for name in ("seeds", "steps", "max_parallel", "bootstrap_reps"):
        value = getattr(arguments, name)
        if value is not None and value < 1:
            parser_.error(f"--{name}: must be >= 1, got {value}")
    if not (0 < arguments.gpus_per_run <= 1 or float(arguments.gpus_per_run).is_integer() and arguments.gpus_per_run > 0):
        parser_.error(f"--gpus_per_run: a fraction in (0, 1] or a whole number of GPUs, got {arguments.gpus_per_run:g}")
    if os.path.exists(arguments.out) and not os.path.isdir(arguments.out):
        parser_.error(f"--out: {arguments.out} exists and is not a directory")
    if arguments.ray_address and arguments.launcher != "ray":
        parser_.error("--ray_address: only with --launcher=ray")
    return arguments, overrides


def parse_floats(text: str, flag: str) -> list[float]:
    """A comma-separated list of numbers given to `flag` (empty parts left out)."""
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"{flag}: {text!r} is not a comma-separated list of numbers") from None


def resolve_configs(train_args: list[str]) -> list:
    """The config of every level `python -m sparserl.train TRAIN_ARGS` would run (presets, flags, overrides; one, or
    a sweep's levels), checked as sparserl.train checks them, or a UsageError."""
    from sparserl import train

    return train.configs_from_arguments(["sparserl.train", *train_args])


def run_spec(train_args: list[str], seeds: int, suffix: str = "") -> launch.RunSpec:
    """The process `python -m sparserl.train TRAIN_ARGS` (checked as sparserl.train checks them) over seeds 0..seeds-1:
    a run, named by its default run name and `suffix`, or a sweep (a `--sparsity` list), named by its levels
    (`dqn_gymnax-CartPole-v1_rigl_0.5-0.9`), whose levels write the run directories sparserl.train names."""
    from sparserl import train

    configs = resolve_configs(train_args)
    names = tuple(train.default_run_name(config) for config in configs)
    if len(configs) == 1:
        return launch.RunSpec(names[0] + suffix, tuple(train_args), tuple(range(seeds)))
    if suffix:
        raise ValueError(f"a sweep's run directories take the names sparserl.train gives them, not {suffix!r}")
    levels = [config.sparse.sparsity for config in configs]
    return launch.RunSpec(train.default_run_name(configs[0], levels), tuple(train_args), tuple(range(seeds)), names)


def run_study(arguments, plan: dict, specs: list[launch.RunSpec], summarize: Callable[[dict, dict], str]) -> int:
    """Writes plan.json, runs what is unfinished, aggregates the finished runs and writes summary.md.
    Exit status 0, or 1 when a run failed (the others are still aggregated)."""
    out = arguments.out
    runs_dir, logs_dir = os.path.join(out, "runs"), os.path.join(out, "logs")
    plan = {**plan, "runs": [dataclasses.asdict(spec) for spec in specs]}
    os.makedirs(out, exist_ok=True)
    atomic_write_text(os.path.join(out, "plan.json"), json.dumps(plan, indent=2) + "\n")
    if arguments.dry_run:
        for spec in specs:
            print(shlex.join(launch.train_command(spec, runs_dir, python="python")))
        if plan.get("estimate"):
            print(plan["estimate"])
        return 0
    outcomes = launch.launch(specs, runs_dir, logs_dir, arguments.launcher, arguments.max_parallel,
                             arguments.ray_address, arguments.gpus_per_run)
    failed = [outcome for outcome in outcomes if outcome.status == "failed"]
    run_dirs = [(os.path.join(runs_dir, name), spec.seeds) for spec in specs for name in spec.run_names]
    finished = [run_dir for run_dir, seeds in run_dirs if launch.is_finished(run_dir, seeds)]
    if finished:
        result = aggregate.aggregate(finished, out, arguments.bootstrap_reps)
        for reason in result["skipped"]:
            print(f"skipped {reason}", flush=True)
        text = summarize(plan, result)
        if len(finished) < len(run_dirs):
            missing = [os.path.basename(run_dir) for run_dir, _ in run_dirs if run_dir not in finished]
            text += f"\n## Not included\n\n{len(missing)} of {len(run_dirs)} runs did not finish: {', '.join(missing)}.\n"
        atomic_write_text(os.path.join(out, "summary.md"), text)
        print(f"wrote {os.path.join(out, 'summary.md')}", flush=True)
    for outcome in failed:
        print(f"failed: {outcome.name}: {outcome.detail}", file=sys.stderr, flush=True)
    return 1 if failed else 0


def main(build: Callable, argv=None) -> int:
    """Runs a study's `build(argv) -> (arguments, plan, specs, summarize)`; bad input is one line and exit 2."""
    try:
        arguments, plan, specs, summarize = build(argv)
        return run_study(arguments, plan, specs, summarize)
    except UsageError as error:
        return report_usage(str(error))


# ------------------------------------------------------------------------------------------------ summary helpers

def interval(entry: dict, key: str = "iqm") -> str:
    """A statistic of an iqm.csv entry with its 95% CI: `value [low, high]`."""
    return f"{entry[key]:.4g} [{entry[key + '_low']:.4g}, {entry[key + '_high']:.4g}]"


def overlaps(first: dict, second: dict) -> bool:
    """Whether two runs' IQM 95% CIs overlap."""
    return first["iqm_low"] <= second["iqm_high"] and second["iqm_low"] <= first["iqm_high"]


def header(title: str, plan: dict, result: dict) -> str:
    """The opening of a summary.md: title, the command that made it, the setting and how scores are computed."""
    seeds = sorted({entry["seeds"] for entry in result["table"]})
    return (f"# {title}\n\n"
            f"Generated by `{plan['command']}` from `results.csv` and `iqm.csv`; do not edit by hand.\n\n"
            f"{plan['agent']} on {plan['env']}, scale {plan['scale']}, {plan['steps']:,} environment steps, "
            f"{'/'.join(str(int(s)) for s in seeds)} seeds per run. Score: the mean evaluation return of the last 10% "
            f"of evaluations; IQM over seeds with its 95% stratified-bootstrap confidence interval in brackets "
            f"(rliable, Agarwal et al. 2021).\n")
