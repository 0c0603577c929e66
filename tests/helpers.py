"""Helpers shared by the tests: run the training entry point as a user would, compare CSVs, set config fields."""

import concurrent.futures
import math
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import ml_collections
import numpy as np
import pytest

from sparserl import checkpoint
from sparserl.reporting import read_csv


# The test process compiles its programs with LLVM at -O0, as a C++ project tests its debug build
# (`conftest.pytest_configure`): the suite's own tests are compile-bound (each builds a few small programs and runs
# them a few steps), and -O0 compiles them about 30% faster. XLA's HLO passes (fusion, layouts) run as always and the
# math is the same; results may differ from an optimised build's in float rounding. The CLI runs the tests start
# compile as users' do (`cli_environment`): their learning runs are bound by running, not compiling.
UNOPTIMISED_CODEGEN = "--xla_backend_optimization_level=0"


def cli_environment() -> dict[str, str]:
    """The environment of a CLI run in the tests: CPU, unbuffered output, and Python's fault handler on (so a
    run stopped with SIGABRT prints the stacks of all its threads). The persistent compilation cache is the test
    session's own (`conftest.pytest_configure`), and a run compiles as a user's does, without the test process's
    `UNOPTIMISED_CODEGEN`."""
    xla_flags = os.environ.get("XLA_FLAGS", "").replace(UNOPTIMISED_CODEGEN, "").strip()
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", PYTHONFAULTHANDLER="1", XLA_FLAGS=xla_flags)


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
    """Runs several CLI trainings at once, each as `--run_name=<name>` in workdir."""
    with concurrent.futures.ThreadPoolExecutor(len(runs)) as pool:
        futures = {name: pool.submit(run_train, *arguments, f"--workdir={workdir}", f"--run_name={name}")
                   for name, arguments in runs.items()}
        return {name: future.result() for name, future in futures.items()}


class PrefetchedRuns:
    """The CLI runs of module fixtures, started before the tests that read them. A test module registers a
    fixture's runs at import (`register`); once pytest has collected the tests, one background thread runs the runs
    of every registered fixture that a collected test uses, one at a time, in the order the tests first use them
    (`start`, from `conftest`), while the test process runs the in-process tests beside it (CI's other core). The
    fixture's `results` runs, beside the background's, each of its runs that no one has started, and waits for the
    rest: the same runs and results, sooner."""

    def __init__(self):
        self._lock = threading.Lock()
        self._runs: dict[tuple[str, str], dict[str, tuple[str, ...]]] = {}
        self._futures: dict[tuple, concurrent.futures.Future] = {}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._root: str | None = None

    def register(self, module: str, fixture: str, runs: dict[str, tuple[str, ...]]) -> None:
        """`runs` ({run name: arguments}, the longest first) are what `fixture` of `module` reads."""
        self._runs[(module, fixture)] = runs

    def start(self, items) -> None:
        """Prefetches the registered runs that the collected `items` use, in the order they first use them."""
        order = []
        for item in items:
            module = getattr(getattr(item, "module", None), "__name__", None)
            order += [key for key in self._runs if key not in order and key[0] == module and key[1] in item.fixturenames]
        self._thread = threading.Thread(target=self._prefetch, args=(order,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Starts no more runs, waits for the one in flight, and removes every run's directory."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)

    def results(self, module: str, fixture: str) -> tuple[pathlib.Path, dict[str, subprocess.CompletedProcess]]:
        """(the workdir, {run name: its finished process}) of a registered fixture's runs."""
        key = (module, fixture)
        for name in self._runs[key]:
            self._run_unless_started(key, name)
        return self._workdir(key), {name: self._futures[(key, name)].result() for name in self._runs[key]}

    def _prefetch(self, order) -> None:
        for key in order:
            for name in self._runs[key]:
                if self._stopping.is_set():
                    return
                self._run_unless_started(key, name)

    def _run_unless_started(self, key, name) -> None:
        with self._lock:
            if (key, name) in self._futures:
                return
            future = self._futures[(key, name)] = concurrent.futures.Future()
        try:
            future.set_result(run_train(*self._runs[key][name], f"--workdir={self._workdir(key)}", f"--run_name={name}"))
        except BaseException as error:  # a hang's `pytest.fail` too: the fixture that reads the run raises it
            future.set_exception(error)

    def _workdir(self, key) -> pathlib.Path:
        with self._lock:
            if self._root is None:
                self._root = tempfile.mkdtemp(prefix="sparserl_test_prefetched_runs_")
        return pathlib.Path(self._root, ".".join(key))


PREFETCHED_RUNS = PrefetchedRuns()


def start_train(arguments, workdir, run_name: str | None = "run"):
    """`sparserl.train ARGUMENTS --workdir=WORKDIR --run_name=RUN_NAME` in the background; no --run_name when None
    (a sweep's levels take their own names)."""
    naming = [] if run_name is None else [f"--run_name={run_name}"]
    return subprocess.Popen([sys.executable, "-m", "sparserl.train", *arguments, f"--workdir={workdir}", *naming],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_environment())


def wait_for_checkpoint(process, workdir, step: int, seed_dir: str = os.path.join("run", "seed0")) -> None:
    """Waits until `{workdir}/{seed_dir}` holds the complete checkpoint of `step`."""
    deadline = time.monotonic() + 600
    while step not in checkpoint.checkpoint_steps(os.path.join(workdir, seed_dir)):
        assert process.poll() is None, "the run ended before it was stopped"
        assert time.monotonic() < deadline
        time.sleep(0.05)


def kill_after_checkpoint(arguments, workdir, step: int, run_name: str | None = "run",
                          seed_dir: str = os.path.join("run", "seed0")) -> None:
    """Starts a run (`start_train`) and kills it (SIGKILL) once `{workdir}/{seed_dir}` holds checkpoint `step`."""
    process = start_train(arguments, workdir, run_name)
    wait_for_checkpoint(process, workdir, step, seed_dir)
    process.send_signal(signal.SIGKILL)
    process.communicate()


def final_checkpoint_leaves(seed_dir) -> dict:
    """The arrays of a seed directory's newest checkpoint, by their '/'-joined paths."""
    newest = checkpoint.checkpoint_steps(seed_dir)[-1]
    return checkpoint.read_arrays(os.path.join(seed_dir, checkpoint.CHECKPOINTS, str(newest)))


def rows_without_sps(path):
    rows = read_csv(path)
    for row in rows:
        row.pop("sps", None)
    return rows


def assert_same_rows(left, right):
    assert [row["step"] for row in left] == [row["step"] for row in right]
    for left_row, right_row in zip(left, right):
        assert left_row.keys() == right_row.keys()
        for name in left_row:
            same = left_row[name] == right_row[name] or (math.isnan(left_row[name]) and math.isnan(right_row[name]))
            assert same, (left_row["step"], name, left_row[name], right_row[name])


def with_fields(config: ml_collections.ConfigDict, **fields) -> ml_collections.ConfigDict:
    """The config with dotted fields set, e.g. `with_fields(config, **{"sparse.sparsity": 0.9})`."""
    config.update_from_flattened_dict(fields)
    return config


def eval_returns(run_dir, seed: int = 0) -> list[float]:
    """The greedy eval returns of one seed of a run, in step order."""
    return [row["eval/episode_return"] for row in read_csv(os.path.join(run_dir, f"seed{seed}", "eval.csv"))]


def mean_of_last_evals(run_dir, seeds, last: int) -> float:
    """The learning tests' score: the mean over seeds of each seed's mean of its last `last` eval returns."""
    return sum(sum(eval_returns(run_dir, seed)[-last:]) / last for seed in seeds) / len(seeds)


def built_modules(monkeypatch, agent_module, config, env_spec) -> dict:
    """The flax modules `agent_module.make` builds its networks from, by network name."""
    from sparserl import sparse_network

    modules, make_network = {}, sparse_network.make_network

    def record(module, inner, sparsity, name="", **kwargs):
        modules[name] = module
        return make_network(module, inner, sparsity, name, **kwargs)

    monkeypatch.setattr(sparse_network, "make_network", record)
    agent_module.make(config, env_spec)
    return modules


def hidden_outputs(module, *inputs) -> list[np.ndarray]:
    """The post-activation outputs of every hidden layer of a freshly initialised module."""
    import jax

    from sparserl.networks import ACTIVATIONS

    params = module.init(jax.random.key(0), *inputs)
    _, captured = module.apply(params, *inputs, mutable=[ACTIVATIONS])
    return [np.asarray(leaf) for leaf in jax.tree.leaves(captured)]


def assert_study_refuses(module, arguments, out, capsys, message: str) -> None:
    """`module.main(["--scale=smoke", *arguments, --out=out])` (a study) exits 2 with one line on stderr, an
    `error: ` holding `message`, and writes nothing under `out`."""
    try:
        status = module.main(["--scale=smoke", *arguments, f"--out={out}"])
    except SystemExit as exit_:
        status = exit_.code
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not out.exists()
