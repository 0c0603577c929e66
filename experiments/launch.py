"""Run a sweep of `python -m sparserl.train` commands: as local processes, or as Ray tasks on a cluster.

Both launchers take the same list of `RunSpec`s, one per process: a run (one
run directory, seeds vmapped inside it) or a sweep of sparsity levels
(`--sparsity=0.5,0.9`: one compiled program, a run directory per level), and
give the same outcomes:

- a process whose run directories all hold every seed finished (the last
  evaluation is at the config's last step) is skipped, so launching again
  resumes what is left: an interrupted run resumes from its checkpoint, an
  interrupted sweep every level from their latest common checkpoint (a sweep
  with one level unfinished runs again as a whole);
- a failed process is reported by name, exit status and last log line, and
  the others go on.

Local: at most `max_parallel` processes at once (default: the cores this
process may use). Ray (`pip install sparserl[cluster]`): one task per process,
`ray_address` joins a running cluster (the run directories must then be on a
file system every node shares), else a local instance starts; each task asks
for one CPU and, where the cluster has GPUs, `gpus_per_run` of a GPU. Each
process logs to `{logdir}/{name}.log`; a finished one is reported with its wall
and CPU seconds (what a study's cost estimate is measured in).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import subprocess
import sys
import time

from sparserl.cli import UsageError
from sparserl.reporting import read_csv

LAUNCHERS = ("local", "ray")

@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One `sparserl.train` process: its flags (without --workdir and --run_name), its seeds and its name.

    A run writes the run directory `name` (`--run_name={name}`). A sweep (a `--sparsity` list in `args`) writes
    `sweep`, a run directory per level under the name sparserl.train gives it; `name` names its log and outcome.
    """

    name: str
    args: tuple[str, ...]
    seeds: tuple[int, ...]
    sweep: tuple[str, ...] = ()

    @property
    def run_names(self) -> tuple[str, ...]:
        """The run directories the process writes, under the workdir."""
        return self.sweep or (self.name,)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What became of one process."""

    name: str
    status: str  # 'skipped' (already finished), 'done' or 'failed'
    detail: str = ""


def train_command(spec: RunSpec, workdir: str, python: str = sys.executable) -> list[str]:
    """The command line of a spec's `sparserl.train` process, writing under `workdir`."""
    naming = [] if spec.sweep else [f"--run_name={spec.name}"]
    return [python, "-m", "sparserl.train", *spec.args, f"--workdir={workdir}", *naming]


def is_spec_finished(spec: RunSpec, workdir: str) -> bool:
    """Every run directory of the process `is_finished`."""
    return all(is_finished(os.path.join(workdir, name), spec.seeds) for name in spec.run_names)


def is_finished(run_dir: str, seeds) -> bool:
    """Every seed has a config.json and an eval.csv whose last evaluation is at (or past) the config's steps."""
    for seed in seeds:
        seed_dir = os.path.join(run_dir, f"seed{seed}")
        config_path, eval_path = os.path.join(seed_dir, "config.json"), os.path.join(seed_dir, "eval.csv")
        if not (os.path.isfile(config_path) and os.path.isfile(eval_path)):
            return False
        with open(config_path) as file:
            steps = json.load(file)["steps"]
        evals = read_csv(eval_path)
        if not evals or evals[-1]["step"] < steps:
            return False
    return True


def _run_process(command: list[str], log_path: str, environment: dict[str, str] | None) -> tuple[int, str, float]:
    """Runs one training process, its output into `log_path`; (exit status, last non-empty log line, the CPU
    seconds it and its threads used: user + system, from `os.wait4`)."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "w") as log, subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                                      env=environment) as process:
        try:
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:  # interrupted (a pre-empted launcher): the process goes with it, as subprocess.run does
            process.kill()
            raise
        process.returncode = os.waitstatus_to_exitcode(status)
    with open(log_path) as log:
        lines = [line.strip() for line in log if line.strip()]
    return process.returncode, lines[-1] if lines else "", usage.ru_utime + usage.ru_stime


def _process_environment() -> dict[str, str]:
    # Several JAX processes share the machine's accelerators: none may grab most of a GPU's memory up front.
    return {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}


def _outcome(spec: RunSpec, returncode: int, last_line: str, log_path: str, seconds: float,
             cpu_seconds: float | None) -> Outcome:
    if returncode == 0:
        cpu = "" if cpu_seconds is None else f", {cpu_seconds:.0f} CPU-s"
        print(f"done: {spec.name} ({seconds:.0f} s wall{cpu})", flush=True)
        return Outcome(spec.name, "done")
    detail = f"exit {returncode}: {last_line} (log: {log_path})"
    print(f"FAILED: {spec.name}, {detail}", flush=True)
    return Outcome(spec.name, "failed", detail)


def launch(specs: list[RunSpec], workdir: str, logdir: str, launcher: str = "local", max_parallel: int | None = None,
           ray_address: str | None = None, gpus_per_run: float = 0.25) -> list[Outcome]:
    """Runs every spec with an unfinished run directory; returns one Outcome per spec, in order."""
    workdir, logdir = os.path.abspath(workdir), os.path.abspath(logdir)
    outcomes = {spec.name: Outcome(spec.name, "skipped") for spec in specs if is_spec_finished(spec, workdir)}
    pending = [spec for spec in specs if spec.name not in outcomes]
    print(f"{len(specs)} processes ({sum(len(spec.run_names) for spec in specs)} run directories): "
          f"{len(outcomes)} already finished, {len(pending)} to run ({launcher})", flush=True)
    if pending:
        run = _launch_ray if launcher == "ray" else _launch_local
        outcomes.update(run(pending, workdir, logdir, max_parallel or len(os.sched_getaffinity(0)),
                            ray_address=ray_address, gpus_per_run=gpus_per_run))
    return [outcomes[spec.name] for spec in specs]


def _launch_local(specs, workdir, logdir, max_parallel, **_) -> dict[str, Outcome]:
    def run(spec):
        started = time.perf_counter()
        log_path = os.path.join(logdir, f"{spec.name}.log")
        returncode, last_line, cpu_seconds = _run_process(train_command(spec, workdir), log_path, _process_environment())
        return _outcome(spec, returncode, last_line, log_path, time.perf_counter() - started, cpu_seconds)

    with concurrent.futures.ThreadPoolExecutor(max_parallel) as pool:
        return {outcome.name: outcome for outcome in pool.map(run, specs)}


def _ray_task(spec: RunSpec, workdir: str, log_path: str) -> tuple[int, str, float]:
    """One process on a Ray worker, with that worker's Python."""
    return _run_process(train_command(spec, workdir), log_path, _process_environment())


def _launch_ray(specs, workdir, logdir, max_parallel, ray_address=None, gpus_per_run=0.25) -> dict[str, Outcome]:
    try:
        import ray
    except ImportError:
        raise UsageError("--launcher=ray: ray is not installed; pip install sparserl[cluster]") from None
    if ray_address:
        ray.init(address=ray_address, log_to_driver=False)
    else:
        # Workers of a local instance see this process's PYTHONPATH (a source checkout works without installing).
        env_vars = {name: os.environ[name] for name in ("PYTHONPATH", "JAX_PLATFORMS") if name in os.environ}
        ray.init(num_cpus=max_parallel, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": env_vars} if env_vars else None)
    try:
        gpus = ray.cluster_resources().get("GPU", 0)
        task = ray.remote(num_cpus=1, num_gpus=gpus_per_run if gpus else 0, max_retries=0)(_ray_task)
        started = time.perf_counter()
        references = {}
        for spec in specs:
            log_path = os.path.join(logdir, f"{spec.name}.log")
            references[task.remote(spec, workdir, log_path)] = (spec, log_path)
        outcomes = {}
        waiting = list(references)
        while waiting:
            ready, waiting = ray.wait(waiting, num_returns=1)
            spec, log_path = references[ready[0]]
            try:
                returncode, last_line, cpu_seconds = ray.get(ready[0])
            except Exception as error:  # the task itself died (a lost node, a killed worker): that run failed
                returncode, last_line, cpu_seconds = -1, f"{type(error).__name__}: {error}".splitlines()[0], None
            outcomes[spec.name] = _outcome(spec, returncode, last_line, log_path, time.perf_counter() - started,
                                           cpu_seconds)
        return outcomes
    finally:
        ray.shutdown()
