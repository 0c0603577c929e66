"""The settings rows share with sbx's defaults, the workloads of the rows that run whole processes (start-up, end to
end), and those processes: `python -m sparserl.train` for ours, `python -m sparserl.experiments.bench.sbx_peer` for
sbx's."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time

from sparserl import compilation_cache
from sparserl.experiments.bench import training

RIGL_90 = {"sparse.method": "rigl", "sparse.sparsity": 0.9, "sparse.distribution": "erk"}
DQN_SBX_SETTINGS = {  # sbx's DQN defaults (stable-baselines3 DQN), with a 1k warm-up and a 100k buffer on both sides
    "network.hidden_sizes": (256, 256), "batch_size": 32, "train_every": 4, "learning_rate": 1e-4,
    "weight_decay": 0.0, "target_update_period": 10_000, "learning_starts": 1_000, "replay_capacity": 100_000,
    "td_loss": "huber",
}
PPO_SB3_SETTINGS = {  # SB3/sbx PPO defaults: 1 env x 2048 steps, minibatch 64, 10 epochs, 2x64 tanh, lr 3e-4
    "num_envs": 1, "rollout_steps": 2048, "num_minibatches": 32, "update_epochs": 10, "learning_rate": 3e-4,
    "ent_coef": 0.0,
}
SAC_SBX_SETTINGS = {"learning_starts": 1_000, "replay_capacity": 100_000}  # 2x256, batch 256: both sides' defaults
DQN_ATARI_SETTINGS = {"learning_starts": 1_000, "replay_capacity": 10_000}  # Dopamine's DQN, short warm-up, small buffer

CHILD_RESULT_PREFIX = "BENCH_CHILD "  # the line of sbx_peer's output that holds its figures, as JSON
RUN_NAME = "bench"


@dataclasses.dataclass(frozen=True)
class Workload:
    agent: str
    env_id: str
    overrides: dict
    steps: int
    quick_steps: int
    peer_algorithm: str  # the sbx class
    peer_kwargs: dict


WORKLOADS = {
    "dqn_cartpole": Workload("dqn", "CartPole-v1", DQN_SBX_SETTINGS, 20_000, 6_000, "DQN",
                             dict(learning_starts=1_000, buffer_size=100_000)),
    "ppo_cartpole": Workload("ppo", "CartPole-v1", PPO_SB3_SETTINGS, 50_000, 4 * 2048, "PPO", {}),
    "sac_halfcheetah": Workload("sac", "HalfCheetah-v5", SAC_SBX_SETTINGS, 4_000, 2_000, "SAC",
                                dict(learning_starts=1_000, buffer_size=100_000)),
    "dqn_pong": Workload("dqn", "ALE/Pong-v5", DQN_ATARI_SETTINGS, 3_000, 1_600, "DQN",
                         dict(policy="CnnPolicy", learning_starts=1_000, buffer_size=10_000, learning_rate=6.25e-5,
                              target_update_interval=2_000, optimize_memory_usage=False)),
}


def run_child(command: list[str], cache_dir: str | None = None) -> tuple[str, float, float]:
    """Runs `command` in a child process to its end; returns (its stdout, its start time (`time.time()`), its wall
    time in s). With `cache_dir`, the child's compilation cache is there."""
    environment = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")  # several processes may share a GPU
    if cache_dir is not None:
        environment[compilation_cache.ENV_VAR] = cache_dir
    started = time.time()
    process = subprocess.run(command, capture_output=True, text=True, env=environment)
    wall = time.time() - started
    if process.returncode != 0:
        raise RuntimeError(f"bench child {' '.join(command)} failed (exit {process.returncode}):\n{process.stderr[-3000:]}")
    return process.stdout, started, wall


def run_ours(workload: Workload, steps: int, workdir: str, cache_dir: str | None = None) -> tuple[str, float, float]:
    """`python -m sparserl.train` on the workload for `steps` env steps in a child process (one evaluation episode,
    at the end); returns (its run directory, its start time, its wall time in s)."""
    overrides = {**workload.overrides, **training.quiet_run(steps)}
    command = [sys.executable, "-m", *training.train_arguments(workload.agent, workload.env_id, overrides),
               f"--workdir={workdir}", f"--run_name={RUN_NAME}"]
    _, started, wall = run_child(command, cache_dir)
    return os.path.join(workdir, RUN_NAME), started, wall


def run_peer(workload_name: str, steps: int, exit_at_first_step: bool = False) -> dict:
    """sbx on the workload in a child process (`sbx_peer`): its `steady_rate` and `first_step_wall_time`, plus
    `startup_s` (process start to the first env step) and `wall_s`."""
    command = [sys.executable, "-m", "sparserl.experiments.bench.sbx_peer", workload_name, str(steps)]
    stdout, started, wall = run_child(command + (["--exit_at_first_step"] if exit_at_first_step else []))
    results = [line for line in stdout.splitlines() if line.startswith(CHILD_RESULT_PREFIX)]
    if not results:
        raise RuntimeError(f"bench child {' '.join(command)} printed no result")
    result = json.loads(results[-1][len(CHILD_RESULT_PREFIX):])
    return dict(result, startup_s=result["first_step_wall_time"] - started, wall_s=wall)
