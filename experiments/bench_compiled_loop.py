"""The compiled loop (gymnax envs, `sparserl.compiled_runner`) against the host loop, same agent settings.

    python -m sparserl.experiments.bench_compiled_loop            # the issue-11 goal rows
    python -m sparserl.experiments.bench_compiled_loop --quick    # fewer steps, for a look

Each row runs the training entry point twice, one run after the other in this
one invocation: on `gymnax:<id>` (the compiled loop) and on the Gymnasium id
(the host loop), with the same flags. Throughput is the steady state: the
median of the `sps` column (env steps per second per seed, eval and
checkpoint time left out by the recorder) over the log windows after the
first two (compilation, replay warm-up), times the number of seeds. Only the
ratio is meant to be quoted. `rows()` returns the rows for other scripts
(e.g. `sparserl.bench`).
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

from sparserl.reporting import read_csv

# DQN at sbx's settings (stable-baselines-jax DQN defaults on CartPole): 256-256, batch 32, one update per
# 4 env steps, lr 1e-4.
SBX_DQN = ("--agent=dqn", "--config.network.hidden_sizes=256,256", "--config.batch_size=32",
           "--config.train_every=4", "--config.learning_rate=1e-4")
PPO = ("--agent=ppo",)  # the classic-control preset: 4 envs x 128 steps, 4 epochs of 4 minibatches

# name, flags, Gymnasium env, seeds, (steps of the compiled run, steps of the host run)
GOAL_ROWS = (
    ("PPO CartPole-v1, 16 seeds", PPO, "CartPole-v1", 16, (40_960, 10_240)),
    ("DQN CartPole-v1 (sbx settings), 1 seed", SBX_DQN, "CartPole-v1", 1, (40_000, 8_000)),
    ("DQN CartPole-v1 (sbx settings), 16 seeds", SBX_DQN, "CartPole-v1", 16, (20_000, 5_000)),
)


def steady_sps(arguments: tuple[str, ...], env_id: str, seeds: int, steps: int, log_every: int, workdir: str) -> float:
    """Aggregate env steps/s over all seeds of one CLI training run (in a fresh run directory), in its steady state."""
    workdir = tempfile.mkdtemp(dir=workdir)
    command = [sys.executable, "-m", "sparserl.train", *arguments, f"--env={env_id}", f"--num_seeds={seeds}",
               f"--steps={steps}", f"--eval_every={steps}", f"--config.log_every={log_every}",
               f"--config.checkpoint_every={steps}", "--config.eval_episodes=1", f"--workdir={workdir}",
               f"--run_name={env_id.replace(':', '-')}_{seeds}"]
    result = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    rows = read_csv(os.path.join(workdir, f"{env_id.replace(':', '-')}_{seeds}", "seed0", "metrics.csv"))
    windows = [row["sps"] for row in rows[2:-1]] or [rows[-1]["sps"]]  # not the compiling / warm-up / last window
    return statistics.median(windows) * seeds


def measure_row(goal_row: tuple, workdir: str, quick: bool = False) -> dict:
    """One goal row: compiled and host aggregate steps/s and their ratio."""
    name, arguments, env_id, seeds, (compiled_steps, host_steps) = goal_row
    scale = 4 if quick else 1
    log_every = 2_048 if arguments is PPO else 1_000
    compiled = steady_sps(arguments, f"gymnax:{env_id}", seeds, compiled_steps // scale, log_every, workdir)
    host = steady_sps(arguments, env_id, seeds, max(host_steps // scale, 4 * log_every), log_every, workdir)
    return {"row": name, "compiled_sps": compiled, "host_sps": host, "ratio": compiled / host}


def rows(quick: bool = False) -> list[dict]:
    """Every goal row (`GOAL_ROWS`), measured one after the other."""
    with tempfile.TemporaryDirectory() as workdir:
        return [measure_row(goal_row, workdir, quick) for goal_row in GOAL_ROWS]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a quarter of the steps")
    arguments = parser.parse_args()
    print(f"{'row':45s} {'compiled steps/s':>17s} {'host steps/s':>13s} {'ratio':>7s}", flush=True)
    with tempfile.TemporaryDirectory() as workdir:
        for goal_row in GOAL_ROWS:
            row = measure_row(goal_row, workdir, arguments.quick)
            print(f"{row['row']:45s} {row['compiled_sps']:17,.0f} {row['host_sps']:13,.0f} {row['ratio']:6.1f}x", flush=True)


if __name__ == "__main__":
    main()
