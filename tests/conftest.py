"""Shared test helpers: run the training entry point as a user would, and fail loudly on a hang."""

import concurrent.futures
import faulthandler
import os
import signal
import subprocess
import sys

import pytest

# A test that runs longer than this is taken for a hang: the stacks of every thread are written to stderr and the
# test session exits with status 1 (never a silent retry, never a CI run stuck until its own time limit).
TEST_TIMEOUT_SECONDS = 900


@pytest.fixture(autouse=True)
def fail_loudly_on_a_hang():
    faulthandler.dump_traceback_later(TEST_TIMEOUT_SECONDS, exit=True, file=sys.__stderr__)
    yield
    faulthandler.cancel_dump_traceback_later()


def cli_environment() -> dict[str, str]:
    """The environment of a CLI run in the tests: CPU, unbuffered output, and Python's fault handler on (so a
    run stopped with SIGABRT prints the stacks of all its threads).

    No persistent compilation cache (`SPARSERL_COMPILATION_CACHE=0`): each run compiles its own programs, so
    no test depends on what an earlier run left in a shared cache.
    """
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", PYTHONFAULTHANDLER="1",
                SPARSERL_COMPILATION_CACHE="0")


def run_train(*args: str, cwd=None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Runs `python -m sparserl.train ARGS` in a subprocess and returns it (stdout/stderr captured as text).

    A run that outlives `timeout` is a hang: it is stopped with SIGABRT, so that its fault handler prints where
    every thread stood, and the test fails with that output.
    """
    command = [sys.executable, "-m", "sparserl.train", *args]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
                          env=cli_environment()) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGABRT)
            stdout, stderr = process.communicate()
            pytest.fail(f"sparserl.train {' '.join(args)} hung for {timeout:.0f} s; its stacks:\n{stderr[-6000:]}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def run_train_side_by_side(runs: dict[str, tuple[str, ...]], workdir) -> dict[str, subprocess.CompletedProcess]:
    """Runs several CLI trainings at once (one per core on CI's 2 cores), each as `--run_name=<name>` in workdir."""
    with concurrent.futures.ThreadPoolExecutor(len(runs)) as pool:
        futures = {name: pool.submit(run_train, *arguments, f"--workdir={workdir}", f"--run_name={name}")
                   for name, arguments in runs.items()}
        return {name: future.result() for name, future in futures.items()}
