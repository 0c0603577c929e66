"""How the rows time things: functions called in alternating rounds, and the steady rate a run's metrics record."""

from __future__ import annotations

import glob
import os
import statistics
import time
from typing import Any, Callable

import jax

from sparserl.reporting import read_csv


def interleaved_ms(functions: dict[str, Callable[[], Any]], rounds: int, calls: int) -> dict[str, float]:
    """Median ms per call of each function, timed in alternating rounds so that load hits all alike.

    Each function is called once first (compilation), then `rounds` x `calls` times; every call is synchronised
    (`jax.block_until_ready`).
    """
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


def steady_rate(run_dir: str, from_fraction: float = 0.5) -> float:
    """Aggregate steady env steps per second of a finished run, from the `sps` column of its metrics.

    A row's `sps` is one seed's env steps per second over that row, evaluations and checkpoints left out
    (`sparserl.metrics_log`). Per seed directory: the median over the rows past `from_fraction` of the last step
    (the warm-up and compilation left out), the last row too where no other is left (a compiled run evaluates
    inside its last call); summed over the seeds.
    """
    paths = sorted(glob.glob(os.path.join(run_dir, "seed*", "metrics.csv")))
    if not paths:
        raise FileNotFoundError(f"no seed*/metrics.csv in {run_dir}")
    total = 0.0
    for path in paths:
        rows = read_csv(path)
        later = [row["sps"] for row in rows if row["step"] > from_fraction * rows[-1]["step"]]
        total += statistics.median(later[:-1] or later)
    return total
