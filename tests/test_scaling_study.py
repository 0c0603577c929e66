"""The scaling study: its grid and cost estimate, bad input, the summary's findings on hand-made runs, a smoke run."""

import json
import subprocess
import sys

import pytest

from sparserl.experiments import aggregate, scaling_study
from tests.helpers import assert_study_refuses, cli_environment
from tests.test_aggregate import write_run

MINATAR = "dqn_gymnax-Breakout-MinAtar"


def test_the_dry_run_plans_a_process_per_side_and_width_and_estimates_the_cost(tmp_path, capsys, monkeypatch):
    """The small grid: dense, prune and static 95% (fan_in, kernels=auto) at widths 1, 2, 4, 3 seeds each, 100k steps
    on Breakout-MinAtar; the cost from each side's measured CPU-seconds per width, the quadratic through them
    beyond."""
    monkeypatch.setattr(scaling_study, "MINATAR_DQN_CPU_SECONDS", {"dense": {1.0: 100.0, 2.0: 200.0, 4.0: 600.0},
                                                                   "prune": {1.0: 300.0, 2.0: 600.0, 4.0: 1800.0},
                                                                   "static": {1.0: 200.0, 2.0: 400.0, 4.0: 1200.0}})
    out = tmp_path / "study"
    assert scaling_study.main(["--dry_run", f"--out={out}"]) == 0
    plan = json.loads((out / "plan.json").read_text())
    assert (plan["env"], plan["steps"], plan["seeds"], plan["widths"]) == ("gymnax:Breakout-MinAtar", 100_000, 3, [1, 2, 4])
    runs = {run["name"]: run["args"] for run in plan["runs"]}
    assert list(runs) == [f"{MINATAR}_{cell}_w{width}" for cell in ("dense_0", "prune_fan_in_0.95", "static_fan_in_0.95")
                          for width in (1, 2, 4)]
    assert all(run["sweep"] == [] and run["seeds"] == [0, 1, 2] for run in plan["runs"]) and not (out / "runs").exists()
    assert f"--config.network.width_multiplier=4.0" in runs[f"{MINATAR}_static_fan_in_0.95_w4"]
    for name, args in runs.items():
        sparse = "dense" not in name
        assert ("--structure=fan_in" in args and "--config.sparse.kernels=auto" in args) == sparse, name
        assert ("--sparsity=0.95" if sparse else "--sparsity=0") in args
    # Dense (100 + 200 + 600), prune (300 + 600 + 1800) and static (200 + 400 + 1200) CPU-s per 100k steps x 3 seeds
    # / 3600 s.
    assert plan["estimate"].startswith("estimated cost: 4.5 CPU-hours (3 sides x widths 1, 2, 4 x 3 seeds x 100,000 steps")
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 10 and lines[-1] == plan["estimate"]
    # 8x: the quadratic through (1, 100), (2, 200), (4, 600) is (100 w^2 + 200) / 3, 2200 at 8 (static twice that,
    # prune three times): (3100 + 9300 + 6200) x 3 / 3600. Without dense: (9300 + 6200) x 3 / 3600.
    assert scaling_study.main(["--dry_run", "--widths=8,1,2,4", f"--out={tmp_path / 'wide'}"]) == 0
    wide = json.loads((tmp_path / "wide" / "plan.json").read_text())
    assert wide["widths"] == [1, 2, 4, 8] and wide["estimate"].startswith("estimated cost: 15.5 CPU-hours")
    assert scaling_study.main(["--dry_run", "--widths=1,2,4,8", "--methods=prune,static", f"--out={tmp_path / 'wide'}"]) == 0
    assert json.loads((tmp_path / "wide" / "plan.json").read_text())["estimate"].startswith("estimated cost: 12.9 CPU-hours")


@pytest.mark.parametrize("arguments, message", [
    (["--widths=1"], "--widths: give at least two different width multipliers, each > 0 (e.g. 1,2,4), got '1'"),
    (["--widths=0,2"], "--widths: give at least two different"),
    (["--widths=2,2"], "--widths: give at least two different"),
    (["--widths=one,two"], "--widths: 'one,two' is not a comma-separated list of numbers"),
    (["--agent=ppo"], "--agent"),
    (["--methods=dense,rigl"], "--methods: choose each of dense, prune, static at most once, not 'rigl'"),
    (["--config.network.width_multiplier=2"], "--config.network.width_multiplier: the study sets it"),
    (["--config.sparse.kernels=native"], "--config.sparse.kernels: the study sets it"),
], ids=lambda value: value if isinstance(value, str) else None)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, arguments, message):
    assert_study_refuses(scaling_study, arguments, tmp_path / "study", capsys, message)


def write_cell(runs, method, width, scores, sps, multiply_adds=None):
    """A hand-made run of two seeds at a width: one evaluation each (the scores) and metrics rows at steps 20 and
    100 written at the given env steps per second, with `multiply_adds/total` where given (its last row's counts)."""
    run_dir = runs / f"{method}_w{width:g}"
    for seed, value in enumerate(scores):
        write_run(run_dir, seed, [value], method=method, sparsity=0.0 if method == "dense" else 0.95, width=width)
        rows = [f"20,{seed},{sps[0]}", f"100,{seed},{sps[1]}"]
        if multiply_adds is None:
            text = "step,seed,sps\n" + "".join(f"{row}\n" for row in rows)
        else:
            text = "step,seed,sps,multiply_adds/total\n" + "".join(f"{row},{multiply_adds}\n" for row in rows)
        (run_dir / f"seed{seed}" / "metrics.csv").write_text(text)
    return str(run_dir)


def test_the_summary_states_the_papers_findings_point_by_point(tmp_path):
    runs = tmp_path / "runs"
    # Two seeds each: the IQM is their mean, its bootstrap CI spans them. Dense peaks at 2x and is lower at 4x with
    # CIs apart; static rises with every step up; prune peaks at 2x, its 4x CI overlapping its peak's and dense's.
    cells = {("dense", 1): [3.0, 5.0], ("dense", 2): [5.0, 7.0], ("dense", 4): [1.0, 3.0],
             ("static", 1): [2.0, 4.0], ("static", 2): [4.0, 6.0], ("static", 4): [8.0, 10.0],
             ("prune", 1): [2.0, 4.0], ("prune", 2): [6.0, 8.0], ("prune", 4): [2.0, 7.0]}
    # Wall time per env step: (20 / 100 + 80 / 50) s over 100 steps = 18 ms for dense 1x; 1000 / sps ms elsewhere.
    sps = {("dense", 1): (100, 50), ("dense", 4): (10, 10), ("static", 4): (20, 20), ("prune", 4): (12.5, 12.5)}
    # Multiply-adds per example: 1,000 x width^2 dense, 150 x width^2 sparse; prune's 1x run logged none (older runs).
    work = {cell: (1000 if cell[0] == "dense" else 150) * cell[1] ** 2 for cell in cells if cell != ("prune", 1)}
    run_dirs = [write_cell(runs, method, width, scores, sps.get((method, width), (50, 50)), work.get((method, width)))
                for (method, width), scores in cells.items()]
    result = {"table": aggregate.iqm_rows(aggregate.results_rows(aggregate.load_runs(run_dirs)), reps=100)}
    plan = dict(command="python -m sparserl.experiments.scaling_study ...", agent="dqn", env="gymnax:Breakout-MinAtar",
                scale="small", steps=100, sparsity=0.95, runs_dir=str(runs))
    text = scaling_study.summarize(plan, result)
    assert "| side | 1x | 2x | 4x |" in text
    assert "| dense | 4 [3, 5] | 6 [5, 7] | 2 [1, 3] |" in text and "| static | 3 [2, 4] | 5 [4, 6] | 9 [8, 10] |" in text
    assert "| dense | 18 | 20 | 100 |" in text and "| prune | 20 | 20 | 80 |" in text
    assert text.index("| dense | 4") < text.index("| prune | 3") < text.index("| static | 3")
    assert ("1. Dense return stops improving or degrades as width grows? Yes: IQM 1x: 4, 2x: 6, 4x: 2; it peaks at 2x "
            "(6 [5, 7]); at 4x it is 2 [1, 3] (lower, CIs apart: it degrades).") in text
    assert ("2. static return keeps improving with width? Yes: IQM 1x: 3, 2x: 5, 4x: 9; it rises with every step up in "
            "width.") in text
    assert ("2. prune return keeps improving with width? No: IQM 1x: 3, 2x: 7, 4x: 4.5; it peaks at 2x (7 [6, 8]); at "
            "4x it is 4.5 [2, 7] (CIs overlap: it stops improving).") in text
    assert "3. At the largest width (4x) static beats dense? 9 [8, 10] vs dense 2 [1, 3]: higher, CIs apart." in text
    assert "3. At the largest width (4x) prune beats dense? 4.5 [2, 7] vs dense 2 [1, 3]: higher, CIs overlap." in text
    assert "| dense | 1,000 | 4,000 | 16,000 |" in text and "| prune | not logged | 600 | 2,400 |" in text
    assert ("4. Cost: static at 4x takes 50 ms of wall time per env step against dense at 1x 18 ms (2.78x); dense at "
            "4x 100 ms; a forward pass at its kept weights is 2.40x dense 1x's multiply-adds.") in text
    assert "4. Cost: prune at 4x takes 80 ms of wall time per env step against dense at 1x 18 ms (4.44x)" in text
    # On MinAtar the summary says what widens and how the pruning follows the paper's; elsewhere not.
    assert scaling_study.WIDTH_NOTE in text and scaling_study.PRUNE_NOTE in text
    assert scaling_study.WIDTH_NOTE not in scaling_study.summarize(dict(plan, env="gymnax:CartPole-v1"), result)
    assert (tmp_path / "scaling.png").stat().st_size > 10_000


@pytest.mark.slow
def test_a_smoke_grid_runs_end_to_end(tmp_path):
    """Widths 1 and 2, dense and static, one seed, 300 CartPole steps: four processes, the aggregate, the summary
    and the figure."""
    out = tmp_path / "study"
    result = subprocess.run([sys.executable, "-m", "sparserl.experiments.scaling_study", "--scale=smoke", "--widths=1,2",
                             "--methods=dense,static", "--seeds=1", "--bootstrap_reps=200", f"--out={out}"],
                            capture_output=True, text=True, env=cli_environment(), timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    names = [f"dqn_gymnax-CartPole-v1_{cell}_w{width}" for cell in ("dense_0", "static_fan_in_0.95") for width in (1, 2)]
    assert sorted(path.name for path in (out / "runs").iterdir()) == sorted(names)
    table = {entry["run"]: entry for entry in aggregate.read_table(str(out / "iqm.csv"))}
    assert sorted(table) == sorted(names) and {entry["width_multiplier"] for entry in table.values()} == {1.0, 2.0}
    summary = (out / "summary.md").read_text()
    static = table["dqn_gymnax-CartPole-v1_static_fan_in_0.95_w2"]
    assert f"| static | " in summary and f"| {static['iqm']:.4g} [{static['iqm_low']:.4g}, {static['iqm_high']:.4g}] |" in summary
    assert "3. At the largest width (2x) static beats dense?" in summary and "4. Cost: static at 2x takes" in summary
    assert "## Multiply-adds" in summary and "not logged" not in summary and "x dense 1x's multiply-adds." in summary
    assert (out / "scaling.png").stat().st_size > 10_000
