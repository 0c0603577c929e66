"""Aggregate run directories: a tidy results table, IQM and mean with 95% stratified-bootstrap CIs, and plots.

    python -m sparserl.experiments.aggregate runs/dqn_CartPole-v1_rigl_0.9 runs/dqn_CartPole-v1_dense_0 --out results/

Works on any run directories `{workdir}/{run_name}` holding `seed*/config.json`,
`metrics.csv` and `eval.csv` (docs/design.md contracts 5 and 6). Each seed's score is
the mean of the last 10% of its evaluations (at least one; the score issue 12
sets for reproducing Graesser et al. 2022). Writes into --out:

- `results.csv`: one row per run directory and seed: what the run was (agent,
  env, method, sparsity, remedy, replay ratio, width multiplier, ...), its score,
  its dense-normalised score and its final plasticity measures (the mean of the
  last 10% of log rows: dormant and GraMa totals, srank, weight magnitude);
- `iqm.csv`: per run directory, the interquartile mean and the mean of the
  seeds' scores with 95% stratified-bootstrap confidence intervals (Agarwal et
  al. 2021, "Deep RL at the edge of the statistical precipice", via `rliable`),
  and the seed mean of every measure (with its 95% CI for `CI_MEASURES`);
- PNG plots: `return_vs_sparsity.png`, `dormant_vs_step.png`,
  `return_vs_step.png`, `performance_profiles.png` (each when the runs hold
  what it shows; otherwise the console says why not).

Normalised score: (score - floor) / (reference - floor), where the reference
is the mean score of the dense, full-width, ReDo-free runs of the same agent
and env (at their lowest replay ratio) and the floor is the lowest return the
env allows (`RETURN_FLOORS`), so 1 is the dense baseline and 0 the worst
possible return. Envs without a known floor get no normalised score.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import glob
import io
import json
import math
import os
import sys

import numpy as np

from sparserl.cli import OneLineParser, UsageError, largest_sparsity
from sparserl.dormancy import DEFAULT_TAUS, tau_name
from sparserl.reporting import read_csv

SCORE_FRACTION = 0.1
TAUS = tuple(tau_name(tau) for tau in DEFAULT_TAUS)  # as the metric names write them: "0", "0.025", "0.1"
CONFIDENCE = 0.95
INSTALL_HINT = "pip install sparserl[analysis]"

# The lowest episode return each env allows, from its definition (Gymnasium docs of each env): Acrobot -1 per step
# for 500 steps; MountainCar -1 per step for 200 steps; Pendulum's largest cost pi^2 + 0.1 * 8^2 + 0.001 * 2^2 for 200
# steps; CartPole and MinAtar games never give negative rewards. gymnax ports share their Gymnasium ids' floors.
RETURN_FLOORS = {
    "CartPole-v1": 0.0,
    "Acrobot-v1": -500.0,
    "MountainCar-v0": -200.0,
    "Pendulum-v1": -200 * (math.pi ** 2 + 0.1 * 8.0 ** 2 + 0.001 * 2.0 ** 2),
    **{f"MinAtar/{game}-v1": 0.0 for game in ("Asterix", "Breakout", "Freeway", "Seaquest", "SpaceInvaders")},
    **{f"{game}-MinAtar": 0.0 for game in ("Asterix", "Breakout", "Freeway", "Seaquest", "SpaceInvaders")},
}


@dataclasses.dataclass
class SeedRun:
    """One seed of one run directory."""

    run: str  # the run directory's label (its name)
    seed: int
    config: dict
    evals: list[dict]
    metrics: list[dict]

    @property
    def fields(self) -> dict:
        return run_fields(self.config)


def run_fields(config: dict) -> dict:
    """What a run was, from its config.json: agent, env, method, sparsity, remedy (`none` when none ran; `redo`
    is whether one did), replay ratio, width."""
    sparse = config["sparse"]
    train_every = config.get("train_every")
    gradient_steps = config.get("gradient_steps", 1) if train_every is not None else None
    return {
        "agent": config["agent"],
        "env": config["env"],
        "method": sparse["method"],
        "sparsity": largest_sparsity(sparse),
        "distribution": sparse.get("distribution", ""),
        "redo": bool(config["redo"]["enabled"]),
        "remedy": config["redo"].get("remedy", "redo") if config["redo"]["enabled"] else "none",
        "train_every": train_every,
        "gradient_steps": gradient_steps,
        # Gradient updates per env step (Sokar et al. 2023's replay ratio); on-policy agents have none.
        "replay_ratio": gradient_steps / train_every if train_every else None,
        "width_multiplier": config["network"].get("width_multiplier", 1.0),
        "steps": config["steps"],
    }


def env_floor(env_id: str) -> float | None:
    """The lowest return an env allows (`RETURN_FLOORS`; a gymnax port shares its Gymnasium id's), or None."""
    return RETURN_FLOORS.get(env_id.removeprefix("gymnax:"))


def score(evals: list[dict]) -> float:
    """Mean eval return of the last 10% of evaluations (at least one)."""
    returns = [row["eval/episode_return"] for row in evals]
    count = max(1, int(len(returns) * SCORE_FRACTION))
    return float(np.mean(returns[-count:]))


def tail_mean(rows: list[dict], name: str) -> float:
    """Mean of `name` over the last 10% of the log rows that have it (at least one); NaN when none has."""
    values = [row[name] for row in rows if not math.isnan(row.get(name, math.nan))]
    if not values:
        return math.nan
    return float(np.mean(values[-max(1, int(len(values) * SCORE_FRACTION)):]))


def dormant_totals(rows: list[dict], tau: str) -> list[str]:
    """The dormant totals logged at `tau`: `dormant/<tau>/total` or one `dormant/<tau>/<network>/total` per network."""
    names = sorted({name for row in rows for name in row
                    if name.startswith(f"dormant/{tau}/") and name.endswith("/total")})
    return names


def measure_names(rows: list[dict]) -> list[str]:
    """The plasticity measures a run logged, as results.csv keeps them: the dormant and GraMa totals at every tau
    (`dormant/<tau>/[<network>/]total`, `grama/...`), every `srank/...` and every `weight_magnitude/...`."""
    names = {name for row in rows for name in row}
    totals = [name for tau in TAUS for kind in ("dormant", "grama") for name in sorted(names)
              if name.startswith(f"{kind}/{tau}/") and name.endswith("/total")]
    return totals + sorted(name for name in names if name.startswith(("srank/", "weight_magnitude/")))


MEASURE_PREFIXES = ("dormant/", "grama/", "srank/", "weight_magnitude/")
# Measures whose seed mean iqm.csv gives with a 95% CI (`<name>_low`, `<name>_high`): the tau = 0.1 totals and srank.
CI_MEASURES = ("dormant/0.1/", "grama/0.1/", "srank/")


def load_runs(run_dirs: list[str]) -> list[SeedRun]:
    """Reads every seed of every run directory; any missing or empty file is a UsageError."""
    if not run_dirs:
        raise UsageError("RUN_DIRS: give at least one run directory ({workdir}/{run_name})")
    labels = collections.Counter(os.path.basename(os.path.normpath(path)) for path in run_dirs)
    seed_runs = []
    for run_dir in run_dirs:
        if not os.path.isdir(run_dir):
            raise UsageError(f"RUN_DIRS: {run_dir} is not a directory")
        seed_dirs = sorted(glob.glob(os.path.join(run_dir, "seed*")), key=lambda path: int(path.rsplit("seed", 1)[1]))
        if not seed_dirs:
            raise UsageError(f"RUN_DIRS: {run_dir} holds no seed*/ directory")
        label = os.path.basename(os.path.normpath(run_dir))
        if labels[label] > 1:
            label = os.path.normpath(run_dir)
        for seed_dir in seed_dirs:
            for filename in ("config.json", "eval.csv", "metrics.csv"):
                if not os.path.isfile(os.path.join(seed_dir, filename)):
                    raise UsageError(f"RUN_DIRS: {seed_dir} has no {filename}")
            evals = [row for row in read_csv(os.path.join(seed_dir, "eval.csv"))
                     if not math.isnan(row.get("eval/episode_return", math.nan))]
            if not evals:
                raise UsageError(f"RUN_DIRS: {seed_dir}/eval.csv holds no evaluation yet")
            with open(os.path.join(seed_dir, "config.json")) as file:
                config = json.load(file)
            seed_runs.append(SeedRun(label, int(config["seed"]), config, evals,
                                     read_csv(os.path.join(seed_dir, "metrics.csv"))))
    return seed_runs


def results_rows(seed_runs: list[SeedRun]) -> list[dict]:
    """One tidy row per run directory and seed."""
    rows = []
    for seed_run in seed_runs:
        fields = seed_run.fields
        row = {"run": seed_run.run, "seed": seed_run.seed, **fields,
               "last_eval_step": seed_run.evals[-1]["step"], "score": score(seed_run.evals)}
        for name in measure_names(seed_run.metrics):
            row[name] = tail_mean(seed_run.metrics, name)
        rows.append(row)
    _normalise(rows)
    return rows


def _normalise(rows: list[dict]) -> None:
    """Adds `normalised_score` (see the module docstring) and the `reference_score` it used."""
    references = {}
    for (agent, env), group in _groups(rows, ("agent", "env")).items():
        baseline = [row for row in group if row["method"] == "dense" and row["width_multiplier"] == 1.0 and not row["redo"]]
        if baseline:
            lowest_ratio = min(row["replay_ratio"] or 0.0 for row in baseline)
            references[agent, env] = float(np.mean(
                [row["score"] for row in baseline if (row["replay_ratio"] or 0.0) == lowest_ratio]))
    for row in rows:
        reference, floor = references.get((row["agent"], row["env"])), env_floor(row["env"])
        usable = reference is not None and floor is not None and reference != floor
        row["reference_score"] = reference if reference is not None else math.nan
        row["normalised_score"] = (row["score"] - floor) / (reference - floor) if usable else math.nan


def _groups(rows: list[dict], keys: tuple[str, ...]) -> dict[tuple, list[dict]]:
    groups = collections.defaultdict(list)
    for row in rows:
        groups[tuple(row[key] for key in keys)].append(row)
    return dict(groups)


def import_rliable():
    """rliable's library and metrics modules, or a UsageError naming the extra that installs them."""
    try:
        from rliable import library, metrics
    except ImportError:
        raise UsageError(f"rliable is not installed; install the analysis extra: {INSTALL_HINT}") from None
    return library, metrics


def interval_estimates(scores: np.ndarray, reps: int, seed: int) -> dict[str, float]:
    """IQM and mean of a [runs, tasks] score matrix with their 95% stratified-bootstrap percentile CIs (rliable).

    rliable's StratifiedBootstrap draws its resampling indices from numpy's
    global generator (`np.random.choice` in `rliable.library`), so it is seeded
    here, once per call: the same scores always get the same intervals.
    """
    library, metrics = import_rliable()

    def iqm_and_mean(matrix):
        return np.array([metrics.aggregate_iqm(matrix), metrics.aggregate_mean(matrix)])

    np.random.seed(seed)
    points, intervals = library.get_interval_estimates(
        {"scores": scores}, iqm_and_mean, reps=reps, confidence_interval_size=CONFIDENCE)
    (iqm, mean), ((iqm_low, mean_low), (iqm_high, mean_high)) = points["scores"], intervals["scores"]
    return dict(iqm=iqm, iqm_low=iqm_low, iqm_high=iqm_high, mean=mean, mean_low=mean_low, mean_high=mean_high)


GROUP_FIELDS = ("agent", "env", "method", "sparsity", "distribution", "redo", "remedy", "train_every", "gradient_steps",
                "replay_ratio", "width_multiplier", "steps")


def iqm_rows(rows: list[dict], reps: int, seed: int = 0) -> list[dict]:
    """Per run directory: IQM and mean of its seeds' scores (and normalised scores) with 95% CIs."""
    table = []
    for (run,), group in _groups(rows, ("run",)).items():
        entry = {"run": run, **{key: group[0][key] for key in GROUP_FIELDS}, "seeds": len(group)}
        entry.update(interval_estimates(np.array([[row["score"] for row in group]]).T, reps, seed))
        normalised = np.array([[row["normalised_score"] for row in group]]).T
        if not np.isnan(normalised).any():
            entry.update({f"normalised_{key}": value for key, value in interval_estimates(normalised, reps, seed).items()})
        for name in dict.fromkeys(name for row in group for name in row if name.startswith(MEASURE_PREFIXES)):
            values = np.array([row.get(name, math.nan) for row in group])
            entry[name] = float(np.mean(values))
            if name.startswith(CI_MEASURES) and not np.isnan(values).any():
                estimates = interval_estimates(values[:, None], reps, seed)
                entry[f"{name}_low"], entry[f"{name}_high"] = estimates["mean_low"], estimates["mean_high"]
        table.append(entry)
    return table


def csv_text(rows: list[dict]) -> str:
    """Rows as CSV text: the columns in order of first appearance; None and NaN as empty cells."""
    columns = list(dict.fromkeys(name for row in rows for name in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, lineterminator="\n", restval="")
    writer.writeheader()
    for row in rows:
        writer.writerow({name: "" if value is None or (isinstance(value, float) and math.isnan(value)) else value
                         for name, value in row.items()})
    return buffer.getvalue()


def read_table(path: str) -> list[dict]:
    """Reads results.csv or iqm.csv back (numbers as float, empty cells as None)."""
    def parse(cell):
        if cell == "":
            return None
        if cell in ("True", "False"):
            return cell == "True"
        try:
            return float(cell)
        except ValueError:
            return cell

    with open(path, newline="") as file:
        return [{name: parse(cell) for name, cell in row.items()} for row in csv.DictReader(file)]


def variant(entry: dict) -> str:
    """A run's label without its sparsity: method, ReDo, replay ratio, width."""
    parts = [entry["method"]]
    if entry["width_multiplier"] != 1.0:
        parts.append(f"width x{entry['width_multiplier']:.3g}")
    if entry["replay_ratio"] is not None:
        parts.append(f"RR {entry['replay_ratio']:g}")
    if entry["redo"]:
        parts.append(REMEDY_LABELS[entry.get("remedy", "redo")])
    return " ".join(parts)


REMEDY_LABELS = {"none": "", "redo": "ReDo", "regrama": "ReGraMa", "shrink_perturb": "S&P", "reset": "reset"}
REMEDY_LINES = {"none": "-", "redo": "--", "regrama": ":", "shrink_perturb": "-.", "reset": (0, (5, 1, 1, 1, 1, 1))}


# ------------------------------------------------------------------------------------------------------------- plots

def _figure(panels: int, rows: int = 1, width: float = 5.0, height: float = 3.6):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(rows, panels, figsize=(width * panels, height * rows), squeeze=False)
    return plt, figure, axes


def _label(axis, title: str, xlabel: str, ylabel: str, legend_size: int) -> None:
    """Title, axis labels, a light grid and the legend of one panel."""
    axis.set_title(title)
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=legend_size)


def _save(plt, figure, path: str) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_return_vs_sparsity(table: list[dict], matched_sparsity: dict[str, float], path: str) -> str | None:
    """IQM of the score against sparsity, one line per method variant with its 95% CI band; the dense baseline as a
    horizontal band; parameter-matched dense networks at the sparsity whose parameter count they match."""
    panels = _groups(table, ("agent", "env"))
    if not any(len({entry["sparsity"] for entry in group}) > 1 or matched_sparsity for group in panels.values()):
        return "return_vs_sparsity.png: the runs hold one sparsity level only"
    plt, figure, axes = _figure(len(panels))
    for axis, ((agent, env), group) in zip(axes[0], panels.items()):
        sparsities = sorted({entry["sparsity"] for entry in group} | {matched_sparsity.get(e["run"], 0.0) for e in group})
        lines = collections.defaultdict(list)
        for entry in group:
            if entry["method"] == "dense" and entry["width_multiplier"] != 1.0:
                if entry["run"] in matched_sparsity:
                    lines[variant({**entry, "width_multiplier": 1.0}) + " (parameter-matched)"].append(
                        (matched_sparsity[entry["run"]], entry))
            elif entry["method"] == "dense":
                x = [min(sparsities), max(sparsities)]
                line, = axis.plot(x, [entry["iqm"]] * 2, "--", label=variant(entry))
                axis.fill_between(x, entry["iqm_low"], entry["iqm_high"], color=line.get_color(), alpha=0.1)
            else:
                lines[variant(entry)].append((entry["sparsity"], entry))
        for label, points in sorted(lines.items()):
            points.sort(key=lambda point: point[0])
            x = [point[0] for point in points]
            line, = axis.plot(x, [p[1]["iqm"] for p in points], "o-" if "matched" not in label else "s:", label=label)
            axis.fill_between(x, [p[1]["iqm_low"] for p in points], [p[1]["iqm_high"] for p in points],
                              color=line.get_color(), alpha=0.2)
        _label(axis, f"{agent} {env}", "sparsity", "IQM of the final return (95% CI)", legend_size=7)
    _save(plt, figure, path)
    return None


def _mean_curve(seed_runs: list[SeedRun], filename_rows: str, name: str):
    """(steps, mean, std) over the seeds of `name`, on the steps every seed logged."""
    curves = []
    for seed_run in seed_runs:
        rows = getattr(seed_run, filename_rows)
        curves.append({row["step"]: row[name] for row in rows if not math.isnan(row.get(name, math.nan))})
    steps = sorted(set.intersection(*(set(curve) for curve in curves)))
    if not steps:
        return None
    values = np.array([[curve[step] for step in steps] for curve in curves])
    return np.array(steps), values.mean(axis=0), values.std(axis=0)


def plot_dormant_vs_step(seed_runs: list[SeedRun], path: str) -> str | None:
    """Dormant fraction (%) against env steps: one row per tau, one column per replay ratio; a solid line without a
    remedy, another line style per remedy (`REMEDY_LINES`; mean over seeds, band +- one standard deviation)."""
    by_run = _groups_of_seed_runs(seed_runs)
    if not any(dormant_totals(seed_run.metrics, "0.1") for seed_run in seed_runs):
        return "dormant_vs_step.png: no run logged dormant fractions"
    ratios = sorted({runs[0].fields["replay_ratio"] or 0.0 for runs in by_run.values()})
    plt, figure, axes = _figure(len(ratios), rows=len(TAUS), width=4.5, height=3.0)
    for row_index, tau in enumerate(TAUS):
        for column, ratio in enumerate(ratios):
            axis = axes[row_index][column]
            for run, runs in by_run.items():
                fields = runs[0].fields
                if (fields["replay_ratio"] or 0.0) != ratio:
                    continue
                for name in dormant_totals(runs[0].metrics, tau):
                    curve = _mean_curve(runs, "metrics", name)
                    if curve is None:
                        continue
                    steps, mean, std = curve
                    network = name.split("/")[2] if name.count("/") == 3 else ""
                    label = f"{fields['method']} {fields['sparsity']:g}{' ' + network if network else ''}"
                    remedy = fields["remedy"]
                    line, = axis.plot(steps, 100 * mean, REMEDY_LINES[remedy], marker="o" if len(steps) == 1 else None,
                                      label=f"{label} {REMEDY_LABELS[remedy]}".rstrip())
                    axis.fill_between(steps, 100 * (mean - std), 100 * (mean + std), color=line.get_color(), alpha=0.15)
            axis.set_title(f"tau = {tau}, replay ratio {ratio:g}", fontsize=9)
            axis.set_xlabel("environment steps")
            axis.set_ylabel("dormant neurons (%)")
            axis.grid(alpha=0.3)
            if row_index == 0:
                axis.legend(fontsize=6)
    _save(plt, figure, path)
    return None


def _groups_of_seed_runs(seed_runs: list[SeedRun]) -> dict[str, list[SeedRun]]:
    groups = collections.defaultdict(list)
    for seed_run in seed_runs:
        groups[seed_run.run].append(seed_run)
    return dict(groups)


def plot_return_vs_step(seed_runs: list[SeedRun], path: str) -> str | None:
    """Eval return against env steps, one line per run directory (mean over seeds, band +- one std)."""
    by_run = _groups_of_seed_runs(seed_runs)
    panels = collections.defaultdict(dict)
    for run, runs in by_run.items():
        panels[runs[0].fields["agent"], runs[0].fields["env"]][run] = runs
    plt, figure, axes = _figure(len(panels), width=6.0, height=4.0)
    for axis, ((agent, env), runs_by_label) in zip(axes[0], panels.items()):
        for run, runs in runs_by_label.items():
            curve = _mean_curve(runs, "evals", "eval/episode_return")
            if curve is None:
                continue
            steps, mean, std = curve
            line, = axis.plot(steps, mean, marker="o" if len(steps) == 1 else None, label=f"{run} ({len(runs)} seeds)")
            axis.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.15)
        _label(axis, f"{agent} {env}", "environment steps", "eval return", legend_size=6)
    _save(plt, figure, path)
    return None


def plot_performance_profiles(rows: list[dict], reps: int, seed: int, path: str) -> str | None:
    """Performance profiles (Agarwal et al. 2021): the fraction of runs whose score exceeds tau, with 95% CIs, one
    panel per agent, env and sparsity (the dense baseline drawn in every panel), normalised scores where every run
    has one, else returns."""
    from rliable import library, plot_utils

    normalised = not any(math.isnan(row["normalised_score"]) for row in rows)
    key = "normalised_score" if normalised else "score"
    panels = collections.defaultdict(lambda: collections.defaultdict(list))
    for (agent, env), group in _groups(rows, ("agent", "env")).items():
        sparse_levels = sorted({row["sparsity"] for row in group if row["sparsity"] > 0}) or [0.0]
        for row in group:
            for level in (sparse_levels if row["sparsity"] == 0 else [row["sparsity"]]):
                panels[agent, env, level][variant(row)].append(row[key])
    plt, figure, axes = _figure(len(panels), width=5.0, height=3.8)
    for axis, ((agent, env, level), scores) in zip(axes[0], sorted(panels.items())):
        values = np.concatenate([np.asarray(v) for v in scores.values()])
        margin = 0.05 * (values.max() - values.min()) or 0.05 * max(abs(values.min()), 1.0)  # from all runs above to none
        tau_list = np.linspace(values.min() - margin, values.max() + margin, 41)
        np.random.seed(seed)
        profiles, intervals = library.create_performance_profile(
            {label: np.array([s]).T for label, s in scores.items()}, tau_list, reps=reps)
        plot_utils.plot_performance_profiles(profiles, tau_list, performance_profile_cis=intervals, ax=axis,
                                             xlabel="normalised score (tau)" if normalised else "return (tau)",
                                             ylabel="fraction of runs with score > tau")
        axis.set_title(f"{agent} {env} sparsity {level:g}", fontsize=9)
        axis.legend(fontsize=6)
    _save(plt, figure, path)
    return None


# ---------------------------------------------------------------------------------------------------------- the CLI

def matched_sparsities(seed_runs: list[SeedRun]) -> dict[str, float]:
    """For dense runs at a width multiplier below 1: 1 - (their parameters / the full-width dense network's)."""
    import ml_collections

    from sparserl.experiments import parameters
    from sparserl import envs

    matched = {}
    for run, runs in _groups_of_seed_runs(seed_runs).items():
        fields = runs[0].fields
        if fields["method"] != "dense" or fields["width_multiplier"] == 1.0:
            continue
        config = ml_collections.ConfigDict(runs[0].config)
        spec = envs.env_spec(config.env)
        narrow = parameters.dense_parameters(config, spec)
        config.network.width_multiplier = 1.0
        matched[run] = 1.0 - narrow / parameters.dense_parameters(config, spec)
    return matched


def aggregate(run_dirs: list[str], out: str, reps: int = 10_000, seed: int = 0) -> dict:
    """Reads the runs and writes every output into `out`; returns {'rows', 'table', 'skipped', 'courses'}. Bad input
    raises UsageError before anything is written."""
    import_rliable()
    seed_runs = load_runs(run_dirs)
    rows = results_rows(seed_runs)
    table = iqm_rows(rows, reps, seed)
    matched = matched_sparsities(seed_runs)
    for entry in table:
        entry["matched_sparsity"] = matched.get(entry["run"])
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.csv"), "w") as file:
        file.write(csv_text(rows))
    with open(os.path.join(out, "iqm.csv"), "w") as file:
        file.write(csv_text(table))
    skipped = [reason for reason in (
        plot_return_vs_sparsity(table, matched, os.path.join(out, "return_vs_sparsity.png")),
        plot_dormant_vs_step(seed_runs, os.path.join(out, "dormant_vs_step.png")),
        plot_return_vs_step(seed_runs, os.path.join(out, "return_vs_step.png")),
        plot_performance_profiles(rows, min(reps, 2_000), seed, os.path.join(out, "performance_profiles.png")),
    ) if reason]
    return {"rows": rows, "table": table, "skipped": skipped, "courses": dormant_courses(seed_runs)}


def dormant_courses(seed_runs: list[SeedRun], tau: str = "0.1") -> dict[str, dict[str, tuple]]:
    """Run -> dormant total at `tau` -> (steps, mean over seeds): how each run's dormant fraction moved in training."""
    courses = collections.defaultdict(dict)
    for run, runs in _groups_of_seed_runs(seed_runs).items():
        for name in dormant_totals(runs[0].metrics, tau):
            curve = _mean_curve(runs, "metrics", name)
            if curve is not None:
                courses[run][name] = curve[:2]
    return dict(courses)


def main(argv=None) -> int:
    """`python -m sparserl.experiments.aggregate RUN_DIRS --out DIR`; bad input is one line and exit status 2."""
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="*", metavar="RUN_DIRS", help="run directories ({workdir}/{run_name})")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--bootstrap_reps", type=int, default=10_000, help="bootstrap resamples per CI")
    parser.add_argument("--bootstrap_seed", type=int, default=0)
    arguments = parser.parse_args(argv)
    if arguments.bootstrap_reps < 1:
        parser.error(f"--bootstrap_reps: must be >= 1, got {arguments.bootstrap_reps}")
    try:
        result = aggregate(arguments.run_dirs, arguments.out, arguments.bootstrap_reps, arguments.bootstrap_seed)
    except UsageError as error:
        parser.error(str(error))
    for reason in result["skipped"]:
        print(f"skipped {reason}")
    print(f"wrote {arguments.out}: results.csv ({len(result['rows'])} rows), iqm.csv ({len(result['table'])} runs), plots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
