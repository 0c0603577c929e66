"""Shared test helpers: run the training entry point as a user would."""

import concurrent.futures
import os
import subprocess
import sys
import warnings



def cli_environment() -> dict[str, str]:
    """The environment of a CLI run in the tests: CPU and unbuffered output.

    No shared persistent compilation cache: the tests SIGKILL runs, and a run killed while it holds the
    cache's lock could leave the next run waiting on it.
    """
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")


def run_train(*args: str, cwd=None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Runs `python -m sparserl.train ARGS` in a subprocess and returns it (stdout/stderr captured as text).

    A run that outlives `timeout` is killed and started once more: jaxlib 0.10's CPU runtime can deadlock
    (an idle process waiting on a buffer forever, seen in PPO runs); the retry is reported as a warning.
    """
    for attempt in range(2):
        try:
            return subprocess.run([sys.executable, "-m", "sparserl.train", *args], capture_output=True, text=True,
                                  cwd=cwd, env=cli_environment(), timeout=timeout)
        except subprocess.TimeoutExpired:
            if attempt:
                raise
            warnings.warn(f"sparserl.train {' '.join(args)} hung for {timeout} s; killed and started again")


def run_train_side_by_side(runs: dict[str, tuple[str, ...]], workdir) -> dict[str, subprocess.CompletedProcess]:
    """Runs several CLI trainings at once (one per core on CI's 2 cores), each as `--run_name=<name>` in workdir."""
    with concurrent.futures.ThreadPoolExecutor(len(runs)) as pool:
        futures = {name: pool.submit(run_train, *arguments, f"--workdir={workdir}", f"--run_name={name}")
                   for name, arguments in runs.items()}
        return {name: future.result() for name, future in futures.items()}
