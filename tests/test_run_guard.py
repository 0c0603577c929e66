"""sparserl.run_guard: NaN stops, checkpoints written only from finite parameters, restore, stop requests."""

import io

import jax.numpy as jnp
import numpy as np
import pytest

from sparserl import checkpoint, loop, preemption
from sparserl.reporting import MetricsWriter, ProgressPrinter
from sparserl.run_guard import RunGuard, TrainingDiverged


@pytest.fixture
def run(tmp_path):
    """A two-seed run (seeds 3 and 4) writing into tmp_path/seed3 and tmp_path/seed4."""
    seed_dirs = [str(tmp_path / f"seed{seed}") for seed in (3, 4)]
    writers = [MetricsWriter(seed_dir, seed) for seed_dir, seed in zip(seed_dirs, (3, 4))]
    yield loop.Run([3, 4], writers, ProgressPrinter("test", 100, stream=io.StringIO()),
                     checkpoint.Checkpointer(seed_dirs, keep=2))
    for writer in writers:
        writer.close()


def test_a_non_finite_loss_of_any_seed_stops_the_run_and_names_it(run):
    guard = RunGuard(run)
    guard.check_losses(10, {"loss/td": np.array([0.5, 1.5]), "q/mean": np.array([np.nan, np.nan])})  # not a loss
    with pytest.raises(TrainingDiverged, match=r"^step 20: loss/td is inf for seed 4$"):
        guard.check_losses(20, {"loss/td": np.array([0.5, np.inf])})


def test_only_finite_parameters_are_checkpointed_and_they_restore_per_seed(run):
    guard = RunGuard(run)
    arrays = {"params": jnp.arange(6.0).reshape(2, 3), "step": jnp.int32(7)}  # seed axis 0; step shared
    axes = {"params": 0, "step": None}
    guard.checkpoint(10, arrays, axes, [{"episode": 1}, {"episode": 2}])
    with pytest.raises(TrainingDiverged, match="step 20: a parameter is NaN or infinite"):
        guard.checkpoint(20, {"params": arrays["params"].at[1, 2].set(jnp.nan), "step": jnp.int32(8)}, axes,
                         [{}, {}])
    assert checkpoint.checkpoint_steps(run.checkpointer.seed_dirs[0]) == [10]  # the NaN state was not written
    run.resume_step = run.checkpointer.load_latest(warn=print)  # what a resuming run does first
    assert run.resume_step == 10
    restored, loop_states = guard.restore({"params": jnp.zeros((2, 3)), "step": jnp.int32(0)}, axes)
    np.testing.assert_array_equal(restored["params"], arrays["params"])
    assert int(restored["step"]) == 7 and loop_states == [{"episode": 1}, {"episode": 2}]


def test_a_stop_request_ends_the_run_after_its_checkpoint(run):
    guard = RunGuard(run)
    guard.stop_if_requested(10)  # nothing asked
    run.stop_requests.signal_number = 15  # SIGTERM arrived
    with pytest.raises(preemption.Stopped) as stopped:
        guard.stop_if_requested(30)
    assert stopped.value.step == 30 and stopped.value.exit_status == 143
