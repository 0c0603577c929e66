"""Checkpoints of a whole run, one per seed directory, written atomically (DESIGN contracts 2, 5 and 7).

A checkpoint of step k lives in `{seed_dir}/checkpoints/{k}/`, written by an
orbax `CheckpointManager` per seed directory, and holds two items:
- `arrays/`: that seed's TrainState (params, targets, optimizer state with
  masks, recycler state, RNG, counters) and, unless turned off, its replay
  buffer, stored as a nested dict named by the pytree's paths
  (`state/online/params/dense_0/kernel`);
- `loop/`: the host side of the loop (env vector state, pending actions,
  episode bookkeeping), pickled into one uint8 array.

The manager writes into `checkpoints/{k}.orbax-checkpoint-tmp-*/` and renames it
to `checkpoints/{k}/` only when complete, so a kill during a save leaves the
previous checkpoint usable; leftovers of an interrupted save are removed when
the next manager starts. The last `keep` checkpoints are kept (orbax's
`max_to_keep`). Restoring checks the stored paths, shapes and dtypes against
the run's own state and names the first that differs; it never casts.

Kept by hand, because orbax's manager does not do it: reading back the newest
checkpoint that every seed has and that reads whole, falling back to the one
before when it does not (`load_latest`; orbax's `restore` of a damaged step
raises, and its `latest_step` does not look at the files).
"""

import os
import pickle
import re
from typing import Any, Sequence

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

CHECKPOINTS = "checkpoints"
_STEP_DIRECTORY = re.compile(r"\d+")


def _is_key(leaf) -> bool:
    return hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _stored_form(leaf) -> Any:
    """What a leaf is stored as: PRNG keys as their uint32 key data."""
    return jax.random.key_data(leaf) if _is_key(leaf) else leaf


def _path_names(path) -> tuple[str, ...]:
    """A pytree path as names: dict keys, attribute names (dataclasses, NamedTuples) and sequence indices."""
    names = []
    for entry in path:
        for attribute in ("key", "name", "idx"):
            if hasattr(entry, attribute):
                names.append(str(getattr(entry, attribute)))
                break
        else:
            raise TypeError(f"cannot name the pytree path entry {entry!r}")
    return tuple(names)


def _leaves_by_path(tree: Any) -> dict[tuple[str, ...], Any]:
    return {_path_names(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


class CheckpointMismatch(ValueError):
    """A checkpoint holds other arrays (paths, shapes or dtypes) than this run's state."""


def checkpoint_steps(seed_dir: str) -> list[int]:
    """Steps of the complete checkpoints in a seed directory, oldest first."""
    directory = os.path.join(seed_dir, CHECKPOINTS)
    if not os.path.isdir(directory):
        return []
    return sorted(int(name) for name in os.listdir(directory) if _STEP_DIRECTORY.fullmatch(name))


def latest_common_step(seed_dirs: Sequence[str]) -> int | None:
    """The newest step that every seed has a complete checkpoint of, or None."""
    common = set.intersection(*(set(checkpoint_steps(seed_dir)) for seed_dir in seed_dirs))
    return max(common) if common else None


def seed_slice(tree: Any, index: int, axes: Any) -> Any:
    """Seed `index` of a vmapped pytree; leaves with axis None are shared and kept whole."""
    return jax.tree.map(lambda leaf, axis: leaf if axis is None else leaf[index], tree, axes, is_leaf=lambda x: x is None)


def stack_seeds(trees: Sequence[Any], axes: Any) -> Any:
    """Inverse of `seed_slice`: stacks per-seed trees on a leading axis (shared leaves taken from the first)."""
    return jax.tree.map(
        lambda axis, *leaves: leaves[0] if axis is None else jnp.stack(leaves), axes, *trees, is_leaf=lambda x: x is None
    )


class NoReadableCheckpoint(RuntimeError):
    """Checkpoints exist, but none of them reads back whole."""


def _pickled(loop_state: Any) -> dict[str, np.ndarray]:
    return {"pickle": np.frombuffer(pickle.dumps(loop_state), np.uint8)}


def _unpickled(stored: dict) -> Any:
    return pickle.loads(np.asarray(stored["pickle"]).tobytes())


class Checkpointer:
    """Saves and restores the per-seed state of a run (one orbax `CheckpointManager` per seed directory)."""

    def __init__(self, seed_dirs: Sequence[str], keep: int):
        self.seed_dirs = list(seed_dirs)
        self.keep = max(1, keep)
        self._managers: dict[tuple[str, bool], ocp.CheckpointManager] = {}
        self._loaded = None  # (step, [(arrays, loop state) per seed]) read by load_latest

    def _manager(self, seed_dir: str, write: bool) -> ocp.CheckpointManager:
        """The seed directory's manager for writing (made at the first save: it creates the directory and removes
        the temporary directories of an interrupted save) or for reading, made on first use."""
        if (seed_dir, write) not in self._managers:
            options = ocp.CheckpointManagerOptions(
                max_to_keep=self.keep, create=True, cleanup_tmp_directories=True, enable_async_checkpointing=False
            ) if write else ocp.CheckpointManagerOptions(create=False, enable_async_checkpointing=False)
            self._managers[seed_dir, write] = ocp.CheckpointManager(
                os.path.abspath(os.path.join(seed_dir, CHECKPOINTS)), item_names=("arrays", "loop"), options=options)
        return self._managers[seed_dir, write]

    def save(self, step: int, arrays: Sequence[Any], loop_states: Sequence[Any]) -> None:
        """Writes checkpoint `step` of every seed: `arrays[i]` (a pytree of arrays) and `loop_states[i]` (picklable)."""
        for seed_dir, seed_arrays, loop_state in zip(self.seed_dirs, arrays, loop_states):
            manager = self._manager(seed_dir, write=True)
            if step in manager.all_steps():  # a step saved again (a stop requested at a checkpoint step) replaces it
                manager.delete(step)
            stored = flax.traverse_util.unflatten_dict(
                {path: np.asarray(_stored_form(leaf)) for path, leaf in _leaves_by_path(seed_arrays).items()})
            manager.save(step, args=ocp.args.Composite(arrays=ocp.args.StandardSave(stored),
                                                       loop=ocp.args.StandardSave(_pickled(loop_state))), force=True)
            manager.wait_until_finished()

    def load_latest(self, warn) -> int | None:
        """Reads the newest checkpoint that every seed has and that reads back whole; returns its step (None: none yet).

        An unreadable checkpoint (a file truncated or missing) is skipped with a
        one-line `warn(...)` and the one before is tried: never a silent wrong
        resume. Raises NoReadableCheckpoint when checkpoints exist but none reads.
        """
        steps = sorted(set.intersection(*(set(checkpoint_steps(seed_dir)) for seed_dir in self.seed_dirs)), reverse=True)
        for step in steps:
            try:
                self._loaded = (step, [self._read(seed_dir, step) for seed_dir in self.seed_dirs])
                return step
            except Exception as error:  # any damage to the files: fall back to the previous checkpoint
                reason = f"{type(error).__name__}: {error}".splitlines()[0][:200]
                warn(f"warning: checkpoint {step:,} in {os.path.dirname(self.seed_dirs[0])} is unreadable ({reason}); "
                     "trying the one before")
        if steps:
            raise NoReadableCheckpoint(f"no readable checkpoint in {os.path.dirname(self.seed_dirs[0])} "
                                       f"(tried steps {', '.join(map(str, steps))}); delete it or pass another --run_name")
        return None

    def _read(self, seed_dir: str, step: int) -> tuple[dict, Any]:
        restored = self._manager(seed_dir, write=False).restore(
            step, args=ocp.args.Composite(arrays=ocp.args.StandardRestore(), loop=ocp.args.StandardRestore()))
        arrays = {path: np.asarray(value) for path, value in flax.traverse_util.flatten_dict(restored["arrays"]).items()}
        return arrays, _unpickled(restored["loop"])

    def restore(self, step: int, templates: Sequence[Any]) -> tuple[list[Any], list[Any]]:
        """The checkpoint `step` read by `load_latest`: per seed, arrays shaped like `templates[i]` and the loop state.

        Every stored array must have the path, shape and dtype of a leaf of the template and every leaf a stored
        array; otherwise `CheckpointMismatch` names the first path that differs.
        """
        loaded_step, per_seed = self._loaded
        if loaded_step != step:
            raise ValueError(f"checkpoint {step} was not loaded (loaded: {loaded_step})")
        arrays, loop_states = [], []
        for seed_dir, template, (stored, loop_state) in zip(self.seed_dirs, templates, per_seed):
            expected = _leaves_by_path(template)
            _check_matches(stored, expected, os.path.join(seed_dir, CHECKPOINTS, str(step)))
            leaves = [jax.random.wrap_key_data(stored[path], impl=jax.random.key_impl(leaf)) if _is_key(leaf)
                      else jnp.asarray(stored[path]) for path, leaf in expected.items()]
            arrays.append(jax.tree.unflatten(jax.tree.structure(template), leaves))
            loop_states.append(loop_state)
        self._loaded = None
        return arrays, loop_states


def _check_matches(stored: dict[tuple[str, ...], np.ndarray], expected: dict[tuple[str, ...], Any], directory: str) -> None:
    """Raises `CheckpointMismatch` naming the first path (in the template's order) whose array is missing or has
    another shape or dtype, or else the first stored path the template does not have."""

    def mismatch(path, what):
        return CheckpointMismatch(f"{directory} does not match this run's state: {'/'.join(path)} {what}")

    for path, leaf in expected.items():
        want = jax.ShapeDtypeStruct(np.shape(_stored_form(leaf)), _stored_form(leaf).dtype)
        if path not in stored:
            raise mismatch(path, "is missing from the checkpoint")
        got = stored[path]
        if got.shape != want.shape:
            raise mismatch(path, f"has shape {got.shape} in the checkpoint, this run expects {want.shape}")
        if got.dtype != want.dtype:
            raise mismatch(path, f"has dtype {got.dtype} in the checkpoint, this run expects {want.dtype}")
    for path in stored:
        if path not in expected:
            raise mismatch(path, "is in the checkpoint but not in this run's state")
