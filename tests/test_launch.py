"""experiments.launch: finished runs are skipped, a failed run is reported by name and the others go on."""

import json
import re
import sys

import pytest

from sparserl.cli import UsageError
from sparserl.experiments import launch
from sparserl.experiments.study import SMOKE


def _seed_dir(run_dir, seed, steps, eval_steps):
    seed_dir = run_dir / f"seed{seed}"
    seed_dir.mkdir(parents=True)
    (seed_dir / "config.json").write_text(json.dumps({"steps": steps, "seed": seed}))
    (seed_dir / "eval.csv").write_text("step,seed,eval/episode_return\n" + "".join(
        f"{step},{seed},1.0\n" for step in eval_steps))


def test_a_run_is_finished_when_every_seed_evaluated_its_last_step(tmp_path):
    _seed_dir(tmp_path / "done", 0, 300, [100, 200, 300])
    _seed_dir(tmp_path / "done", 1, 300, [100, 200, 300])
    assert launch.is_finished(str(tmp_path / "done"), (0, 1))
    assert not launch.is_finished(str(tmp_path / "done"), (0, 1, 2))  # seed 2 never ran
    _seed_dir(tmp_path / "cut", 0, 300, [100, 200])  # stopped before its last evaluation
    assert not launch.is_finished(str(tmp_path / "cut"), (0,))
    _seed_dir(tmp_path / "fresh", 0, 300, [])
    assert not launch.is_finished(str(tmp_path / "fresh"), (0,))
    assert not launch.is_finished(str(tmp_path / "missing"), (0,))


def test_a_sweep_is_finished_when_every_level_is_and_names_no_run_directory(tmp_path):
    sweep = launch.RunSpec("rigl_0.5-0.9", ("--sparsity=0.5,0.9",), (0,), sweep=("rigl_0.5", "rigl_0.9"))
    run = launch.RunSpec("rigl_0.5", ("--sparsity=0.5",), (0,))
    assert (sweep.run_names, run.run_names) == (("rigl_0.5", "rigl_0.9"), ("rigl_0.5",))
    assert launch.train_command(sweep, "w", python="python")[3:] == ["--sparsity=0.5,0.9", "--workdir=w"]
    assert launch.train_command(run, "w", python="python")[3:] == ["--sparsity=0.5", "--workdir=w", "--run_name=rigl_0.5"]
    _seed_dir(tmp_path / "rigl_0.5", 0, 300, [100, 200, 300])
    assert launch.is_spec_finished(run, str(tmp_path)) and not launch.is_spec_finished(sweep, str(tmp_path))
    _seed_dir(tmp_path / "rigl_0.9", 0, 300, [100, 200, 300])
    assert launch.is_spec_finished(sweep, str(tmp_path))


def test_a_process_reports_its_exit_status_last_line_and_the_cpu_seconds_it_used(tmp_path):
    """Its CPU time is its own (user + system of the child, `os.wait4`), not the launcher's: a child that spins
    for 0.3 CPU-seconds reports about that much."""
    spin = "import time\nstart = time.process_time()\nwhile time.process_time() - start < 0.3: pass\nprint('spun')"
    returncode, last_line, cpu_seconds = launch._run_process([sys.executable, "-c", spin], str(tmp_path / "spin.log"), None)
    assert (returncode, last_line) == (0, "spun")
    assert 0.3 <= cpu_seconds < 2.0
    returncode, last_line, cpu_seconds = launch._run_process([sys.executable, "-c", "print('ended'); raise SystemExit(3)"],
                                                             str(tmp_path / "exit.log"), None)
    assert (returncode, last_line) == (3, "ended") and cpu_seconds < 0.3


@pytest.mark.slow
def test_a_failed_run_is_reported_by_name_and_the_next_one_still_runs(tmp_path, capsys):
    scale = SMOKE["dqn"]
    good = launch.RunSpec("good", ("--agent=dqn", "--env=CartPole-v1", "--steps=200", *scale.flags,
                                   "--config.learning_starts=100"), (0,))
    bad = launch.RunSpec("bad", ("--agent=dqn", "--env=NoSuchEnv-v0", "--steps=200"), (0,))
    outcomes = launch.launch([bad, good], str(tmp_path / "runs"), str(tmp_path / "logs"), max_parallel=1)
    assert [(o.name, o.status) for o in outcomes] == [("bad", "failed"), ("good", "done")]
    assert outcomes[0].detail.startswith("exit 2: error: --env:") and str(tmp_path / "logs" / "bad.log") in outcomes[0].detail
    printed = capsys.readouterr().out
    assert "FAILED: bad, exit 2" in printed
    assert re.search(r"^done: good \(\d+ s wall, \d+ CPU-s\)$", printed, re.MULTILINE)
    assert launch.is_finished(str(tmp_path / "runs" / "good"), (0,))
    # Launched again: the finished run is skipped, the failing one fails again.
    outcomes = launch.launch([bad, good], str(tmp_path / "runs"), str(tmp_path / "logs"), max_parallel=1)
    assert [(o.name, o.status) for o in outcomes] == [("bad", "failed"), ("good", "skipped")]


def test_the_ray_launcher_without_ray_is_bad_input(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` raise ImportError
    spec = launch.RunSpec("run", ("--agent=dqn",), (0,))
    with pytest.raises(UsageError, match=r"^--launcher=ray: ray is not installed; pip install sparserl\[cluster\]$"):
        launch.launch([spec], str(tmp_path / "runs"), str(tmp_path / "logs"), launcher="ray")
