"""experiments.aggregate: scores, normalisation, IQM and CIs against direct computations, plots, bad input."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from sparserl.configs import dqn as dqn_config
from sparserl.experiments import aggregate
from tests.helpers import cli_environment


def write_run(run_dir, seed, evals, *, method="dense", sparsity=0.0, env="Acrobot-v1", redo=False, width=1.0,
              train_every=1, gradient_steps=1, dormant=(), hidden_sizes=(16, 16), remedy="redo"):
    """A hand-made seed directory: config.json as sparserl.train writes it, eval.csv and metrics.csv."""
    config = dqn_config.get_config()
    config.env, config.seed, config.steps = env, seed, 100 * len(evals)
    config.sparse.method, config.sparse.sparsity, config.redo.enabled, config.redo.remedy = method, sparsity, redo, remedy
    config.network.width_multiplier, config.network.hidden_sizes = width, hidden_sizes
    config.train_every = train_every
    config.gradient_steps = gradient_steps
    seed_dir = run_dir / f"seed{seed}"
    seed_dir.mkdir(parents=True)
    (seed_dir / "config.json").write_text(json.dumps(json.loads(json.dumps(config.to_dict(), default=list))))
    (seed_dir / "eval.csv").write_text("step,seed,eval/episode_return\n" + "".join(
        f"{100 * (i + 1)},{seed},{value!r}\n" for i, value in enumerate(evals)))
    (seed_dir / "metrics.csv").write_text("step,seed,dormant/0/total,dormant/0.025/total,dormant/0.1/total\n" + "".join(
        f"{100 * (i + 1)},{seed},{value / 4!r},{value / 2!r},{value!r}\n" for i, value in enumerate(dormant)))
    return run_dir


def test_iqm_and_cis_equal_a_direct_computation():
    scores = np.array([3.0, -1.0, 10.0, 4.0, 7.0, 2.0, 100.0, 5.0])
    reps, seed = 300, 3
    got = aggregate.interval_estimates(scores[:, None], reps, seed)

    def iqm(values):  # the mean of the middle half: 8 values, drop 2 at each end
        return float(np.mean(np.sort(values)[2:6]))

    assert got["iqm"] == pytest.approx((3.0 + 4.0 + 5.0 + 7.0) / 4, rel=1e-12)
    assert got["mean"] == pytest.approx(130.0 / 8, rel=1e-12)
    # The stratified bootstrap with one task: resample the 8 runs with replacement, reps times; percentile CIs.
    np.random.seed(seed)
    resampled = [scores[np.random.choice(8, (8, 1), replace=True)[:, 0]] for _ in range(reps)]
    for name, statistic in (("iqm", iqm), ("mean", np.mean)):
        low, high = np.percentile([statistic(sample) for sample in resampled], [2.5, 97.5])
        assert got[f"{name}_low"] == pytest.approx(low, rel=1e-12)
        assert got[f"{name}_high"] == pytest.approx(high, rel=1e-12)
        assert low < got[name] < high


def test_scores_normalisation_and_tables(tmp_path):
    runs = tmp_path / "runs"
    # 20 evaluations: the score is the mean of the last 2.
    dense = [write_run(runs / "dense", seed, [-500.0] * 18 + [-100.0 - seed, -80.0 - seed], dormant=[0.2, 0.4])
             for seed in (0, 1)][0]
    rigl = [write_run(runs / "rigl", seed, [-500.0] * 18 + [-300.0, -200.0 + 10 * seed], method="rigl",
                      sparsity=0.9, dormant=[0.1, 0.3, 0.5, 0.6]) for seed in (0, 1)][0]
    redo = write_run(runs / "redo", 0, [-90.0], redo=True, train_every=1, gradient_steps=4, dormant=[0.05])
    result = aggregate.aggregate([str(dense), str(rigl), str(redo)], str(tmp_path / "out"), reps=200)

    rows = {(row["run"], row["seed"]): row for row in aggregate.read_table(str(tmp_path / "out" / "results.csv"))}
    assert rows["dense", 0]["score"] == -90.0 and rows["dense", 1]["score"] == -91.0
    assert rows["rigl", 1]["score"] == (-300.0 - 190.0) / 2
    assert rows["redo", 0]["score"] == -90.0  # one evaluation: that one
    assert rows["redo", 0]["replay_ratio"] == 4.0 and rows["rigl", 0]["replay_ratio"] == 1.0
    assert rows["rigl", 0]["method"] == "rigl" and rows["rigl", 0]["sparsity"] == 0.9 and rows["redo", 0]["redo"]
    # Normalised against the dense runs without ReDo (mean -90.5) and Acrobot's floor -500.
    assert rows["rigl", 0]["normalised_score"] == pytest.approx((-250.0 + 500.0) / (-90.5 + 500.0), rel=1e-12)
    assert rows["dense", 0]["reference_score"] == -90.5
    # Dormant fraction: the mean of the last 10% of log rows (at least one).
    assert rows["rigl", 0]["dormant/0.1/total"] == 0.6 and rows["dense", 1]["dormant/0.025/total"] == 0.2

    table = {entry["run"]: entry for entry in aggregate.read_table(str(tmp_path / "out" / "iqm.csv"))}
    assert table["dense"]["seeds"] == 2 and table["dense"]["iqm"] == pytest.approx(-90.5)
    assert table["rigl"]["normalised_iqm"] == pytest.approx(np.mean([(s + 500.0) / 409.5 for s in (-250.0, -245.0)]))
    for name in ("return_vs_sparsity", "dormant_vs_step", "return_vs_step", "performance_profiles"):
        assert (tmp_path / "out" / f"{name}.png").stat().st_size > 10_000, name
    assert result["skipped"] == []


def test_a_narrow_dense_run_is_placed_at_the_sparsity_of_its_parameter_count(tmp_path):
    run = write_run(tmp_path / "narrow", 0, [10.0], env="CartPole-v1", width=0.5)
    seed_runs = aggregate.load_runs([str(run)])
    # CartPole (4 inputs, 2 actions), hidden 16-16: 4*16+16 + 16*16+16 + 16*2+2 = 386; at width 8: 40 + 72 + 18 = 130.
    assert aggregate.matched_sparsities(seed_runs) == {"narrow": pytest.approx(1 - 130 / 386, rel=1e-12)}


def test_unknown_env_floor_gives_no_normalised_score(tmp_path):
    run = write_run(tmp_path / "dense", 0, [5.0], env="ALE/Pong-v5")
    rows = aggregate.results_rows(aggregate.load_runs([str(run)]))
    assert rows[0]["reference_score"] == 5.0 and math.isnan(rows[0]["normalised_score"])


def _bad(tmp_path, capsys, *arguments):
    with pytest.raises(SystemExit) as exit_info:
        aggregate.main([*map(str, arguments), "--out", str(tmp_path / "out")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: ")
    assert not (tmp_path / "out").exists()
    return lines[0]


def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys):
    assert "RUN_DIRS" in _bad(tmp_path, capsys)  # no run directory at all
    run = write_run(tmp_path / "runs" / "good", 0, [1.0])
    no_eval = write_run(tmp_path / "runs" / "no_eval", 0, [1.0])
    (no_eval / "seed0" / "eval.csv").unlink()
    assert "no_eval/seed0 has no eval.csv" in _bad(tmp_path, capsys, run, no_eval)
    assert "holds no seed" in _bad(tmp_path, capsys, tmp_path / "runs")
    assert "not a directory" in _bad(tmp_path, capsys, tmp_path / "nowhere")
    empty = write_run(tmp_path / "runs" / "empty", 0, [])
    assert "no evaluation yet" in _bad(tmp_path, capsys, empty)
    assert "--bootstrap_reps" in _bad(tmp_path, capsys, run, "--bootstrap_reps=0")


def test_without_rliable_the_error_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "rliable", None)  # makes `import rliable` raise ImportError
    run = write_run(tmp_path / "runs" / "good", 0, [1.0])
    assert "pip install sparserl[analysis]" in _bad(tmp_path, capsys, run)


def test_the_command_line_reports_a_missing_eval_csv_in_one_line(tmp_path):
    run = write_run(tmp_path / "run", 0, [1.0])
    (run / "seed0" / "eval.csv").unlink()
    result = subprocess.run([sys.executable, "-m", "sparserl.experiments.aggregate", str(run), "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, env=cli_environment(), timeout=120)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"error: RUN_DIRS: {run / 'seed0'} has no eval.csv"]
    assert not (tmp_path / "out").exists()
