"""Plot run directories side by side: evaluation return, sparsity and dormant fraction against steps.

    python -m sparserl.experiments.plot_runs runs/dqn_CartPole-v1_rigl_0.9 runs/dqn_CartPole-v1_dense_0 --out cartpole.png
    python -m sparserl.experiments.plot_runs RUN_DIRS --metrics=eval/episode_return,dormant/0.1/total,srank/dense_0

`--metrics` picks the panels, one per metric name of docs/design.md contract 6 (`eval/...` from eval.csv, the
rest from metrics.csv; a multi-network name such as `dormant/0.1/total` averages the networks' totals).

Each run is drawn as the mean over its seeds with a band of +- one standard
deviation (seeds are the `seed*/` directories of the run).
"""

import glob
import math
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sparserl.cli import OneLineParser, report_usage  # noqa: E402
from sparserl.reporting import read_csv  # noqa: E402

PANELS = (
    ("eval.csv", "eval/episode_return", "eval return"),
    ("metrics.csv", "sparsity/total", "sparsity"),
    ("metrics.csv", "dormant/0.1/total", "dormant fraction (tau = 0.1)"),
)


def seed_curves(run_dir: str, filename: str, metric: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """(steps, values) of `metric` for every seed of a run; multi-network metrics (e.g. dormant/0.1/critic/total)
    are averaged over the networks."""
    curves = []
    for path in sorted(glob.glob(os.path.join(run_dir, "seed*", filename))):
        rows = read_csv(path)
        prefix, _, last = metric.rpartition("/")
        names = sorted({name for row in rows for name in row
                        if name == metric or (name.startswith(prefix + "/") and name.endswith("/" + last))})
        if not rows or not names:
            continue
        values = np.array([np.nanmean([row.get(name, math.nan) for name in names]) for row in rows])
        steps = np.array([row["step"] for row in rows])
        keep = ~np.isnan(values)
        curves.append((steps[keep], values[keep]))
    return curves


def panels_of(metrics: list[str]) -> tuple[tuple[str, str, str], ...]:
    """(file, metric, title) per metric name: `eval/...` from eval.csv, the rest from metrics.csv."""
    return tuple(("eval.csv" if metric.startswith("eval/") else "metrics.csv", metric, metric) for metric in metrics)


def plot(run_dirs: list[str], out: str, panels: tuple[tuple[str, str, str], ...] = PANELS) -> None:
    """Writes the figure to `out`: a panel per entry of `panels`, a line per run directory."""
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    axes = axes[0]
    for axis, (filename, metric, title) in zip(axes, panels):
        for run_dir in run_dirs:
            curves = seed_curves(run_dir, filename, metric)
            if not curves:
                continue
            length = min(len(steps) for steps, _ in curves)
            steps = curves[0][0][:length]
            values = np.stack([v[:length] for _, v in curves])
            mean, std = values.mean(axis=0), values.std(axis=0)
            label = f"{os.path.basename(os.path.normpath(run_dir))} ({len(curves)} seeds)"
            axis.plot(steps, mean, label=label)
            axis.fill_between(steps, mean - std, mean + std, alpha=0.2)
        axis.set_title(title)
        axis.set_xlabel("environment steps")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    plt.close(figure)


def main(argv=None) -> int:
    """`python -m sparserl.experiments.plot_runs RUN_DIRS --out FILE`; bad input is one line and exit status 2."""
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", help="run directories ({workdir}/{run_name})")
    parser.add_argument("--out", default="runs.png", help="output image (PNG, PDF or SVG)")
    parser.add_argument("--metrics", default=None, help="comma-separated metric names, a panel each (default: eval "
                        "return, sparsity/total, dormant/0.1/total)")
    arguments = parser.parse_args(argv)
    missing = [run_dir for run_dir in arguments.run_dirs if not glob.glob(os.path.join(run_dir, "seed*"))]
    if missing:
        return report_usage(f"run_dirs: no seed directories in {', '.join(missing)}")
    panels = PANELS
    if arguments.metrics is not None:
        panels = panels_of([metric.strip() for metric in arguments.metrics.split(",") if metric.strip()])
        unlogged = [metric for filename, metric, _ in panels
                    if not any(seed_curves(run_dir, filename, metric) for run_dir in arguments.run_dirs)]
        if unlogged or not panels:
            return report_usage(f"--metrics: no run logged {unlogged[0]!r}" if unlogged else "--metrics: name a metric")
    plot(arguments.run_dirs, arguments.out, panels)
    print(f"wrote {arguments.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
