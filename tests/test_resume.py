"""Nothing lost: a killed run resumes from its last checkpoint and ends as if never interrupted."""

import math
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from sparserl import checkpoint
from sparserl.logging import read_csv
from tests.conftest import cli_environment, run_train

DQN = ("--agent=dqn", "--sparsity=0.9", "--redo", "--redo_period=100", "--steps=1000", "--config.learning_starts=100",
       "--config.log_every=100", "--eval_every=250", "--config.eval_episodes=2", "--config.checkpoint_every=200",
       "--config.network.hidden_sizes=64,64", "--config.sparse.rigl.update_period=50")
PPO = ("--agent=ppo", "--sparsity=0.9", "--redo", "--redo_period=8", "--steps=4096", "--config.num_envs=2",
       "--config.rollout_steps=128", "--config.log_every=256", "--eval_every=1024", "--config.eval_episodes=2",
       "--config.checkpoint_every=512")


def _start(arguments, workdir):
    return subprocess.Popen([sys.executable, "-m", "sparserl.train", *arguments, f"--workdir={workdir}", "--run_name=run"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=cli_environment())


def _kill_after_checkpoint(arguments, workdir, step: int) -> None:
    process = _start(arguments, workdir)
    seed_dir = os.path.join(workdir, "run", "seed0")
    deadline = time.monotonic() + 600
    while step not in checkpoint.checkpoint_steps(seed_dir):
        assert process.poll() is None, "the run ended before it was killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()


def _rows_without_sps(path):
    rows = read_csv(path)
    for row in rows:
        row.pop("sps", None)
    return rows


def _assert_same_rows(left, right):
    assert [row["step"] for row in left] == [row["step"] for row in right]
    for left_row, right_row in zip(left, right):
        assert left_row.keys() == right_row.keys()
        for name in left_row:
            same = left_row[name] == right_row[name] or (math.isnan(left_row[name]) and math.isnan(right_row[name]))
            assert same, (left_row["step"], name, left_row[name], right_row[name])


@pytest.mark.slow
@pytest.mark.parametrize("arguments, kill_at", [(DQN, 400), (PPO, 1024)], ids=["dqn", "ppo"])
def test_killed_run_resumes_and_matches_an_uninterrupted_run(tmp_path, arguments, kill_at):
    whole = run_train(*arguments, f"--workdir={tmp_path / 'whole'}", "--run_name=run")
    assert whole.returncode == 0, whole.stderr[-3000:]

    _kill_after_checkpoint(arguments, tmp_path / "killed", kill_at)
    resumed = run_train(*arguments, f"--workdir={tmp_path / 'killed'}", "--run_name=run")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from the checkpoint of step" in resumed.stdout

    for filename in ("metrics.csv", "eval.csv"):
        whole_rows = _rows_without_sps(tmp_path / "whole" / "run" / "seed0" / filename)
        resumed_rows = _rows_without_sps(tmp_path / "killed" / "run" / "seed0" / filename)
        steps = [row["step"] for row in resumed_rows]
        assert len(steps) == len(set(steps)), "a step was written twice"
        _assert_same_rows(whole_rows, resumed_rows)


def test_a_finished_run_rerun_does_nothing_more(tmp_path):
    arguments = (*DQN[:4], "--steps=200", *DQN[5:9], "--config.checkpoint_every=100", f"--workdir={tmp_path}",
                 "--run_name=run")
    first = run_train(*arguments)
    assert first.returncode == 0, first.stderr[-3000:]
    rows = read_csv(tmp_path / "run" / "seed0" / "metrics.csv")
    second = run_train(*arguments)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming from the checkpoint of step 200" in second.stdout
    assert [row["step"] for row in read_csv(tmp_path / "run" / "seed0" / "metrics.csv")] == [row["step"] for row in rows]


def test_a_kill_during_a_checkpoint_write_leaves_a_resumable_run(tmp_path):
    arguments = (*DQN[:4], "--steps=400", *DQN[5:])
    _kill_after_checkpoint(arguments, tmp_path, 200)
    seed_dir = tmp_path / "run" / "seed0"
    # What a kill in the middle of writing the next checkpoint leaves behind: a partial temporary directory.
    partial = seed_dir / "checkpoints" / ".tmp-400"
    if not partial.exists():
        shutil.copytree(seed_dir / "checkpoints" / "200", partial)
    (partial / "loop.pkl").write_bytes(b"\x80\x04truncated")
    assert checkpoint.checkpoint_steps(str(seed_dir)) == [200]

    resumed = run_train(*arguments, f"--workdir={tmp_path}", "--run_name=run")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from the checkpoint of step 200" in resumed.stdout
    assert checkpoint.checkpoint_steps(str(seed_dir)) == [200, 400]
    assert not partial.exists()
    assert [row["step"] for row in read_csv(seed_dir / "metrics.csv")] == [100, 200, 300, 400]


def test_a_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    result = run_train("--agent=dqn", "--steps=1000", "--config.learning_starts=100", "--config.log_every=100",
                       "--eval_every=1000", "--config.checkpoint_every=100", "--config.network.hidden_sizes=16,16",
                       "--config.learning_rate=1e30", f"--workdir={tmp_path}", "--run_name=run")
    assert result.returncode == 1
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("error: training diverged at step 200: loss/td is"), message
    assert "the last good checkpoint is step 100" in message
    assert checkpoint.checkpoint_steps(str(tmp_path / "run" / "seed0")) == [100]
