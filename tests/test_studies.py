"""The study commands: a smoke sweep end to end (local and Ray), resuming, plans, and bad input."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from sparserl.experiments import aggregate, dormant_neuron_study, sparse_training_study
from tests.helpers import assert_study_refuses, cli_environment

SMOKE_SWEEP = ["--scale=smoke", "--methods=static,rigl", "--sparsities=0.5,0.9", "--seeds=2", "--bootstrap_reps=500"]
# One process per method, its two levels x two seeds in one program (gymnax:CartPole-v1), a run directory per level.
SWEEPS = {f"dqn_gymnax-CartPole-v1_{method}_0.5-0.9": [f"dqn_gymnax-CartPole-v1_{method}_{sparsity}"
                                                       for sparsity in ("0.5", "0.9")] for method in ("static", "rigl")}
RUN_NAMES = {name for names in SWEEPS.values() for name in names}


def run_study(module, *arguments, timeout=900):
    return subprocess.run([sys.executable, "-m", f"sparserl.experiments.{module}", *arguments], capture_output=True, text=True,
                          env=cli_environment(), timeout=timeout)


def check_study_directory(out):
    plan = json.loads((out / "plan.json").read_text())
    assert {run["name"]: run["sweep"] for run in plan["runs"]} == SWEEPS and plan["methods"] == ["static", "rigl"]
    assert sorted(path.name for path in (out / "runs").iterdir()) == sorted(RUN_NAMES)
    assert sorted(path.name for path in (out / "logs").iterdir()) == sorted(f"{name}.log" for name in SWEEPS)
    rows = aggregate.read_table(str(out / "results.csv"))
    assert sorted((row["run"], row["seed"]) for row in rows) == sorted((name, s) for name in RUN_NAMES for s in (0.0, 1.0))
    assert all(row["last_eval_step"] == 300 for row in rows)
    table = aggregate.read_table(str(out / "iqm.csv"))
    assert {entry["run"] for entry in table} == RUN_NAMES
    assert all(entry["iqm_low"] <= entry["iqm"] <= entry["iqm_high"] for entry in table)
    for name in ("return_vs_sparsity", "dormant_vs_step", "return_vs_step", "performance_profiles"):
        assert (out / f"{name}.png").stat().st_size > 10_000, name
    summary = (out / "summary.md").read_text()
    rigl = next(entry for entry in table if entry["run"] == "dqn_gymnax-CartPole-v1_rigl_0.9")
    assert "| rigl | " in summary and f"{rigl['iqm']:.4g} [{rigl['iqm_low']:.4g}, {rigl['iqm_high']:.4g}]" in summary
    assert "rigl minus static" in summary


@pytest.mark.slow
def test_smoke_sweep_writes_the_study_and_a_second_launch_runs_nothing(tmp_path):
    out = tmp_path / "study"
    result = run_study("sparse_training_study", *SMOKE_SWEEP, f"--out={out}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 processes (4 run directories): 0 already finished, 2 to run (local)" in result.stdout
    check_study_directory(out)
    logs = {path: os.stat(path).st_mtime_ns for path in (out / "logs").iterdir()}
    again = run_study("sparse_training_study", *SMOKE_SWEEP, f"--out={out}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "2 processes (4 run directories): 2 already finished, 0 to run (local)" in again.stdout
    assert "done:" not in again.stdout
    assert {path: os.stat(path).st_mtime_ns for path in (out / "logs").iterdir()} == logs


@pytest.mark.slow
def test_smoke_sweep_through_ray(tmp_path):
    if importlib.util.find_spec("ray") is None:
        pytest.skip("ray is not installed (pip install sparserl[cluster])")
    out = tmp_path / "study"
    result = run_study("sparse_training_study", *SMOKE_SWEEP, "--launcher=ray", "--max_parallel=2", f"--out={out}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 processes (4 run directories): 0 already finished, 2 to run (ray)" in result.stdout
    check_study_directory(out)


def test_the_dormant_study_plans_every_replay_ratio_with_and_without_redo(tmp_path, capsys):
    out = tmp_path / "study"
    assert dormant_neuron_study.main(["--scale=smoke", "--dry_run", f"--out={out}"]) == 0
    plan = json.loads((out / "plan.json").read_text())
    runs = {run["name"]: run["args"] for run in plan["runs"]}
    assert len(runs) == 10 and not (out / "runs").exists()
    # A process per (ratio, remedy), its seeds vmapped: no sweeps, the ratios and the remedy change the program.
    assert all(run["sweep"] == [] and "--num_seeds=2" in run["args"] for run in plan["runs"])
    expected = {0.25: (4, 1), 0.5: (2, 1), 1: (1, 1), 2: (1, 2), 4: (1, 4)}
    for ratio, (train_every, gradient_steps) in expected.items():
        for remedy, suffix in (("none", ""), ("redo", "_redo")):
            args = runs[f"dqn_gymnax-CartPole-v1_dense_0{suffix}_rr{ratio:g}"]
            assert f"--config.train_every={train_every}" in args and f"--config.gradient_steps={gradient_steps}" in args
            assert f"--recycle={remedy}" in args
    commands = capsys.readouterr().out.strip().splitlines()
    assert len(commands) == 10 and all(command.startswith("python -m sparserl.train ") for command in commands)


def test_the_medium_dry_run_shows_the_grid_of_every_remedy_and_its_cost(tmp_path, capsys, monkeypatch):
    """--scale=medium: DQN on MinAtar Breakout, 1M steps, 3 seeds; each remedy beside none at each ratio, at the
    remedy's own period; the cost in CPU-hours from the measured per-ratio cost, linear in the ratio."""
    monkeypatch.setattr(dormant_neuron_study, "MINATAR_DQN_CPU_SECONDS", {0.25: 100.0, 4.0: 400.0})
    out = tmp_path / "study"
    assert dormant_neuron_study.main(["--scale=medium", "--replay_ratios=0.25,1,4", "--remedies=redo,shrink_perturb,reset",
                                      "--dry_run", f"--out={out}"]) == 0
    plan = json.loads((out / "plan.json").read_text())
    assert (plan["env"], plan["steps"], plan["seeds"]) == ("gymnax:Breakout-MinAtar", 1_000_000, 3)
    assert plan["remedies"] == ["none", "redo", "shrink_perturb", "reset"]
    names = [run["name"] for run in plan["runs"]]
    assert len(names) == 12 and "dqn_gymnax-Breakout-MinAtar_dense_0_shrink_perturb_rr4" in names
    assert not any("--redo_period" in argument for run in plan["runs"] for argument in run["args"])
    # 100 + (1 - 0.25) * 300 / 3.75 = 160 CPU-s per 100k steps at ratio 1: (100 + 160 + 400) x 10 x 3 seeds x 4 / 3600.
    assert plan["estimate"].startswith("estimated cost: 22.0 CPU-hours (3 replay ratios x 4 remedy settings x 3 seeds")
    assert capsys.readouterr().out.strip().splitlines()[-1] == plan["estimate"]


def test_the_sparse_study_plans_a_parameter_matched_dense_run_per_sparsity(tmp_path):
    out = tmp_path / "study"
    assert sparse_training_study.main(["--scale=smoke", "--methods=dense,prune", "--sparsities=0.9",
                                       "--config.sparse.distribution=uniform", "--dry_run", f"--out={out}"]) == 0
    plan = json.loads((out / "plan.json").read_text())
    assert [run["name"] for run in plan["runs"]] == [
        "dqn_gymnax-CartPole-v1_dense_0", "dqn_gymnax-CartPole-v1_prune_0.9", "dqn_gymnax-CartPole-v1_dense_0_matched-0.9"]
    # Smoke network 4-16-16-2, uniform 90%: kernels keep 7 + 26 + 4 weights, plus 34 biases = 71 parameters; a dense
    # net of width k has k^2 + 8k + 2, so k = 5 (67 parameters) is the widest within 71.
    matched = plan["param_matched"]["dqn_gymnax-CartPole-v1_dense_0_matched-0.9"]
    assert matched == {"sparsity": 0.9, "width_multiplier": 5 / 16, "dense_parameters": 67, "sparse_parameters": 71}
    assert "--config.network.width_multiplier=0.3125" in plan["runs"][2]["args"]


def test_the_sparse_study_runs_a_method_s_levels_as_one_process_on_gymnax_and_one_per_level_elsewhere(tmp_path, capsys):
    """On gymnax (the smoke and small scales) one `--sparsity` list per sparse method; the dense network and each
    parameter-matched one (another width: another program) a process of their own. On a host env, a process per
    level, as sparserl.train refuses a list there."""
    grid = ["--scale=smoke", "--methods=dense,static,rigl", "--sparsities=0.5,0.9", "--dry_run"]
    assert sparse_training_study.main([*grid, f"--out={tmp_path / 'gymnax'}"]) == 0
    commands = capsys.readouterr().out.strip().splitlines()
    assert len(commands) == 5 and all(command.startswith("python -m sparserl.train --agent=dqn --env=gymnax:CartPole-v1 ")
                                      for command in commands)
    workdir = f"--workdir={tmp_path / 'gymnax' / 'runs'}"
    assert commands[0].endswith(f"--method=dense --sparsity=0 {workdir} --run_name=dqn_gymnax-CartPole-v1_dense_0")
    for command, method in zip(commands[1:3], ("static", "rigl")):
        assert command.endswith(f"--method={method} --sparsity=0.5,0.9 {workdir}")  # no --run_name: a run dir per level
    for command, sparsity in zip(commands[3:], ("0.5", "0.9")):
        assert command.endswith(f"{workdir} --run_name=dqn_gymnax-CartPole-v1_dense_0_matched-{sparsity}")
    plan = json.loads((tmp_path / "gymnax" / "plan.json").read_text())
    assert plan["runs"][2]["name"] == "dqn_gymnax-CartPole-v1_rigl_0.5-0.9"
    assert plan["runs"][2]["sweep"] == ["dqn_gymnax-CartPole-v1_rigl_0.5", "dqn_gymnax-CartPole-v1_rigl_0.9"]

    assert sparse_training_study.main([*grid, "--env=CartPole-v1", f"--out={tmp_path / 'host'}"]) == 0
    plan = json.loads((tmp_path / "host" / "plan.json").read_text())
    assert [(run["name"], run["sweep"]) for run in plan["runs"]] == [(name, []) for name in (
        "dqn_CartPole-v1_dense_0", "dqn_CartPole-v1_static_0.5", "dqn_CartPole-v1_static_0.9", "dqn_CartPole-v1_rigl_0.5",
        "dqn_CartPole-v1_rigl_0.9", "dqn_CartPole-v1_dense_0_matched-0.5", "dqn_CartPole-v1_dense_0_matched-0.9")]
    assert "--sparsity=0.9" in plan["runs"][4]["args"]


@pytest.mark.parametrize("module, arguments, flag", [
    (sparse_training_study, ["--methods=static,magic"], "--methods: unknown method 'magic'"),
    (sparse_training_study, ["--sparsities=0.5,1.5"], "--sparsities"),
    (sparse_training_study, ["--sparsities=a,b"], "--sparsities"),
    (sparse_training_study, ["--scale=huge"], "--scale"),
    (sparse_training_study, ["--env=NoSuchEnv-v0"], "--env"),
    (sparse_training_study, ["--seeds=0"], "--seeds"),
    (sparse_training_study, ["--config.no_such_field=1"], "--config.no_such_field"),
    (sparse_training_study, ["--ray_address=auto"], "--ray_address"),
    (sparse_training_study, ["--gpus_per_run=1.5"], "--gpus_per_run"),
    (sparse_training_study, ["--frobnicate"], "--frobnicate"),
    (sparse_training_study, ["--seeds=two"], "--seeds"),
    (sparse_training_study, ["--config.sparse.sparsity=0.3"], "--config.sparse.sparsity: the study sets it"),
    (sparse_training_study, ["--sparsities=0.5,0.9,0.5"], "--sparsities: 0.5 is listed twice"),
    # A method's levels run as one program, where condensed kernels run fan_in masks of static, SET and RigL only
    # (checked when the plan is made; the study's methods include prune).
    (sparse_training_study, ["--config.sparse.structure=fan_in", "--config.sparse.kernels=condensed"],
     "--config.sparse.kernels=condensed runs only fan_in masks of static, set, rigl"),
    (dormant_neuron_study, ["--config.gradient_steps=2"], "--config.gradient_steps: the study sets it"),
    (dormant_neuron_study, ["--replay_ratios=0.25,3"], "--replay_ratios"),
    (dormant_neuron_study, ["--agent=ppo"], "--agent"),
    (dormant_neuron_study, ["--remedies=redo,nope"], "--remedies: choose from redo, regrama, shrink_perturb, reset, not 'nope'"),
    (dormant_neuron_study, ["--config.redo.remedy=reset"], "--config.redo.remedy: the study sets it"),
], ids=lambda value: value if isinstance(value, str) else None)
def test_bad_study_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, module, arguments, flag):
    assert_study_refuses(module, arguments, tmp_path / "study", capsys, flag)


@pytest.mark.parametrize("higher_ratio_final, trend", [(0.07, "grows"), (0.03, "falls")])
def test_the_dormant_summary_states_sokar_et_als_findings_point_by_point(tmp_path, higher_ratio_final, trend):
    from tests.test_aggregate import write_run

    runs = tmp_path / "runs"
    run_dirs = []
    # Replay ratio 0.25 (train_every 4) and 2 (gradient_steps 2), without a remedy, with ReDo and (at 2) with Shrink &
    # Perturb; dormant % at tau 0.1 over the last 10% of rows (the last row of these 4): 5% and 7% (or 3%) without a
    # remedy, 1% and 2% with ReDo, 6% with S&P. Without a remedy at 0.25 it dips to 2% at step 200, then grows.
    for name, train_every, gradient_steps, remedy, course, scores in (
            ("a", 4, 1, None, [0.5, 0.02, 0.03, 0.05], [-100.0, -99.0]), ("b", 4, 1, "redo", [0.5, 0.5, 0.5, 0.01], [-100.0, -99.0]),
            ("c", 1, 2, None, [0.5, 0.5, 0.5, higher_ratio_final], [-100.0, -99.0]),
            ("d", 1, 2, "redo", [0.5, 0.5, 0.5, 0.02], [-60.0, -50.0]),
            ("e", 1, 2, "shrink_perturb", [0.5, 0.5, 0.5, 0.06], [-100.0, -98.0])):
        for seed in (0, 1):
            write_run(runs / name, seed, [scores[seed]], env="CartPole-v1", redo=remedy is not None, remedy=remedy or "redo",
                      train_every=train_every, gradient_steps=gradient_steps, dormant=course)
        run_dirs.append(str(runs / name))
    result = aggregate.aggregate(run_dirs, str(tmp_path / "out"), reps=100)
    plan = dict(command="python -m sparserl.experiments.dormant_neuron_study ...", agent="dqn", env="CartPole-v1", scale="smoke",
                steps=100)
    text = dormant_neuron_study.summarize(plan, result)
    assert "| 0.25 | none | 1.25 | 2.50 | 5.00 [5.00, 5.00] |" in text and "| 2 | ReDo | 0.50 | 1.00 | 2.00 [2.00, 2.00] |" in text
    assert text.index("| 2 | none |") < text.index("| 2 | ReDo |") < text.index("| 2 | S&P |")
    assert ("1. Dormancy grows over training? dormant/0.1/total without a remedy, per replay ratio: 0.25: 50.00% at "
            "step 100, lowest 2.00% at step 200, 5.00% at the end (+3.00 points over the lowest); 2: 50.00% at step 100, "
            f"lowest {100 * higher_ratio_final:.2f}% at step 400") in text
    assert (f"2. Dormancy grows with the replay ratio? dormant/0.1/total without a remedy, by replay ratio (0.25, 2): "
            f"5.00%, {100 * higher_ratio_final:.2f}%; it {trend} with every step up in replay ratio.") in text
    assert ("3. ReDo keeps dormancy low? dormant/0.1/total without -> with ReDo, per replay ratio: 0.25: 5.00% -> 1.00%; "
            f"2: {100 * higher_ratio_final:.2f}% -> 2.00% (lower with ReDo at 2 of 2 ratios).") in text
    assert (f"3. S&P keeps dormancy low? dormant/0.1/total without -> with S&P, per replay ratio: "
            f"2: {100 * higher_ratio_final:.2f}% -> 6.00% (lower with S&P at {int(higher_ratio_final > 0.06)} of 1 ratios).") in text
    # Two seeds: the bootstrap CI of the IQM spans them.
    assert ("4. ReDo helps returns at high replay ratios? At replay ratio 2: IQM return -55 [-60, -50] with ReDo vs "
            "-99.5 [-100, -99] without (higher, CIs apart).") in text
    assert "4. S&P helps returns at high replay ratios? At replay ratio 2: IQM return -99 [-100, -98] with S&P" in text
    assert "(the CIs overlap)" in text
    # Only the small DQN study's summary says how its defaults were chosen.
    assert dormant_neuron_study.SMALL_DQN_CHOICE not in text
    small = dict(plan, scale="small", env=dormant_neuron_study.SCALES["small"]["dqn"].env)
    assert dormant_neuron_study.SMALL_DQN_CHOICE in dormant_neuron_study.summarize(small, result)


def test_the_sparse_summary_compares_methods_with_dense_and_with_static(tmp_path):
    from tests.test_aggregate import write_run

    runs = tmp_path / "runs"
    scores = {("dense", 0.0): [-70.0, -66.0], ("static", 0.5): [-71.0, -67.0], ("static", 0.9): [-200.0, -190.0],
              ("rigl", 0.5): [-69.0, -68.0], ("rigl", 0.9): [-100.0, -90.0]}
    for (method, sparsity), values in scores.items():
        for seed, value in enumerate(values):
            write_run(runs / f"{method}_{sparsity}", seed, [value], method=method, sparsity=sparsity)
    for seed, value in enumerate([-80.0, -76.0]):
        write_run(runs / "matched", seed, [value], width=0.25)
    result = aggregate.aggregate([str(runs / f"{m}_{s}") for m, s in scores] + [str(runs / "matched")],
                                 str(tmp_path / "out"), reps=100)
    plan = dict(command="python -m sparserl.experiments.sparse_training_study ...", agent="dqn", env="gymnax:Acrobot-v1",
                scale="small", steps=100, param_matched={"matched": dict(sparsity=0.9, width_multiplier=0.25)})
    text = sparse_training_study.summarize(plan, result)
    assert "| dense, parameter-matched |  | -78 [-80, -76] |" in text
    assert "- Same parameter count as sparsity 0.9 (width x0.25): dense -78 [-80, -76] vs rigl -95." in text
    # Two seeds: IQM = mean; the bootstrap CI of two values spans them.
    assert "| rigl | -68.5 [-69, -68] | -95 [-100, -90] |" in text
    assert "- Sparse vs dense -68 [-70, -66]: static: CIs overlap the dense CI at 0.5; first apart at 0.9" in text
    assert "- rigl minus static, IQM difference per sparsity: 0.5: +0.5, 0.9: +100 (CIs apart)." in text
    assert "- Best sparse method by IQM per sparsity: 0.5: rigl, 0.9: rigl." in text
    assert "Published (Graesser et al. 2022, DQN on Acrobot-v1" in text
