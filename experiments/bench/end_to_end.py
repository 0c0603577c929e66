"""Row `end_to_end`: steady env steps/s and whole-process wall time of short runs of `python -m sparserl.train`: DQN
CartPole, PPO CartPole, SAC HalfCheetah-v5, DQN Pong; with `--peers`, the same settings run with sbx
(stable-baselines-jax), printing ours / peer ratios. Our steady rate is `timing.steady_rate` of the run's metrics
(from half the run on); sbx's is timed on its env steps over the second half."""

from __future__ import annotations

import tempfile

from sparserl.experiments.bench import timing, workloads
from sparserl.experiments.bench.table import Row, Settings

GOALS = {"dqn": (">= 3", ">= 2"), "ppo": (">= 3", ">= 2"), "sac": (">= 1.5", "")}  # (steady, wall) against sbx


def ours(workload: workloads.Workload, steps: int) -> dict:
    """`steady_rate` and `wall_s` of our run of the workload."""
    with tempfile.TemporaryDirectory() as workdir:
        run_dir, _, wall = workloads.run_ours(workload, steps, workdir)
        return {"steady_rate": timing.steady_rate(run_dir, from_fraction=0.5), "wall_s": wall}


def rows(settings: Settings) -> list[Row]:
    """Steady env steps/s and whole-process wall time of short training runs; with --peers, ours / sbx."""
    rows = []
    for name, workload in workloads.WORKLOADS.items():
        steps = settings.pick(workload.steps, workload.quick_steps)
        label = f"{workload.agent.upper()} {workload.env_id}, {steps:,} steps"
        our_run = ours(workload, steps)
        peer = workloads.run_peer(name, steps) if settings.peers else None
        steady_goal, wall_goal = ("", "") if workload.env_id.startswith("ALE/") or not peer else GOALS[workload.agent]
        rows.append(Row("end to end", f"{label}: steady steps/s", our_run["steady_rate"],
                        peer["steady_rate"] if peer else None, "env steps/s",
                        our_run["steady_rate"] / peer["steady_rate"] if peer else None, "ours / sbx", steady_goal))
        rows.append(Row("end to end", f"{label}: wall time", our_run["wall_s"], peer["wall_s"] if peer else None, "s",
                        peer["wall_s"] / our_run["wall_s"] if peer else None, "sbx wall / ours (speed-up)", wall_goal))
    return rows
