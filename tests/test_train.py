"""The training entry point: how flags, presets and overrides make the config (in-process), and end to end the
run directory contract and seeds as a batch axis. Bad input: tests/test_bad_input.py."""

import dataclasses
import glob
import json
import math
import os

import pytest

from sparserl.configs import dqn as dqn_config
from sparserl import train
from sparserl.agent_contract import config_module
from sparserl.reporting import read_csv
from tests.helpers import PREFETCHED_RUNS, run_train, run_train_side_by_side

CONFIGS = config_module("dqn").__file__.rsplit("/", 1)[0]


def resolve(*arguments: str):
    return train.config_from_arguments(["sparserl.train", *arguments])


def test_the_env_family_chooses_the_preset_unless_one_is_named():
    minatar = dqn_config.get_config("minatar")
    minatar.sparse.method = "dense"  # no sparsity given
    minatar.redo.period = 1_000  # resolved: the remedy's own period (ReDo's), as config.json records it
    assert resolve("--env=MinAtar/Breakout-v1").to_dict() == minatar.to_dict()
    assert resolve(f"--config={CONFIGS}/dqn.py:minatar").to_dict() == minatar.to_dict()  # the preset's env
    assert resolve("--agent=dqn").to_dict() == resolve(f"--config={CONFIGS}/dqn.py").to_dict()
    gymnax = resolve("--env=gymnax:Breakout-MinAtar")  # a gymnax port takes its Gymnasium counterpart's preset
    assert gymnax.env == "gymnax:Breakout-MinAtar" and tuple(gymnax.network.conv_features) == (16,)
    pong = resolve(f"--config={CONFIGS}/dqn.py:atari", "--env=ALE/Breakout-v5")
    assert pong.env == "ALE/Breakout-v5" and pong.train_every == 4


def test_flags_then_overrides_win_over_the_preset():
    config = resolve("--env=ALE/Pong-v5", "--sparsity=0.5", "--steps=500", "--config.steps=700",
                     "--config.learning_rate=0.001", "--config.network.dense_sizes=256", "--config.redo.enabled")
    assert (config.steps, config.learning_rate, tuple(config.network.dense_sizes)) == (700, 0.001, (256,))
    assert (config.sparse.method, config.sparse.sparsity, config.redo.enabled) == ("rigl", 0.5, True)
    assert config.train_every == 4 and config.network.kind == "cnn"  # the atari preset
    assert resolve().sparse.method == "dense" and resolve("--config.sparse.sparsity=0.2").sparse.method == "rigl"
    assert resolve("--method=static", "--actor_sparsity=0.3", "--agent=sac").sparse.actor_sparsity == 0.3


OLD_CONFIG = """import ml_collections


def get_config():
    config = ml_collections.ConfigDict()
    config.agent = "dqn"
    config.learning_rate = 5e-4
    config.network = ml_collections.ConfigDict(dict(hidden_sizes=(32, 32)))
    return config
"""


def test_a_config_file_without_the_newer_fields_runs_on_the_defaults(tmp_path):
    """A file written before `gradient_steps` and `dormancy` existed: the agent's defaults fill them in."""
    path = tmp_path / "old_config.py"
    path.write_text(OLD_CONFIG)
    prepared = train.prepare(["sparserl.train", f"--config={path}", f"--workdir={tmp_path}"])
    (config,) = prepared.configs
    assert (config.learning_rate, tuple(config.network.hidden_sizes)) == (5e-4, (32, 32))
    assert (config.gradient_steps, config.dormancy.batch_size, config.network.kind, config.env) == (1, 256, "mlp", "CartPole-v1")


def test_dormant_fractions_are_measured_on_the_dormancy_batch_with_redo_off(tmp_path, monkeypatch):
    """`dormancy.batch_size` replay transitions, whatever `redo.batch_size` (issue 15: it took the ReDo batch)."""
    monkeypatch.setenv("SPARSERL_COMPILATION_CACHE", "0")
    prepared = train.prepare(["sparserl.train", "--steps=200", "--config.learning_starts=100", "--config.log_every=100",
                              "--eval_every=200", "--config.eval_episodes=1", "--config.network.hidden_sizes=8,8",
                              "--config.batch_size=4", "--config.redo.batch_size=16", "--config.dormancy.batch_size=8",
                              f"--workdir={tmp_path}", "--run_name=run"])
    measured = []

    def measure(state, batch):
        measured.append(batch.observation.shape[0])
        return prepared.agents[0].measure(state, batch)

    train._train(dataclasses.replace(prepared, agents=(prepared.agents[0]._replace(measure=measure),)))
    assert measured and set(measured) == {8}

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
                        "sparsity/dense_1", "sparsity/output", "recycle/neurons", "recycle/weights", "recycle/distance"}
    expected_columns |= {f"dormant/{tau}/{layer}" for tau in ("0", "0.025", "0.1") for layer in ("total", "dense_0", "dense_1")}
    expected_columns |= {f"grama/{tau}/{layer}" for tau in ("0", "0.025", "0.1") for layer in ("total", "dense_0", "dense_1")}
    expected_columns |= {"srank/dense_0", "srank/dense_1", "weight_magnitude/dense_0", "weight_magnitude/output"}
    expected_columns |= {f"multiply_adds/{layer}" for layer in ("total", "dense_0", "dense_1", "output")}
    assert expected_columns <= set(rows[-1])
    assert abs(rows[-1]["sparsity/total"] - 0.9) <= 0.005
    kernel_entries = 4 * 64 + 64 * 64 + 64 * 2  # CartPole's 4 observations, 64-64 hidden, 2 actions: MLP layers apply once
    assert rows[-1]["multiply_adds/total"] == pytest.approx((1 - rows[-1]["sparsity/total"]) * kernel_entries, abs=0.5)
    eval_rows = read_csv(seed_dir / "eval.csv")
    assert [row["step"] for row in eval_rows] == [400] and not math.isnan(eval_rows[0]["eval/episode_return"])
    assert glob.glob(str(seed_dir / "events.out.tfevents*"))
    assert "step 400/400" in result.stdout


def test_default_run_name_is_built_from_the_flags(tmp_path):
    result = run_train("--agent=dqn", "--sparsity=0.5", "--method=set", *TINY_DQN, f"--workdir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert os.listdir(tmp_path) == ["dqn_CartPole-v1_set_0.5"]


def test_num_seeds_equals_single_seed_runs(tmp_path):
    common = ("--agent=dqn", "--sparsity=0.9", "--redo", "--redo_period=100", *TINY_DQN, "--config.sparse.rigl.update_period=50")
    batched, single = run_train_side_by_side(
        {"batched": (*common, "--num_seeds=3", "--seed=4"), "single": (*common, "--seed=5")}, tmp_path).values()
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


# ALE's image pipeline reaches the CLI through PPO's Pong smoke run (tests/test_ppo.py), with the same Nature CNN;
# a DQN run on Pong spent 30 s of CI compiling it again.
IMAGE_ENVS = ("MinAtar/Breakout-v1",)


_IMAGE_SMOKE = ("--agent=dqn", "--sparsity=0.9", "--steps=300", "--config.learning_starts=100",
                "--config.replay_capacity=1000", "--config.log_every=100", "--eval_every=300", "--config.eval_episodes=1")
PREFETCHED_RUNS.register(__name__, "image_env_runs",
                         {env_id.replace("/", "_"): (*_IMAGE_SMOKE, f"--env={env_id}") for env_id in IMAGE_ENVS})


@pytest.fixture(scope="module")
def image_env_runs():
    """(workdir, results) of a short 90% DQN run on each of IMAGE_ENVS (prefetched from the session's start:
    `PrefetchedRuns`); run directory: the env id with '/' as '_'."""
    return PREFETCHED_RUNS.results(__name__, "image_env_runs")


@pytest.mark.parametrize("env_id", IMAGE_ENVS)
def test_image_env_smoke_run(image_env_runs, env_id):
    workdir, results = image_env_runs
    result = results[env_id.replace("/", "_")]
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_csv(workdir / env_id.replace("/", "_") / "seed0" / "metrics.csv")
    assert rows[-1]["step"] == 300 and abs(rows[-1]["sparsity/total"] - 0.9) <= 0.005
    assert "dormant/0.1/conv_0" in rows[-1]
