import numpy as np

from sparserl.experiments import plot_runs
from sparserl.reporting import MetricsWriter


def _fake_run(run_dir, seeds, final_return):
    for seed in seeds:
        writer = MetricsWriter(run_dir / f"seed{seed}", seed)
        for step in (100, 200, 300):
            writer.write(step, {"sparsity/total": 0.9, "dormant/0.1/actor/total": 0.1, "dormant/0.1/critic/total": 0.3})
            writer.write(step, {"eval/episode_return": final_return * step / 300 + seed}, kind="eval")
        writer.close()


def test_seed_curves_average_networks_and_read_every_seed(tmp_path):
    _fake_run(tmp_path / "a", [0, 1], 100.0)
    curves = plot_runs.seed_curves(str(tmp_path / "a"), "metrics.csv", "dormant/0.1/total")
    assert len(curves) == 2
    np.testing.assert_allclose(curves[0][1], [0.2, 0.2, 0.2])
    eval_curves = plot_runs.seed_curves(str(tmp_path / "a"), "eval.csv", "eval/episode_return")
    np.testing.assert_allclose(eval_curves[1][1], [100 / 3 + 1, 200 / 3 + 1, 101])


def test_plot_writes_an_image_and_rejects_empty_dirs(tmp_path):
    _fake_run(tmp_path / "a", [0, 1], 100.0)
    _fake_run(tmp_path / "b", [0], 50.0)
    out = tmp_path / "plot.png"
    assert plot_runs.main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert plot_runs.main([str(tmp_path / "nothing"), "--out", str(tmp_path / "x.png")]) == 2
    assert not (tmp_path / "x.png").exists()


def test_metrics_pick_the_panels_and_an_unlogged_one_is_bad_input(tmp_path, capsys):
    _fake_run(tmp_path / "a", [0, 1], 100.0)
    assert plot_runs.panels_of(["eval/episode_return", "dormant/0.1/total"]) == (
        ("eval.csv", "eval/episode_return", "eval/episode_return"), ("metrics.csv", "dormant/0.1/total", "dormant/0.1/total"))
    out = tmp_path / "two.png"
    assert plot_runs.main([str(tmp_path / "a"), "--out", str(out), "--metrics=eval/episode_return,dormant/0.1/total"]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert plot_runs.main([str(tmp_path / "a"), "--out", str(tmp_path / "x.png"), "--metrics=srank/dense_0"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == "error: --metrics: no run logged 'srank/dense_0'"
    assert not (tmp_path / "x.png").exists()
