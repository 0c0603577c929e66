"""`--sparsity=a,b,...`: a sweep of sparsity levels trained as one compiled program by the CLI. Each level's run
directory equals that level run alone (contract 1), the sweep resumes as one, and a directory in use is refused.
Bad lists: tests/test_bad_input.py."""

import concurrent.futures
import json
import os

import numpy as np
import pytest

from sparserl import run_lock, train
from tests.helpers import (assert_same_rows, final_checkpoint_leaves, kill_after_checkpoint, rows_without_sps,
                           run_train)

TINY_DQN = ("--agent=dqn", "--env=gymnax:CartPole-v1", "--num_seeds=2", "--steps=600", "--config.learning_starts=200",
            "--config.log_every=200", "--eval_every=200", "--checkpoint_every=200", "--config.eval_episodes=2",
            "--config.network.hidden_sizes=64,64", "--config.sparse.rigl.update_period=50")
LEVELS = ("0.5", "0.9")
RUN_NAMES = [f"dqn_gymnax-CartPole-v1_rigl_{level}" for level in LEVELS]


def resolve_levels(*arguments: str):
    return train.configs_from_arguments(["sparserl.train", *arguments])


def test_each_level_of_a_list_is_configured_as_that_level_alone(tmp_path):
    common = ("--env=gymnax:CartPole-v1", "--method=srigl", "--redo", "--config.network.hidden_sizes=32,32")
    levels = resolve_levels(*common, "--sparsity=0.5,0.8,0.95")
    assert [config.sparse.sparsity for config in levels] == [0.5, 0.8, 0.95]
    for level, config in zip(("0.5", "0.8", "0.95"), levels):
        assert config.to_dict() == train.config_from_arguments(["sparserl.train", *common, f"--sparsity={level}"]).to_dict()
        assert config.sparse.structure == "fan_in"  # what srigl trains, resolved per level as alone
    prepared = train.prepare(["sparserl.train", *common, "--sparsity=0.5,0.8,0.95", f"--workdir={tmp_path}"])
    assert prepared.run_dirs == tuple(str(tmp_path / f"dqn_gymnax-CartPole-v1_srigl_fan_in_{level}_redo")
                                      for level in ("0.5", "0.8", "0.95"))
    assert list(tmp_path.iterdir()) == []  # prepared, nothing written
    with pytest.raises(train.UsageError, match=r"^--sparsity: give one level here, not a list$"):
        train.config_from_arguments(["sparserl.train", *common, "--sparsity=0.5,0.8"])


def test_a_sweep_is_refused_with_one_line_when_a_level_directory_is_in_use(tmp_path, capsys):
    """The levels' directories are locked in sorted order; the first one, which locking created, is removed again."""
    prepared = train.prepare(["sparserl.train", *TINY_DQN, f"--sparsity={','.join(LEVELS)}", f"--workdir={tmp_path}"])
    holder = run_lock.RunLock(str(tmp_path / RUN_NAMES[1]))
    holder.acquire()
    try:
        with pytest.raises(SystemExit) as exited:
            train.main(prepared)
    finally:
        holder.release()
    assert exited.value.code == 2
    message = f"error: --sparsity: {tmp_path / RUN_NAMES[1]} is in use by pid {os.getpid()}"
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message) and lines[0].endswith("or leave that level out of the list")
    assert sorted(path.name for path in tmp_path.iterdir()) == [RUN_NAMES[1]]


@pytest.fixture(scope="module")
def sweep_and_levels_alone(tmp_path_factory):
    """The CLI sweep of levels 0.5 and 0.9 x seeds 0 and 1 in `sweep/`, and each level run alone in `alone/`, two
    processes at a time."""
    workdir = tmp_path_factory.mktemp("sweep")
    commands = [(*TINY_DQN, f"--sparsity={','.join(LEVELS)}", f"--workdir={workdir / 'sweep'}")]
    commands += [(*TINY_DQN, f"--sparsity={level}", f"--workdir={workdir / 'alone'}") for level in LEVELS]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        sweep, *alone = pool.map(lambda arguments: run_train(*arguments), commands)
    for result in (sweep, *alone):
        assert result.returncode == 0, result.stderr[-3000:]
    return workdir, sweep


def assert_same_runs(left_dir, right_dir):
    """Metrics (without `sps`), evaluations, config.json and the final checkpoint's arrays of seeds 0 and 1 equal."""
    for seed in ("seed0", "seed1"):
        left, right = left_dir / seed, right_dir / seed
        for filename in ("metrics.csv", "eval.csv"):
            assert_same_rows(rows_without_sps(left / filename), rows_without_sps(right / filename))
        assert json.loads((left / "config.json").read_text()) == json.loads((right / "config.json").read_text())
        left_leaves, right_leaves = final_checkpoint_leaves(left), final_checkpoint_leaves(right)
        assert left_leaves.keys() == right_leaves.keys() and len(left_leaves) > 10
        for name in left_leaves:
            np.testing.assert_array_equal(left_leaves[name], right_leaves[name], err_msg=f"{left} {name}")


@pytest.mark.slow
def test_a_cli_sweep_equals_each_level_run_alone(sweep_and_levels_alone):
    workdir, sweep = sweep_and_levels_alone
    assert sorted(os.listdir(workdir / "sweep")) == RUN_NAMES  # the names the levels get alone, no lock left
    assert "rigl unstructured erk sparsity=0.5,0.9 |" in sweep.stdout and "2 run dirs" in sweep.stdout
    for name in RUN_NAMES:
        assert_same_runs(workdir / "sweep" / name, workdir / "alone" / name)
    final = {level: rows_without_sps(workdir / "sweep" / name / "seed1" / "metrics.csv")[-1]
             for level, name in zip(LEVELS, RUN_NAMES)}
    for level, row in final.items():
        assert row["step"] == 600 and abs(row["sparsity/total"] - float(level)) <= 0.01


@pytest.mark.slow
def test_a_killed_sweep_resumes_every_level_exactly(sweep_and_levels_alone, tmp_path):
    """Killed once the last member (level 0.9, seed 1) wrote its step-200 checkpoint, the rerun resumes every level
    from their latest common checkpoint and ends as the uninterrupted sweep; a third run finds it finished."""
    workdir, _ = sweep_and_levels_alone
    arguments = (*TINY_DQN, f"--sparsity={','.join(LEVELS)}")
    kill_after_checkpoint(arguments, tmp_path, 200, run_name=None, seed_dir=os.path.join(RUN_NAMES[-1], "seed1"))
    resumed = run_train(*arguments, f"--workdir={tmp_path}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from the checkpoint of step" in resumed.stdout
    for name in RUN_NAMES:
        assert_same_runs(tmp_path / name, workdir / "sweep" / name)
    again = run_train(*arguments, f"--workdir={tmp_path}")
    assert again.returncode == 0 and "resuming from the checkpoint of step 600" in again.stdout, again.stderr[-3000:]
