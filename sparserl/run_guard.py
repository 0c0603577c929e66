"""What keeps a run safe to stop and to resume: NaN/inf stops, checkpoints and stop requests (docs/design.md contract 7).

The loops (`sparserl.runner`, `sparserl.compiled_runner`) hand their state to
one `RunGuard` per run: at every log it checks the losses, at every
checkpoint that each parameter is finite before it writes; after a
checkpoint it stops the run when SIGTERM/SIGINT asked for it. Metrics rows and
the console are `metrics_log.MetricsLog`'s.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sparserl import checkpoint as checkpoint_lib


class TrainingDiverged(RuntimeError):
    """A loss or a parameter became NaN or infinite."""


@jax.jit
def _params_finite(state: Any) -> jax.Array:
    floats = [leaf for leaf in jax.tree.leaves(state) if jnp.issubdtype(leaf.dtype, jnp.floating)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in floats]))


class RunGuard:
    """Stops a run that went wrong and writes and reads the checkpoints it resumes from (`run.checkpointer`)."""

    def __init__(self, run):
        self.run = run

    def check_losses(self, done: int, update_metrics: dict[str, np.ndarray]) -> None:
        """Raises `TrainingDiverged` when a `loss/...` metric of some seed is NaN or infinite."""
        for name, values in update_metrics.items():
            for seed_index, value in enumerate(np.atleast_1d(values)):
                if name.startswith("loss/") and not np.isfinite(value):
                    raise TrainingDiverged(f"step {done:,}: {name} is {value} for seed {self.run.seeds[seed_index]}")

    def checkpoint(self, done: int, arrays: Any, axes: Any, loop_states: list[dict]) -> None:
        """Saves every seed's arrays (vmapped, seed axes `axes`) and loop state, after checking that every parameter
        is finite (else `TrainingDiverged`, and the last good checkpoint stays the latest). The metric files are
        flushed first, so that a resume finds every row up to the checkpoint."""
        if not bool(_params_finite(arrays)):
            raise TrainingDiverged(f"step {done:,}: a parameter is NaN or infinite")
        for writer in self.run.writers:
            writer.flush()
        self.run.checkpointer.save(
            done, [checkpoint_lib.seed_slice(arrays, i, axes) for i in range(len(self.run.seeds))], loop_states)

    def restore(self, templates: Any, axes: Any) -> tuple[Any, list[dict]]:
        """Arrays (stacked over seeds, shaped like `templates`) and per-seed loop states of checkpoint
        `run.resume_step`."""
        per_seed = [checkpoint_lib.seed_slice(templates, i, axes) for i in range(len(self.run.seeds))]
        arrays, loop_states = self.run.checkpointer.restore(self.run.resume_step, per_seed)
        return checkpoint_lib.stack_seeds(arrays, axes), loop_states

    def stop_if_requested(self, done: int) -> None:
        """After a step whose checkpoint is written: raises `Stopped` when SIGTERM/SIGINT asked the run to stop."""
        if self.run.stop_requests.requested:
            raise self.run.stop_requests.stopped(done)
