"""Checkpoints of a whole run, one per seed directory, written atomically (DESIGN contracts 2, 5 and 7).

A checkpoint of step k lives in `{seed_dir}/checkpoints/{k}/` and holds:
- `arrays/`: an orbax checkpoint of that seed's TrainState (params, targets,
  optimizer state with masks, recycler state, RNG, counters) and, unless
  turned off, its replay buffer, stored as a flat dict of leaves (the tree
  structure comes from the code that restores it);
- `loop.pkl`: the host side of the loop (env vector state, pending actions,
  episode bookkeeping), pickled.

Everything is written into `checkpoints/.tmp-{k}/` first and renamed to
`checkpoints/{k}/` only when complete, so a kill during a save leaves the
previous checkpoint usable; leftovers of an interrupted save are removed on
the next save. The last `keep` checkpoints are kept.
"""

import os
import pickle
import re
import shutil
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

CHECKPOINTS = "checkpoints"
_STEP_DIRECTORY = re.compile(r"\d+")


def _is_key(leaf) -> bool:
    return hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _to_savable(leaf) -> np.ndarray:
    return np.asarray(jax.random.key_data(leaf) if _is_key(leaf) else leaf)


def _fsync_directory(path: str) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


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


class Checkpointer:
    """Saves and restores the per-seed state of a run."""

    def __init__(self, seed_dirs: Sequence[str], keep: int):
        self.seed_dirs = list(seed_dirs)
        self.keep = max(1, keep)
        self._orbax = ocp.StandardCheckpointer()
        self._loaded = None  # (step, [(arrays, loop state) per seed]) read by load_latest

    def save(self, step: int, arrays: Sequence[Any], loop_states: Sequence[Any]) -> None:
        """Writes checkpoint `step` of every seed: `arrays[i]` (a pytree of arrays) and `loop_states[i]` (picklable)."""
        for seed_dir, seed_arrays, loop_state in zip(self.seed_dirs, arrays, loop_states):
            directory = os.path.join(seed_dir, CHECKPOINTS)
            os.makedirs(directory, exist_ok=True)
            for name in os.listdir(directory):
                if name.startswith(".tmp-"):
                    shutil.rmtree(os.path.join(directory, name))
            temporary = os.path.join(directory, f".tmp-{step}")
            os.makedirs(temporary)
            leaves = {f"leaf_{i:05d}": _to_savable(leaf) for i, leaf in enumerate(jax.tree.leaves(seed_arrays))}
            self._orbax.save(os.path.join(temporary, "arrays"), leaves)
            self._orbax.wait_until_finished()
            with open(os.path.join(temporary, "loop.pkl"), "wb") as file:
                pickle.dump(loop_state, file)
                file.flush()
                os.fsync(file.fileno())
            final = os.path.join(directory, str(step))
            if os.path.exists(final):
                shutil.rmtree(final)
            os.rename(temporary, final)
            _fsync_directory(directory)
            for old_step in checkpoint_steps(seed_dir)[: -self.keep]:
                shutil.rmtree(os.path.join(directory, str(old_step)))

    def load_latest(self, warn) -> int | None:
        """Reads the newest checkpoint that every seed has and that reads back whole; returns its step (None: none yet).

        An unreadable checkpoint (a file truncated or missing) is skipped with a
        one-line `warn(...)` and the one before is tried: never a silent wrong
        resume. Raises NoReadableCheckpoint when checkpoints exist but none reads.
        """
        steps = sorted(set.intersection(*(set(checkpoint_steps(seed_dir)) for seed_dir in self.seed_dirs)), reverse=True)
        for step in steps:
            try:
                self._loaded = (step, [self._read(os.path.join(seed_dir, CHECKPOINTS, str(step))) for seed_dir in self.seed_dirs])
                return step
            except Exception as error:  # any damage to the files: fall back to the previous checkpoint
                reason = f"{type(error).__name__}: {error}".splitlines()[0][:200]
                warn(f"warning: checkpoint {step:,} in {os.path.dirname(self.seed_dirs[0])} is unreadable ({reason}); "
                     "trying the one before")
        if steps:
            raise NoReadableCheckpoint(f"no readable checkpoint in {os.path.dirname(self.seed_dirs[0])} "
                                       f"(tried steps {', '.join(map(str, steps))}); delete it or pass another --run_name")
        return None

    def _read(self, directory: str) -> tuple[dict, Any]:
        stored = self._orbax.restore(os.path.join(directory, "arrays"))
        with open(os.path.join(directory, "loop.pkl"), "rb") as file:
            return stored, pickle.load(file)

    def restore(self, step: int, templates: Sequence[Any]) -> tuple[list[Any], list[Any]]:
        """The checkpoint `step` read by `load_latest`: per seed, arrays shaped like `templates[i]` and the loop state.

        Every stored array must have the shape of its template leaf (the dtype is the template's).
        """
        loaded_step, per_seed = self._loaded
        if loaded_step != step:
            raise ValueError(f"checkpoint {step} was not loaded (loaded: {loaded_step})")
        arrays, loop_states = [], []
        for seed_dir, template, (stored, loop_state) in zip(self.seed_dirs, templates, per_seed):
            directory = os.path.join(seed_dir, CHECKPOINTS, str(step))
            template_leaves, treedef = jax.tree.flatten(template)
            if len(stored) != len(template_leaves):
                raise ValueError(f"{directory} does not match this run's state ({len(stored)} vs {len(template_leaves)} arrays)")
            leaves = []
            for i, template_leaf in enumerate(template_leaves):
                value = jnp.asarray(stored[f"leaf_{i:05d}"])
                expected_shape = jax.random.key_data(template_leaf).shape if _is_key(template_leaf) else template_leaf.shape
                if value.shape != tuple(expected_shape):
                    raise ValueError(f"{directory} does not match this run's state: array {i} has shape {value.shape}, "
                                     f"this run expects {tuple(expected_shape)}")
                leaves.append(jax.random.wrap_key_data(value) if _is_key(template_leaf) else value.astype(template_leaf.dtype))
            arrays.append(jax.tree.unflatten(treedef, leaves))
            loop_states.append(loop_state)
        self._loaded = None
        return arrays, loop_states
