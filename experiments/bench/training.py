"""Training runs for the rows, built as `python -m sparserl.train` builds them: its config resolution
(`train.configs_from_arguments`, which validates) and its run preparation and loop (`train.prepare_run`,
`train.main`)."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import sys
import tempfile
from typing import Any, Iterator

import ml_collections

from sparserl import preemption, train
from sparserl.experiments.bench import timing


def override_flags(overrides: dict[str, Any]) -> list[str]:
    """`--config.<field>=<value>` flags for `sparserl.train`."""
    def text(value):
        if isinstance(value, (tuple, list)):
            return ",".join(str(item) for item in value)
        return str(value).lower() if isinstance(value, bool) else str(value)

    return [f"--config.{field}={text(value)}" for field, value in overrides.items()]


def train_arguments(agent: str, env_id: str, overrides: dict[str, Any]) -> list[str]:
    """The argv of `python -m sparserl.train --agent=AGENT --env=ENV_ID --config.<field>=<value>...`."""
    return ["sparserl.train", f"--agent={agent}", f"--env={env_id}", *override_flags(overrides)]


def train_config(agent: str, env_id: str, overrides: dict[str, Any]) -> ml_collections.ConfigDict:
    """The validated config those arguments train with (`train_arguments`; raises `train.UsageError`)."""
    (config,) = train.configs_from_arguments(train_arguments(agent, env_id, overrides))
    return config


def prepare(agent: str, env_id: str, overrides: dict[str, Any], workdir: str) -> train.Prepared:
    """The checked run of those arguments under `workdir` (`train.prepare_run`), nothing written yet."""
    return train.prepare_run([train_config(agent, env_id, overrides)], workdir, None)


def quiet_run(steps: int, rows: int = 10) -> dict[str, Any]:
    """Overrides for a run of `steps` env steps per seed in about `rows` metrics rows, evaluated and checkpointed
    at its end only (one evaluation episode)."""
    return {"steps": steps, "log_every": max(1, steps // rows), "eval_every": 10**9, "eval_episodes": 1,
            "checkpoint_every": 10**9}


@contextlib.contextmanager
def stdout_dropped() -> Iterator[None]:
    """Drops what is written to standard output inside, `sys.stdout` and file descriptor 1 alike (the run's progress
    lines go to the `sys.stdout` of when `sparserl.reporting` was imported)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        sys.__stdout__.flush()
        os.dup2(saved, 1)
        os.close(saved)


def train_quietly(prepared: train.Prepared) -> None:
    """Trains `prepared` in this process (`train.main`) with its console output dropped; the SIGTERM and SIGINT
    handlers a run installs (`sparserl.preemption`) are put back afterwards."""
    handlers = {number: signal.getsignal(number) for number in preemption.STOP_SIGNALS}
    try:
        with stdout_dropped():
            train.main(prepared)
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)


def steady_rate_in_process(agent: str, env_id: str, overrides: dict[str, Any], from_fraction: float) -> float:
    """Trains those arguments in this process in a throw-away workdir; returns their `timing.steady_rate`."""
    with tempfile.TemporaryDirectory() as workdir:
        prepared = prepare(agent, env_id, overrides, workdir)
        train_quietly(prepared)
        return timing.steady_rate(prepared.run_dirs[0], from_fraction)
