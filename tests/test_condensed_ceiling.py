"""experiments/condensed_ceiling: the hand-written C++ kernel computes the masked layer exactly (every path), and
the experiment's parts run (its timings are not asserted)."""

import numpy as np
import pytest

from sparserl import bench
from sparserl.experiments import condensed_ceiling


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    return condensed_ceiling.build(str(tmp_path_factory.mktemp("ceiling")))


@pytest.mark.parametrize("batch", [1, 5, 16, 80])  # gathers (1, 5); rows of x^T in blocks of 16 (16) and 64 + 16 (80)
@pytest.mark.parametrize("threads", [1, 2])
def test_the_hand_written_forward_pass_is_the_masked_matmul(library, batch, threads):
    kernel, indices, values = condensed_ceiling.constant_fan_in_layer(64, 24, 0.75)
    assert indices.shape == (24, 16) and np.all(np.count_nonzero(kernel, axis=0) == 16)
    x = np.random.default_rng(0).normal(size=(batch, 64)).astype(np.float32)
    y, ms = condensed_ceiling.forward(library, x, values, indices, repeats=3, threads=threads)
    np.testing.assert_allclose(y, x @ kernel, rtol=1e-5, atol=1e-5)
    assert ms > 0


def test_layer_ms_times_both_sides_of_one_layer(library):
    layer = condensed_ceiling.layer_ms(library, bench.Settings(quick=True, peers=False), 64, 32, 0.5, batch=16)
    assert layer["k"] == 32 and layer["threads"] in (1, 2)
    assert layer["hand_written"] > 0 and layer["masked"] > 0


def test_without_a_compiler_the_experiment_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(condensed_ceiling.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="needs a C.. compiler: g.. is not on PATH"):
        condensed_ceiling.build(str(tmp_path))


def test_the_bench_runs_it_as_a_row():
    assert bench.ROWS["condensed_ceiling"] is bench.row_condensed_ceiling
