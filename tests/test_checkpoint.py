"""sparserl.checkpoint: what a save leaves on disk, keep-N, the fallback to an older checkpoint, and restores that
refuse a checkpoint of another state by naming the first path that differs."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparserl.checkpoint import CheckpointMismatch, Checkpointer, NoReadableCheckpoint, checkpoint_steps


def _state(width: int = 3, dtype=jnp.float32) -> dict:
    return {"state": {"params": {"dense_0": {"kernel": jnp.arange(2 * width, dtype=dtype).reshape(2, width)}},
                      "rng": jax.random.key(7), "step": jnp.int32(5)},
            "replay": (jnp.zeros(4, jnp.uint8), jnp.ones(2, bool))}


def _save(checkpointer: Checkpointer, steps) -> None:
    for step in steps:
        checkpointer.save(step, [_state() for _ in checkpointer.seed_dirs],
                          [{"envs": None, "observation": np.full(3, step)} for _ in checkpointer.seed_dirs])


def test_a_restore_gives_back_every_array_and_the_loop_state(tmp_path):
    seed_dir = str(tmp_path / "seed0")
    _save(Checkpointer([seed_dir], keep=2), [100])
    assert sorted(os.listdir(tmp_path / "seed0" / "checkpoints" / "100")) == [
        "_CHECKPOINT_METADATA", "arrays", "commit_success.txt", "loop"]

    reader = Checkpointer([seed_dir], keep=2)
    assert reader.load_latest(warn=pytest.fail) == 100
    [arrays], [loop_state] = reader.restore(100, [_state()])
    np.testing.assert_array_equal(loop_state["observation"], [100, 100, 100])
    assert jax.tree.structure(arrays) == jax.tree.structure(_state())
    for got, want in zip(jax.tree.leaves(arrays), jax.tree.leaves(_state())):
        if jnp.issubdtype(want.dtype, jax.dtypes.prng_key):
            got, want = jax.random.key_data(got), jax.random.key_data(want)
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


def test_only_the_last_keep_checkpoints_stay(tmp_path):
    seed_dirs = [str(tmp_path / "seed0"), str(tmp_path / "seed1")]
    checkpointer = Checkpointer(seed_dirs, keep=2)
    _save(checkpointer, [100, 200])
    checkpointer.save(300, [_state(), _state()], [{}, {}])
    assert [checkpoint_steps(seed_dir) for seed_dir in seed_dirs] == [[200, 300], [200, 300]]


@pytest.mark.parametrize("template, detail", [
    (_state(width=4), "state/params/dense_0/kernel has shape (2, 3) in the checkpoint, this run expects (2, 4)"),
    (_state(dtype=jnp.int32), "state/params/dense_0/kernel has dtype float32 in the checkpoint, this run expects int32"),
    ({**_state(), "extra": jnp.zeros(1)}, "extra is missing from the checkpoint"),
    ({"state": _state()["state"]}, "replay/0 is in the checkpoint but not in this run's state"),
], ids=["shape", "dtype", "missing", "unexpected"])
def test_a_checkpoint_of_another_state_is_refused_naming_the_first_path_that_differs(tmp_path, template, detail):
    seed_dir = str(tmp_path / "seed0")
    _save(Checkpointer([seed_dir], keep=1), [100])
    reader = Checkpointer([seed_dir], keep=1)
    reader.load_latest(warn=pytest.fail)
    with pytest.raises(CheckpointMismatch) as raised:
        reader.restore(100, [template])
    assert str(raised.value) == f"{seed_dir}/checkpoints/100 does not match this run's state: {detail}"


def test_an_unreadable_latest_checkpoint_falls_back_to_the_one_before_and_none_readable_is_an_error(tmp_path):
    seed_dir = tmp_path / "seed0"
    _save(Checkpointer([str(seed_dir)], keep=3), [100, 200])
    for path in (seed_dir / "checkpoints" / "200" / "loop").rglob("*"):
        if path.is_file():
            path.write_bytes(path.read_bytes()[:5])
    warnings = []
    reader = Checkpointer([str(seed_dir)], keep=3)
    assert reader.load_latest(warn=warnings.append) == 100
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: checkpoint 200 in {tmp_path} is unreadable (")
    assert warnings[0].endswith("); trying the one before")
    assert reader.restore(100, [_state()])[1][0]["observation"].tolist() == [100, 100, 100]

    for path in (seed_dir / "checkpoints" / "100" / "arrays").rglob("*"):
        if path.is_file():
            path.unlink()
    with pytest.raises(NoReadableCheckpoint, match=r"tried steps 200, 100\)"):
        Checkpointer([str(seed_dir)], keep=3).load_latest(warn=warnings.append)


def test_what_a_kill_during_a_save_leaves_is_no_checkpoint_and_is_cleared_by_the_next_save(tmp_path):
    seed_dir = tmp_path / "seed0"
    _save(Checkpointer([str(seed_dir)], keep=3), [100])
    partial = seed_dir / "checkpoints" / "200.orbax-checkpoint-tmp-1"  # the temporary directory of a save of step 200
    partial.mkdir()
    (partial / "arrays").mkdir()
    assert checkpoint_steps(str(seed_dir)) == [100]
    _save(Checkpointer([str(seed_dir)], keep=3), [200])
    assert checkpoint_steps(str(seed_dir)) == [100, 200] and not partial.exists()
