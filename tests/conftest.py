"""Shared test helpers: run the training entry point as a user would."""

import os
import subprocess
import sys

import pytest


def run_train(*args: str, cwd=None, timeout: float = 900) -> subprocess.CompletedProcess:
    """Runs `python -m sparserl.train ARGS` in a subprocess and returns it (stdout/stderr captured as text)."""
    environment = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, "-m", "sparserl.train", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=environment,
        timeout=timeout,
    )


@pytest.fixture
def train_cli():
    return run_train
