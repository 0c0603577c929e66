"""sparserl.checkpoint: what a save leaves on disk, keep-N, the fallback to an older checkpoint, and restores that
refuse a checkpoint of another state by naming the first path that differs; checkpoints orbax wrote still read."""

import os
import pickle
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparserl.checkpoint import CheckpointMismatch, Checkpointer, NoReadableCheckpoint, checkpoint_steps, read_arrays


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
    assert sorted(os.listdir(tmp_path / "seed0" / "checkpoints")) == ["100"]
    assert os.listdir(tmp_path / "seed0" / "checkpoints" / "100") == ["checkpoint.npz"]

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


def test_the_checkpoint_file_is_an_npz_archive_of_the_arrays_by_path_and_the_pickled_loop_state(tmp_path):
    seed_dir = tmp_path / "seed0"
    _save(Checkpointer([str(seed_dir)], keep=1), [100])
    arrays = read_arrays(str(seed_dir / "checkpoints" / "100"))
    assert list(arrays) == ["replay/0", "replay/1", "state/params/dense_0/kernel", "state/rng", "state/step"]
    np.testing.assert_array_equal(arrays["state/params/dense_0/kernel"], np.arange(6, dtype=np.float32).reshape(2, 3))
    np.testing.assert_array_equal(arrays["state/rng"], jax.random.key_data(jax.random.key(7)))
    with np.load(seed_dir / "checkpoints" / "100" / "checkpoint.npz") as archive:
        assert archive.files == [*arrays, "loop.pickle"]
        assert archive["state/step"].dtype == np.int32 and int(archive["state/step"]) == 5
        assert pickle.loads(archive["loop.pickle"])["observation"].tolist() == [100, 100, 100]


def test_only_the_last_keep_checkpoints_stay(tmp_path):
    seed_dirs = [str(tmp_path / "seed0"), str(tmp_path / "seed1")]
    checkpointer = Checkpointer(seed_dirs, keep=2)
    _save(checkpointer, [100, 200])
    checkpointer.save(300, [_state(), _state()], [{}, {}])
    assert [checkpoint_steps(seed_dir) for seed_dir in seed_dirs] == [[200, 300], [200, 300]]


def test_a_step_saved_again_replaces_it_and_a_save_removes_the_later_steps_of_an_abandoned_history(tmp_path):
    seed_dir = str(tmp_path / "seed0")
    checkpointer = Checkpointer([seed_dir], keep=2)
    _save(checkpointer, [100, 200, 300])
    checkpointer.save(300, [_state()], [{"again": True}])
    assert checkpoint_steps(seed_dir) == [200, 300]
    reader = Checkpointer([seed_dir], keep=2)
    assert reader.load_latest(warn=pytest.fail) == 300 and reader.restore(300, [_state()])[1] == [{"again": True}]
    # A run resumed from step 200 (300 was unreadable) saves 250: 300 belongs to the history it left.
    checkpointer.save(250, [_state()], [{}])
    assert checkpoint_steps(seed_dir) == [200, 250]


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
    checkpoint_file = seed_dir / "checkpoints" / "200" / "checkpoint.npz"
    checkpoint_file.write_bytes(checkpoint_file.read_bytes()[:-5])  # the end of the archive cut off
    warnings = []
    reader = Checkpointer([str(seed_dir)], keep=3)
    assert reader.load_latest(warn=warnings.append) == 100
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: checkpoint 200 in {tmp_path} is unreadable (")
    assert warnings[0].endswith("); trying the one before")
    assert reader.restore(100, [_state()])[1][0]["observation"].tolist() == [100, 100, 100]

    checkpoint_file = seed_dir / "checkpoints" / "100" / "checkpoint.npz"
    contents = bytearray(checkpoint_file.read_bytes())
    contents[contents.index(np.float32(5).tobytes())] ^= 1  # one bit of the kernel's last value: the CRC fails
    checkpoint_file.write_bytes(bytes(contents))
    warnings.clear()
    with pytest.raises(NoReadableCheckpoint, match=r"tried steps 200, 100\)"):
        Checkpointer([str(seed_dir)], keep=3).load_latest(warn=warnings.append)
    assert "BadZipFile: Bad CRC-32" in warnings[1]


def test_what_a_kill_during_a_save_leaves_is_no_checkpoint_and_is_cleared_by_the_next_save(tmp_path):
    seed_dir = tmp_path / "seed0"
    _save(Checkpointer([str(seed_dir)], keep=3), [100])
    partial = seed_dir / "checkpoints" / "200.tmp-1"  # the temporary directory of a save of step 200 by process 1
    partial.mkdir()
    (partial / "checkpoint.npz").write_bytes(b"PK")
    orbax_partial = seed_dir / "checkpoints" / "300.orbax-checkpoint-tmp-1"  # one orbax left
    (orbax_partial / "arrays").mkdir(parents=True)
    assert checkpoint_steps(str(seed_dir)) == [100]
    _save(Checkpointer([str(seed_dir)], keep=3), [200])
    assert sorted(os.listdir(seed_dir / "checkpoints")) == ["100", "200"]


def test_a_checkpoint_orbax_wrote_reads_back(tmp_path):
    """The layout of the orbax CheckpointManager saves that came before this format: `arrays/` and `loop/` items."""
    import orbax.checkpoint as ocp

    seed_dir = tmp_path / "seed0"
    state = _state()
    stored = {"state": {"params": {"dense_0": {"kernel": np.asarray(state["state"]["params"]["dense_0"]["kernel"])}},
                        "rng": np.asarray(jax.random.key_data(state["state"]["rng"])), "step": np.int32(5)},
              "replay": {"0": np.zeros(4, np.uint8), "1": np.ones(2, bool)}}
    manager = ocp.CheckpointManager(str(seed_dir / "checkpoints"), item_names=("arrays", "loop"),
                                    options=ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False))
    loop_state = {"observation": np.full(3, 100)}
    manager.save(100, args=ocp.args.Composite(arrays=ocp.args.StandardSave(stored), loop=ocp.args.StandardSave(
        {"pickle": np.frombuffer(pickle.dumps(loop_state), np.uint8)})))
    manager.wait_until_finished()

    reader = Checkpointer([str(seed_dir)], keep=1)
    assert reader.load_latest(warn=pytest.fail) == 100
    [arrays], [restored_loop_state] = reader.restore(100, [state])
    np.testing.assert_array_equal(restored_loop_state["observation"], [100, 100, 100])
    for got, want in zip(jax.tree.leaves(arrays), jax.tree.leaves(state)):
        if jnp.issubdtype(want.dtype, jax.dtypes.prng_key):
            got, want = jax.random.key_data(got), jax.random.key_data(want)
        np.testing.assert_array_equal(got, want)


def test_writing_and_reading_checkpoints_imports_no_orbax(tmp_path):
    """orbax is imported only to read a checkpoint it wrote (it costs about 0.1 s of every run's start-up)."""
    script = (f"import sys; from sparserl import checkpoint; c = checkpoint.Checkpointer([{str(tmp_path)!r}], 1); "
              "c.save(1, [{'x': [1.0]}], [{}]); c.load_latest(print); print('orbax' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["False"]
