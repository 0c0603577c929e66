"""Row `startup`: process start to the first metrics row of `python -m sparserl.train` (DQN CartPole, a one-step run),
warm compilation cache vs cold (goal: warm <= 2 s); with `--peers`, vs sbx's process start to its first env step.

Ours is timed to the moment its metrics.csv is written (the file's modification time), after the first env step
and the programs of that step and of its metrics row: a later point than sbx's, so `ours / sbx` leans against ours.
"""

from __future__ import annotations

import os
import tempfile

from sparserl.experiments.bench import workloads
from sparserl.experiments.bench.table import Row, Settings

WORKLOAD = "dqn_cartpole"


def first_row_s(cache_dir: str) -> float:
    """Seconds from the start of a one-step `python -m sparserl.train` process to its metrics row."""
    with tempfile.TemporaryDirectory() as workdir:
        run_dir, started, _ = workloads.run_ours(workloads.WORKLOADS[WORKLOAD], 1, workdir, cache_dir)
        return os.stat(os.path.join(run_dir, "seed0", "metrics.csv")).st_mtime - started


def rows(settings: Settings) -> list[Row]:
    """Start-up of DQN CartPole: warm compilation cache vs cold (goal: warm <= 2 s); with peers, ours (warm) vs sbx."""
    with tempfile.TemporaryDirectory() as cache_dir:
        cold = first_row_s(cache_dir)
        warm = first_row_s(cache_dir)
    rows = [Row("start-up", "DQN CartPole, warm cache vs cold", warm, cold, "s", warm / cold, "warm / cold",
                "<= 2", goal_on="ours")]
    if settings.peers:
        peer = workloads.run_peer(WORKLOAD, 100, exit_at_first_step=True)["startup_s"]
        rows.append(Row("start-up", "DQN CartPole, ours (warm) vs sbx", warm, peer, "s", warm / peer, "ours / sbx"))
    return rows
