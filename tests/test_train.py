"""The training entry point end to end: run directory contract, bad input, seeds as a batch axis."""

import glob
import json
import math
import os

import pytest

from sparserl.logging import read_csv
from tests.helpers import run_train

TINY_DQN = ("--steps=400", "--config.learning_starts=100", "--config.log_every=100", "--eval_every=400",
            "--config.eval_episodes=2", "--config.network.hidden_sizes=64,64")


def test_tiny_run_writes_the_run_directory_contract(tmp_path):
    result = run_train("--agent=dqn", "--sparsity=0.9", "--redo", "--redo_period=50", *TINY_DQN,
                       f"--workdir={tmp_path}", "--run_name=tiny")
    assert result.returncode == 0, result.stderr[-3000:]
    seed_dir = tmp_path / "tiny" / "seed0"
    config = json.loads((seed_dir / "config.json").read_text())
    assert config["sparse"]["method"] == "rigl" and config["sparse"]["sparsity"] == 0.9 and config["seed"] == 0
    rows = read_csv(seed_dir / "metrics.csv")
    assert [row["step"] for row in rows] == [100, 200, 300, 400]
    expected_columns = {"step", "seed", "train/episode_return", "loss/td", "sps", "sparsity/total", "sparsity/dense_0",
                        "sparsity/dense_1", "sparsity/output", "redo/recycled"}
    expected_columns |= {f"dormant/{tau}/{layer}" for tau in ("0", "0.025", "0.1") for layer in ("total", "dense_0", "dense_1")}
    assert expected_columns <= set(rows[-1])
    assert abs(rows[-1]["sparsity/total"] - 0.9) <= 0.005
    eval_rows = read_csv(seed_dir / "eval.csv")
    assert [row["step"] for row in eval_rows] == [400] and not math.isnan(eval_rows[0]["eval/episode_return"])
    assert glob.glob(str(seed_dir / "events.out.tfevents*"))
    assert "step 400/400" in result.stdout


def test_default_run_name_is_built_from_the_flags(tmp_path):
    result = run_train("--agent=dqn", "--sparsity=0.5", "--method=set", *TINY_DQN, f"--workdir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert os.listdir(tmp_path) == ["dqn_CartPole-v1_set_0.5"]


def test_num_seeds_equals_single_seed_runs(tmp_path):
    common = ("--agent=dqn", "--sparsity=0.9", "--redo", "--redo_period=100", *TINY_DQN, "--config.sparse.rigl.update_period=50",
              f"--workdir={tmp_path}")
    batched = run_train(*common, "--num_seeds=3", "--seed=4", "--run_name=batched")
    single = run_train(*common, "--seed=5", "--run_name=single")
    assert batched.returncode == 0 and single.returncode == 0, batched.stderr[-2000:] + single.stderr[-2000:]
    for filename in ("metrics.csv", "eval.csv"):
        batched_rows = read_csv(tmp_path / "batched" / "seed5" / filename)
        single_rows = read_csv(tmp_path / "single" / "seed5" / filename)
        assert len(batched_rows) == len(single_rows) > 0
        for batched_row, single_row in zip(batched_rows, single_rows):
            batched_row.pop("sps", None)
            single_row.pop("sps", None)
            assert batched_row.keys() == single_row.keys()
            for name in batched_row:
                assert batched_row[name] == single_row[name] or (math.isnan(batched_row[name]) and math.isnan(single_row[name])), name
    assert sorted(os.listdir(tmp_path / "batched")) == ["seed4", "seed5", "seed6"]


@pytest.mark.parametrize("env_id", ["ALE/Pong-v5", "MinAtar/Breakout-v1"])
def test_image_env_smoke_run(tmp_path, env_id):
    result = run_train("--agent=dqn", f"--env={env_id}", "--sparsity=0.9", "--steps=300", "--config.learning_starts=100",
                       "--config.replay_capacity=1000", "--config.log_every=100", "--eval_every=300",
                       "--config.eval_episodes=1", f"--workdir={tmp_path}", "--run_name=smoke")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_csv(tmp_path / "smoke" / "seed0" / "metrics.csv")
    assert rows[-1]["step"] == 300 and abs(rows[-1]["sparsity/total"] - 0.9) <= 0.005
    assert "dormant/0.1/conv_0" in rows[-1]
