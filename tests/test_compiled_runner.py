"""The compiled loop on gymnax envs: seeds and sparsity levels as batch axes, learning, resume (mostly via the CLI)."""

import concurrent.futures
import math
import shutil

import numpy as np
import pytest

from sparserl.configs import dqn as dqn_config
from sparserl.agents import dqn
from sparserl import checkpoint, compiled_runner, envs, loop
from sparserl.reporting import MetricsWriter, ProgressPrinter, read_csv
from tests.helpers import (PREFETCHED_RUNS, assert_same_rows, eval_returns, kill_after_checkpoint, mean_of_last_evals,
                           rows_without_sps, run_train, run_train_side_by_side)

TINY_DQN = ("--agent=dqn", "--env=gymnax:CartPole-v1", "--sparsity=0.9", "--redo", "--redo_period=100",
            "--steps=1000", "--config.learning_starts=200", "--config.log_every=250", "--eval_every=500",
            "--config.eval_episodes=2", "--config.network.hidden_sizes=64,64", "--config.sparse.rigl.update_period=50")
TINY_PPO = ("--agent=ppo", "--env=gymnax:CartPole-v1", "--sparsity=0.9", "--redo", "--redo_period=8",
            "--steps=2048", "--config.num_envs=2", "--config.rollout_steps=128", "--config.log_every=512",
            "--eval_every=1024", "--config.eval_episodes=2", "--config.sparse.rigl.update_period=16")


def _final_checkpoint_leaves(seed_dir) -> dict:
    return checkpoint.read_arrays(seed_dir / checkpoint.CHECKPOINTS / str(checkpoint.checkpoint_steps(seed_dir)[-1]))


def _assert_close_rows(left, right):
    assert [row["step"] for row in left] == [row["step"] for row in right]
    for left_row, right_row in zip(left, right):
        assert left_row.keys() == right_row.keys()
        for name in left_row:
            assert left_row[name] == pytest.approx(right_row[name], rel=1e-5, abs=1e-6, nan_ok=True), (left_row["step"], name)


# Five CartPole envs per seed, a learning step every 5 env steps (one update per step of the envs).
TINY_DQN_5_ENVS = (*TINY_DQN, "--config.num_envs=5", "--config.train_every=5")


def _with_remedy(arguments, remedy):
    """The arguments with `--recycle=<remedy>` in place of `--redo` (same period)."""
    return tuple(f"--recycle={remedy}" if argument == "--redo" else argument for argument in arguments)


# ReDo in the compiled loop runs bit for bit across members in the sweep test below (levels x seeds, one env each)
# and through a kill and resume (the MinAtar test); these cases cover the other remedies and seed layouts.
@pytest.mark.parametrize("arguments, exact", [(_with_remedy(TINY_DQN_5_ENVS, "regrama"), True),
                                               (_with_remedy((*TINY_DQN, "--config.member_loop=vmap"), "shrink_perturb"), False),
                                               (_with_remedy(TINY_PPO, "reset"), False)],
                         ids=["dqn_5_envs_regrama", "dqn_vmap_shrink_perturb", "ppo_reset"])
def test_num_seeds_equals_single_seed_runs(tmp_path, arguments, exact):
    """Seed 5 of a 3-seed run (seeds 4, 5, 6 in one program: one after another for DQN, vmapped for PPO and with
    `member_loop=vmap`) equals a run of seed 5 alone, with each remedy (ReGraMa, Shrink & Perturb, reset).

    DQN one after another (five envs per seed): bit for bit, every metric and the whole final checkpoint
    (TrainState, env states, keys, replay). Vmapped (DQN, PPO): evaluations bit for bit, metrics and state to
    float32 rounding (XLA on CPU sums batched products and computes CartPole's sin and cos in another order).
    PPO: evaluations bit for bit, metrics and state to float32 rounding, as the host loop's PPO test
    (tests/test_ppo.py): XLA on CPU may sum PPO's minibatch gradients in another order with 3 seeds.
    """
    results = run_train_side_by_side(
        {"batched": (*arguments, "--num_seeds=3", "--seed=4"), "single": (*arguments, "--seed=5")}, tmp_path
    )
    for result in results.values():
        assert result.returncode == 0, result.stderr[-3000:]
    batched_leaves = _final_checkpoint_leaves(tmp_path / "batched" / "seed5")
    single_leaves = _final_checkpoint_leaves(tmp_path / "single" / "seed5")
    assert batched_leaves.keys() == single_leaves.keys() and len(single_leaves) > 10
    for name in single_leaves:
        if exact:
            np.testing.assert_array_equal(batched_leaves[name], single_leaves[name], err_msg=name)
        else:
            np.testing.assert_allclose(batched_leaves[name], single_leaves[name], rtol=1e-4, atol=1e-6, err_msg=name)
    assert_same_rows(*(rows_without_sps(tmp_path / run / "seed5" / "eval.csv") for run in ("batched", "single")))
    metrics = [rows_without_sps(tmp_path / run / "seed5" / "metrics.csv") for run in ("batched", "single")]
    (assert_same_rows if exact else _assert_close_rows)(*metrics)
    rows = read_csv(tmp_path / "single" / "seed5" / "metrics.csv")
    dqn = arguments[0] == "--agent=dqn"
    assert [row["step"] for row in rows] == ([250, 500, 750, 1000] if dqn else [512, 1024, 1536, 2048])
    assert abs(rows[-1]["sparsity/total" if dqn else "sparsity/actor/total"] - 0.9) <= 0.01
    assert rows[-1]["recycle/weights"] > 0 and rows[-1]["recycle/distance"] > 0
    assert not math.isnan(rows[-1]["train/episode_return"])
    network = "" if dqn else "critic/"
    for name in (f"grama/0.1/{network}total", f"srank/{network}dense_1", f"weight_magnitude/{network}dense_0"):
        assert math.isfinite(rows[-1][name]), name
    other = read_csv(tmp_path / "batched" / "seed4" / "metrics.csv")
    assert other[-1]["train/episode_return"] != rows[-1]["train/episode_return"]  # seeds differ


@pytest.mark.slow
def test_a_killed_run_with_several_envs_per_seed_resumes_exactly(tmp_path):
    """Five envs per seed, killed after its step-1000 checkpoint (env states, pending actions and replay of all
    five; the kill lands before the run's end, at 20,000 steps): the rerun resumes from the newest checkpoint and
    writes the same rows as an uninterrupted run."""
    arguments = (*TINY_DQN_5_ENVS, "--steps=20000", "--config.log_every=1000", "--eval_every=5000",
                 "--config.checkpoint_every=1000")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # the uninterrupted run beside the killed one
        whole = pool.submit(run_train, *arguments, f"--workdir={tmp_path / 'whole'}", "--run_name=run")
        kill_after_checkpoint(arguments, tmp_path / "killed", 1000)
        assert whole.result().returncode == 0, whole.result().stderr[-3000:]
    newest = checkpoint.checkpoint_steps(tmp_path / "killed" / "run" / "seed0")[-1]
    assert newest < 20_000, "the run ended before the kill"
    resumed = run_train(*arguments, f"--workdir={tmp_path / 'killed'}", "--run_name=run")
    assert resumed.returncode == 0 and f"resuming from the checkpoint of step {newest:,}" in resumed.stdout, \
        resumed.stderr[-3000:]
    for filename in ("metrics.csv", "eval.csv"):
        assert_same_rows(rows_without_sps(tmp_path / "whole" / "run" / "seed0" / filename),
                         rows_without_sps(tmp_path / "killed" / "run" / "seed0" / filename))


def test_the_rows_are_the_same_whether_a_call_runs_one_row_or_many(tmp_path, monkeypatch):
    """The same run with a call per row (CALL_SECONDS 0) and with calls of as many rows as the checkpoints allow:
    the same metrics and evaluation rows, bit for bit, from a different number of calls."""
    config = _tiny_dqn_config()
    config.update(steps=1000, log_every=100, eval_every=300, checkpoint_every=500)
    env_spec = envs.env_spec(config.env)
    calls = {}
    end_rows = compiled_runner._end_rows
    for name, call_seconds in (("one_row", 0.0), ("many_rows", 1e9)):
        monkeypatch.setattr(compiled_runner, "CALL_SECONDS", call_seconds)
        monkeypatch.setattr(compiled_runner, "_end_rows",
                            lambda host, rows, *rest, name=name: (calls.setdefault(name, []).append(len(rows)),
                                                                   end_rows(host, rows, *rest)))
        run = _run_of([(tmp_path / name, 0)], config)
        compiled_runner.run_off_policy(dqn.make(config, env_spec), config, env_spec, run)
        _close(run)
    assert calls == {"one_row": [1] * 10, "many_rows": [1, 4, 5]}  # the first call runs one row; checkpoints at 500
    for filename in ("metrics.csv", "eval.csv"):
        assert_same_rows(rows_without_sps(tmp_path / "one_row" / "seed0" / filename),
                         rows_without_sps(tmp_path / "many_rows" / "seed0" / filename))
    assert [row["step"] for row in read_csv(tmp_path / "one_row" / "seed0" / "eval.csv")] == [300, 600, 900, 1000]


MINATAR_DQN = ("--agent=dqn", "--env=gymnax:Breakout-MinAtar", "--sparsity=0.9", "--redo", "--redo_period=200",
               "--steps=1500", "--config.learning_starts=200", "--config.replay_capacity=2000",
               "--config.log_every=250", "--eval_every=750", "--config.eval_episodes=2",
               "--config.checkpoint_every=500", "--config.sparse.rigl.update_period=100")


@pytest.mark.slow
def test_minatar_breakout_runs_and_a_killed_run_resumes_exactly(tmp_path):
    """gymnax Breakout (MinAtar preset: CNN) with 90% RigL and ReDo; killed after its step-500 checkpoint,
    the rerun resumes there and writes the same rows as an uninterrupted run."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # the uninterrupted run beside the killed one
        whole = pool.submit(run_train, *MINATAR_DQN, f"--workdir={tmp_path / 'whole'}", "--run_name=run")
        kill_after_checkpoint(MINATAR_DQN, tmp_path / "killed", 500)
        assert whole.result().returncode == 0, whole.result().stderr[-3000:]
    rows = read_csv(tmp_path / "whole" / "run" / "seed0" / "metrics.csv")
    assert rows[-1]["step"] == 1500 and abs(rows[-1]["sparsity/total"] - 0.9) <= 0.005
    assert "dormant/0.1/conv_0" in rows[-1] and math.isfinite(rows[-1]["loss/td"])

    resumed = run_train(*MINATAR_DQN, f"--workdir={tmp_path / 'killed'}", "--run_name=run")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from the checkpoint of step" in resumed.stdout
    for filename in ("metrics.csv", "eval.csv"):
        whole_rows = rows_without_sps(tmp_path / "whole" / "run" / "seed0" / filename)
        resumed_rows = rows_without_sps(tmp_path / "killed" / "run" / "seed0" / filename)
        steps = [row["step"] for row in resumed_rows]
        assert len(steps) == len(set(steps)), "a step was written twice"
        assert_same_rows(whole_rows, resumed_rows)


# --- learning ------------------------------------------------------------------------------------------------
# Each learning run trains seeds 0 and 1 side by side (vmapped) and is scored by the mean over both seeds of the
# mean of their last k greedy evals (a learned policy, not one lucky eval). The thresholds sit well below what
# these runs reached when the tests were written (in brackets) and far above a random policy.

# DQN at a cheap setting that learns CartPole fast: 2x256, batch 64, an update every 2 steps, epsilon over 10k.
DQN_CARTPOLE = ("--agent=dqn", "--env=gymnax:CartPole-v1", "--seed=0", "--num_seeds=2", "--steps=12000",
                "--eval_every=2000", "--config.log_every=2000", "--config.network.hidden_sizes=256,256",
                "--config.batch_size=64", "--config.train_every=2", "--config.epsilon_decay_steps=10000")
PPO_CARTPOLE = ("--agent=ppo", "--env=gymnax:CartPole-v1", "--seed=0", "--num_seeds=2", "--steps=50000",
                "--eval_every=10000")
SAC_PENDULUM = ("--agent=sac", "--env=gymnax:Pendulum-v1", "--seed=0", "--num_seeds=1", "--steps=15000",
                "--eval_every=2500", "--config.network.hidden_sizes=128,128", "--config.batch_size=128")
# name: (arguments, seeds, last k evals, threshold), the longest runs first. Reached: DQN dense 173, RigL 266 (seeds
# 2 and 3: 236, 224; random: about 20); PPO dense 378, RigL 461; SAC RigL -134 (seed 0: -114 and -159 at 12.5k and
# 15k; random: about -1,200). These are PPO's learning tests too (tests/test_ppo.py): the agent learns the same on
# both loops, and the compiled loop runs it in half the steps. SAC, the longest run, learns sparse only and on one
# seed (several envs per seed are tested for exact resume, not learning).
LEARNING_RUNS = {
    "sac_rigl_0.9": ((*SAC_PENDULUM, "--sparsity=0.9"), (0,), 2, -400),
    "dqn_dense": (DQN_CARTPOLE, (0, 1), 3, 120),
    "dqn_rigl_0.9": ((*DQN_CARTPOLE, "--sparsity=0.9"), (0, 1), 3, 120),
    "ppo_dense": (PPO_CARTPOLE, (0, 1), 3, 300),
    "ppo_rigl_0.9": ((*PPO_CARTPOLE, "--sparsity=0.9"), (0, 1), 3, 300),
}


PREFETCHED_RUNS.register(__name__, "learning_runs", {name: arguments for name, (arguments, *_) in LEARNING_RUNS.items()})


@pytest.fixture(scope="module")
def learning_runs():
    """(workdir, results) of every run of LEARNING_RUNS, prefetched from the session's start (`PrefetchedRuns`)."""
    return PREFETCHED_RUNS.results(__name__, "learning_runs")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(LEARNING_RUNS))
def test_learns_on_gymnax(learning_runs, name):
    """Mean over the run's seeds of the mean of the last k greedy evals >= the threshold: DQN on gymnax:CartPole-v1
    within 12k steps, PPO within 50k, SAC on gymnax:Pendulum-v1 within 15k."""
    workdir, results = learning_runs
    _, seeds, last, threshold = LEARNING_RUNS[name]
    assert results[name].returncode == 0, results[name].stderr[-3000:]
    score = mean_of_last_evals(workdir / name, seeds=seeds, last=last)
    assert score >= threshold, (score, [eval_returns(workdir / name, seed) for seed in seeds])
    if "rigl" in name:
        total = "sparsity/total" if name.startswith("dqn") else f"sparsity/{'critic' if name.startswith('sac') else 'actor'}/total"
        for seed in seeds:
            assert abs(read_csv(workdir / name / f"seed{seed}" / "metrics.csv")[-1][total] - 0.9) <= 0.01


# --- sparsity sweeps: levels as a traced value, vmapped in one program ---------------------------------------


def _tiny_dqn_config():
    config = dqn_config.get_config()
    config.env = "gymnax:CartPole-v1"
    config.update(dict(steps=600, learning_starts=200, log_every=200, eval_every=600, eval_episodes=2,
                       checkpoint_every=600))
    config.network.hidden_sizes = (64, 64)
    config.sparse.rigl.update_period = 50  # RigL drops and grows every 50 updates: drop counts follow the level
    config.redo.update(dict(enabled=True, period=100))
    return config


def _run_of(run_dirs_and_seeds, config) -> loop.Run:
    seed_dirs = [str(run_dir / f"seed{seed}") for run_dir, seed in run_dirs_and_seeds]
    return loop.Run(
        seeds=[seed for _, seed in run_dirs_and_seeds],
        writers=[MetricsWriter(seed_dir, seed) for seed_dir, (_, seed) in zip(seed_dirs, run_dirs_and_seeds)],
        progress=ProgressPrinter("sweep test", config.steps),
        checkpointer=checkpoint.Checkpointer(seed_dirs, 1),
    )


def _close(run: loop.Run) -> None:
    for writer in run.writers:
        writer.close()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None, reason="native kernels are built with g++, not on PATH")
@pytest.mark.parametrize("method", ["rigl", "srigl"])
def test_a_fan_in_sweep_runs_native_kernels_in_the_lowest_levels_slots_and_equals_the_masked_sweep(tmp_path, method):
    """Levels 0.8 and 0.95 of RigL, and of SRigL (gamma_sal 0.9: its updates ablate), with fan_in masks, one program
    each for native and masked kernels: every level's indices hold the 0.8 level's budget of k slots per neuron, in
    which each level keeps its own fan-ins (offsets; the spare slots belong to no neuron) and trains its kept values,
    through topology updates, and the runs agree to float rounding."""
    config, levels = _tiny_dqn_config(), (0.8, 0.95)
    config.update_from_flattened_dict({"sparse.method": method, "sparse.structure": "fan_in",
                                       "sparse.distribution": "uniform", "batch_size": 16, "redo.enabled": False,
                                       "sparse.srigl.update_period": 50, "sparse.srigl.ablation_threshold": 0.9})
    env_spec = envs.env_spec(config.env)
    for kernels in ("masked", "native"):
        config.sparse.kernels = kernels
        sweep = _run_of([(tmp_path / f"{kernels}_{level}", 0) for level in levels], config)
        compiled_runner.run_sweep(lambda level_config: dqn.make(level_config, env_spec), dqn.LOOP, config, env_spec,
                                  levels, sweep)
        _close(sweep)
    native = {level: _final_checkpoint_leaves(tmp_path / f"native_{level}" / "seed0") for level in levels}
    masked = {level: _final_checkpoint_leaves(tmp_path / f"masked_{level}" / "seed0") for level in levels}
    hidden = "state/online/indices/dense_1/indices"
    assert hidden in native[0.95] and hidden not in masked[0.95]
    assert native[0.95][hidden].shape == native[0.8][hidden].shape == (64, 13)  # k = 64 - floor(0.8 * 64)
    for level, k in ((0.8, 13), (0.95, 4)):  # each level's own fan-ins in 0.8's 13 slots per neuron
        kept_per_neuron = np.sum(native[level]["state/online/opt_state/masks/dense_1/kernel"], axis=0)
        offsets = native[level]["state/online/indices/dense_1/offsets"]
        np.testing.assert_array_equal(np.diff(offsets), kept_per_neuron)
        assert offsets[-1] <= 64 * k
        if method == "rigl":
            assert np.all(kept_per_neuron == k)
        else:  # ablated neurons keep none, the others k' > k
            assert np.any(kept_per_neuron == 0) and np.any(kept_per_neuron > k)
    assert native[0.95]["state/online/kept/dense_1"].shape == (64, 13)  # kept values, trained alone
    assert checkpoint.checkpoint_steps(tmp_path / "native_0.95" / "seed0")[-1] == 600
    for level in levels:
        _assert_close_rows(rows_without_sps(tmp_path / f"native_{level}" / "seed0" / "metrics.csv"),
                           rows_without_sps(tmp_path / f"masked_{level}" / "seed0" / "metrics.csv"))
        for name, leaf in masked[level].items():
            np.testing.assert_allclose(_dense_shaped(native[level], name), leaf, rtol=1e-4, atol=1e-5,
                                       err_msg=f"{level} {name}")


def _dense_shaped(leaves: dict, name: str) -> np.ndarray:
    """A checkpoint's leaf as the masked run stores it: an Adam moment of a kept layer, stored per slot [out, k]
    (slots with offsets), written into a dense-shaped kernel of zeros by hand."""
    leaf = leaves[name]
    layer = name.rsplit("/", 2)[-2]
    index_name = f"state/online/indices/{layer}/indices"
    if ("/mu/" not in name and "/nu/" not in name) or not name.endswith("/kernel") or index_name not in leaves:
        return leaf
    slots, offsets = leaves[index_name].reshape(-1), leaves[f"state/online/indices/{layer}/offsets"]
    in_features = leaves[f"state/online/params/{layer}/kernel"].shape[0]
    dense = np.zeros((in_features, len(offsets) - 1), leaf.dtype)
    for neuron in range(len(offsets) - 1):
        for slot in range(offsets[neuron], offsets[neuron + 1]):
            dense[slots[slot], neuron] = leaf.reshape(-1)[slot]
    return dense


@pytest.mark.slow
def test_a_sparsity_sweep_in_one_program_equals_the_levels_run_one_by_one(tmp_path):
    """Levels 0.5, 0.9 of RigL (ERK) x seeds 0, 1 as one vmapped program (the level traced) equal, bit for bit,
    each level run alone with a Python-float sparsity: metrics, evaluations, final checkpoint."""
    config, levels, seeds = _tiny_dqn_config(), (0.5, 0.9), (0, 1)
    env_spec = envs.env_spec(config.env)
    make_agent = lambda level_config: dqn.make(level_config, env_spec)  # noqa: E731
    sweep = _run_of([(tmp_path / f"sweep_{level}", seed) for level in levels for seed in seeds], config)
    compiled_runner.run_sweep(make_agent, dqn.LOOP, config, env_spec, levels, sweep)
    _close(sweep)
    for level in levels:
        level_config = compiled_runner.with_sparsity(config, level)
        alone = _run_of([(tmp_path / f"alone_{level}", seed) for seed in seeds], level_config)
        compiled_runner.run_off_policy(dqn.make(level_config, env_spec), level_config, env_spec, alone)
        _close(alone)
        for seed in seeds:
            swept, single = tmp_path / f"sweep_{level}" / f"seed{seed}", tmp_path / f"alone_{level}" / f"seed{seed}"
            for filename in ("metrics.csv", "eval.csv"):
                assert_same_rows(rows_without_sps(swept / filename), rows_without_sps(single / filename))
            swept_leaves, single_leaves = _final_checkpoint_leaves(swept), _final_checkpoint_leaves(single)
            assert swept_leaves.keys() == single_leaves.keys()
            for name in single_leaves:
                np.testing.assert_array_equal(swept_leaves[name], single_leaves[name], err_msg=f"{level} {seed} {name}")
            last = read_csv(single / "metrics.csv")[-1]
            assert abs(last["sparsity/total"] - level) <= 0.01 and last["step"] == 600
