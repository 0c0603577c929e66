"""Nothing lost: a killed run resumes from its last checkpoint and ends as if never interrupted."""

import os
import shutil
import signal

import pytest

from sparserl import checkpoint
from sparserl.reporting import read_csv
from tests.helpers import (PREFETCHED_RUNS, assert_same_rows, kill_after_checkpoint, rows_without_sps, run_train,
                           start_train, wait_for_checkpoint)

DQN = ("--agent=dqn", "--sparsity=0.9", "--redo", "--redo_period=100", "--steps=1000", "--config.learning_starts=100",
       "--config.log_every=100", "--eval_every=250", "--config.eval_episodes=2", "--config.checkpoint_every=200",
       "--config.network.hidden_sizes=64,64", "--config.sparse.rigl.update_period=50")
PPO = ("--agent=ppo", "--sparsity=0.9", "--redo", "--redo_period=8", "--steps=4096", "--config.num_envs=2",
       "--config.rollout_steps=128", "--config.log_every=256", "--eval_every=1024", "--config.eval_episodes=2",
       "--config.checkpoint_every=512")


UNINTERRUPTED = {"dqn": DQN, "ppo": PPO}
PREFETCHED_RUNS.register(__name__, "uninterrupted", UNINTERRUPTED)


@pytest.fixture(scope="module")
def uninterrupted():
    """Each configuration run once, uninterrupted (prefetched from the session's start: `PrefetchedRuns`): the
    reference of every resume test here. `uninterrupted(arguments)` is that configuration's run directory."""
    workdir, results = PREFETCHED_RUNS.results(__name__, "uninterrupted")
    for result in results.values():
        assert result.returncode == 0, result.stderr[-3000:]
    names = {arguments: name for name, arguments in UNINTERRUPTED.items()}
    return lambda arguments: workdir / names[arguments]


def _assert_resumed_equals_uninterrupted(whole_run, resumed_workdir):
    for filename in ("metrics.csv", "eval.csv"):
        whole_rows = rows_without_sps(whole_run / "seed0" / filename)
        resumed_rows = rows_without_sps(resumed_workdir / "run" / "seed0" / filename)
        steps = [row["step"] for row in resumed_rows]
        assert len(steps) == len(set(steps)), "a step was written twice"
        assert_same_rows(whole_rows, resumed_rows)


@pytest.mark.slow
@pytest.mark.parametrize("arguments, kill_at", [(DQN, 400), (PPO, 1024)], ids=["dqn", "ppo"])
def test_killed_run_resumes_and_matches_an_uninterrupted_run(tmp_path, uninterrupted, arguments, kill_at):
    kill_after_checkpoint(arguments, tmp_path, kill_at)
    resumed = run_train(*arguments, f"--workdir={tmp_path}", "--run_name=run")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from the checkpoint of step" in resumed.stdout
    _assert_resumed_equals_uninterrupted(uninterrupted(arguments), tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("arguments, after_checkpoint, stop_signal, status",
                         [(DQN, 200, signal.SIGTERM, 143), (PPO, 512, signal.SIGINT, 130)], ids=["dqn-sigterm", "ppo-sigint"])
def test_a_signal_checkpoints_the_current_step_and_the_rerun_matches(tmp_path, uninterrupted, arguments,
                                                                       after_checkpoint, stop_signal, status):
    process = start_train(arguments, tmp_path)
    wait_for_checkpoint(process, tmp_path, after_checkpoint)
    process.send_signal(stop_signal)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == status, stderr[-3000:]
    stopped_at = int(stdout.strip().splitlines()[-1].removeprefix("stopped at step ").split(";")[0].replace(",", ""))
    assert stdout.strip().endswith(f"stopped at step {stopped_at:,}; rerun the same command to resume")
    assert stopped_at in checkpoint.checkpoint_steps(str(tmp_path / "run" / "seed0"))
    assert not (tmp_path / "run" / "lock").exists()

    resumed = run_train(*arguments, f"--workdir={tmp_path}", "--run_name=run")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from the checkpoint of step {stopped_at:,}" in resumed.stdout
    _assert_resumed_equals_uninterrupted(uninterrupted(arguments), tmp_path)


def test_a_second_process_on_a_running_run_is_refused_and_a_dead_holder_is_taken_over(tmp_path):
    arguments = (*DQN[:4], "--steps=1000000", *DQN[5:9], "--checkpoint_every=100")
    process = start_train(arguments, tmp_path)
    wait_for_checkpoint(process, tmp_path, 100)
    config_file, lock_file = tmp_path / "run" / "seed0" / "config.json", tmp_path / "run" / "lock"
    config_before, lock_before = config_file.stat(), lock_file.read_text()
    second = run_train(*arguments, f"--workdir={tmp_path}", "--run_name=run")
    assert second.returncode == 2
    holder = f"pid {process.pid} on host {os.uname().nodename}"
    assert second.stderr.strip() == (f"error: --run_name: {tmp_path / 'run'} is in use by {holder}; "
                                     "wait for it to finish or pass another --run_name")
    assert second.stdout == ""
    config_after = config_file.stat()
    assert (config_after.st_ino, config_after.st_mtime_ns) == (config_before.st_ino, config_before.st_mtime_ns)
    assert lock_file.read_text() == lock_before
    process.send_signal(signal.SIGKILL)
    process.communicate()

    third = start_train(arguments, tmp_path)
    first_line = third.stdout.readline()
    third.send_signal(signal.SIGKILL)
    third.communicate()
    assert first_line.strip() == f"note: took over the lock left by {holder}, which is no longer running"


def test_an_unreadable_latest_checkpoint_falls_back_to_the_one_before(tmp_path):
    arguments = (*DQN[:4], "--steps=400", *DQN[5:9], "--checkpoint_every=200", f"--workdir={tmp_path}", "--run_name=run")
    first = run_train(*arguments)
    assert first.returncode == 0, first.stderr[-3000:]
    seed_dir = tmp_path / "run" / "seed0"
    rows = read_csv(seed_dir / "metrics.csv")
    assert checkpoint.checkpoint_steps(str(seed_dir)) == [200, 400]
    (seed_dir / "checkpoints" / "400" / "checkpoint.npz").unlink()  # a missing file

    resumed = run_train(*arguments)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    warning = next(line for line in resumed.stdout.splitlines() if line.startswith("warning: checkpoint 400"))
    assert warning.startswith(f"warning: checkpoint 400 in {tmp_path / 'run'} is unreadable (")
    assert warning.endswith("); trying the one before")
    assert "resuming from the checkpoint of step 200" in resumed.stdout
    assert_same_rows(rows_without_sps(seed_dir / "metrics.csv"), [{k: v for k, v in row.items() if k != "sps"} for row in rows])

    for step in (200, 400):  # every checkpoint file truncated: nothing to resume from
        checkpoint_file = seed_dir / "checkpoints" / str(step) / "checkpoint.npz"
        checkpoint_file.write_bytes(checkpoint_file.read_bytes()[:10])
    broken = run_train(*arguments)
    assert broken.returncode == 1
    assert broken.stderr.strip().splitlines()[-1] == (
        f"error: no readable checkpoint in {tmp_path / 'run'} (tried steps 400, 200); delete it or pass another --run_name")


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
    kill_after_checkpoint(arguments, tmp_path, 200)
    seed_dir = tmp_path / "run" / "seed0"
    # What a kill in the middle of writing the next checkpoint leaves behind: a partial temporary directory.
    partial = seed_dir / "checkpoints" / "400.tmp-1"
    shutil.copytree(seed_dir / "checkpoints" / "200", partial)
    checkpoint_file = partial / "checkpoint.npz"
    checkpoint_file.write_bytes(checkpoint_file.read_bytes()[:100])
    assert checkpoint.checkpoint_steps(str(seed_dir)) == [200]

    resumed = run_train(*arguments, f"--workdir={tmp_path}", "--run_name=run")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from the checkpoint of step 200" in resumed.stdout
    assert checkpoint.checkpoint_steps(str(seed_dir)) == [200, 400]
    assert not partial.exists()
    # Rows end where the run logs (every 100), evaluates (every 250) or checkpoints (every 200): loop.Schedule.
    assert [row["step"] for row in read_csv(seed_dir / "metrics.csv")] == [100, 200, 250, 300, 400]


def test_a_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    result = run_train("--agent=dqn", "--steps=1000", "--config.learning_starts=100", "--config.log_every=100",
                       "--eval_every=1000", "--config.checkpoint_every=100", "--config.network.hidden_sizes=16,16",
                       "--config.learning_rate=1e30", f"--workdir={tmp_path}", "--run_name=run")
    assert result.returncode == 1
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("error: training diverged at step 200: loss/td is"), message
    assert "the last good checkpoint is step 100" in message
    assert checkpoint.checkpoint_steps(str(tmp_path / "run" / "seed0")) == [100]
