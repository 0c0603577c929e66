"""The metrics of a run as every loop writes them: one row per member at each log, the console line, the evaluation
rows, and the frozen-network warning (docs/design.md contract 6).

A member is a seed of the run (or a level and seed of a sparsity sweep); each has its own `MetricsWriter`.
"""

import contextlib
import dataclasses
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from sparserl import sparse_network

FROZEN_PREFIX = "warnings/frozen/"


def network_params(state: Any) -> dict[str, Any]:
    """The params of every network of an agent state (its `sparse_network.NetworkState` fields), by field name."""
    return {field.name: getattr(state, field.name).params for field in dataclasses.fields(state)
            if isinstance(getattr(state, field.name), sparse_network.NetworkState)}


def frozen_flags(before: Any, after: Any) -> dict[str, jax.Array]:
    """`warnings/frozen/<network>` of one member between two of its states: 1.0 when the network's parameters are
    exactly unchanged although gradient steps were taken (`state.step` grew), 0.0 when they changed, NaN when no
    gradient step was taken. A network that got no update at all over a log window of gradient steps is not
    training: a layer without a path from input to output, a zero learning rate, or a mask that blocks every
    gradient. Pure and jittable (the compiled loops compute it inside their program)."""
    learned = after.step > before.step
    flags = {}
    for name, params in network_params(after).items():
        old = network_params(before)[name]
        changed = jnp.any(jnp.stack([jnp.any(new != previous) for new, previous in
                                     zip(jax.tree.leaves(params), jax.tree.leaves(old))]))
        flags[FROZEN_PREFIX + name] = jnp.where(learned, jnp.where(changed, 0.0, 1.0), jnp.nan).astype(jnp.float32)
    return flags


class FrozenNetworkWatch:
    """`frozen_flags` of every member between logs, for the host loops, which hold each log's state on the host."""

    def __init__(self, state: Any, state_axes: Any):
        self._flags = jax.jit(jax.vmap(frozen_flags, in_axes=(state_axes, state_axes)))
        self._remember(state)

    def _remember(self, state: Any) -> None:
        self._state = jax.tree.map(jnp.copy, state)  # a copy: the loops donate the state's buffers

    def check(self, state: Any) -> dict[str, np.ndarray]:
        """The flags since the last check (or since the watch began), per member."""
        flags = jax.device_get(self._flags(self._state, state))
        self._remember(state)
        return flags


def _mean_over_members(rows: list[dict]) -> dict[str, float]:
    """Mean of each metric over the members that have a value (for the console line)."""
    means = {}
    for name in rows[0]:
        values = np.asarray([row[name] for row in rows], np.float64)
        means[name] = float(np.mean(values[~np.isnan(values)])) if (~np.isnan(values)).any() else np.nan
    return means


class MetricsLog:
    """The rows of a run: the returns of the episodes that end between logs, one row per member at each log (update
    and network metrics, `sps`; CSV and TensorBoard through `run.writers`), the console line and the evaluation rows.
    Time spent evaluating, or in `untimed()`, is left out of `sps` where the loop lets the log time its rows."""

    def __init__(self, run):
        self.run = run
        self._reported_frozen: set[str] = set()
        self.window_returns: list[list[float]] = [[] for _ in run.seeds]
        self.window_start = run.resume_step or 0
        self.window_time = time.perf_counter()

    def add_episodes(self, episode_return: np.ndarray) -> None:
        """Records the returns of the episodes that ended ([members, envs], NaN where none ended)."""
        for member, env_index in zip(*np.nonzero(~np.isnan(episode_return))):
            self.window_returns[member].append(float(episode_return[member, env_index]))

    def log(self, done: int, update_metrics: dict, network_metrics: dict, final: bool,
            episode_returns: np.ndarray | None = None, sps: float | None = None) -> None:
        """Writes one metrics row per member and the console line. `episode_returns`: the mean return per member of
        the row's episodes (NaN: none ended), else the mean of those `add_episodes` recorded; `sps`: the row's env
        steps per second, else measured since the last row."""
        if sps is None:
            sps = (done - self.window_start) / max(time.perf_counter() - self.window_time, 1e-9)
        if episode_returns is None:
            episode_returns = [np.mean(returns) if returns else np.nan for returns in self.window_returns]
        self._warn_frozen(network_metrics, done)
        rows = []
        for member, writer in enumerate(self.run.writers):
            row = {"train/episode_return": episode_returns[member]}
            row.update({name: value[member] for name, value in update_metrics.items()})
            row["sps"] = sps
            row.update({name: value[member] for name, value in network_metrics.items()})
            writer.write(done, row)
            rows.append(row)
        self.run.progress.update_groups(
            done, {label: _mean_over_members([rows[member] for member in members]) for label, members in self._groups()},
            final=final)
        self.window_returns = [[] for _ in self.run.seeds]
        self.window_start, self.window_time = done, time.perf_counter()

    def _warn_frozen(self, network_metrics: dict, done: int) -> None:
        """Says once per network, on the console, that it got no update at all over a row of gradient steps."""
        for name, flags in network_metrics.items():
            network = name.removeprefix(FROZEN_PREFIX)
            frozen = np.asarray(flags) == 1.0
            if name.startswith(FROZEN_PREFIX) and frozen.any() and network not in self._reported_frozen:
                self._reported_frozen.add(network)
                members = ", ".join(str(seed) for seed, is_frozen in zip(self.run.seeds, frozen) if is_frozen)
                print(f"  warning: the {network} network of seed(s) {members} got no update at all from step "
                      f"{self.window_start:,} to {done:,} (no path from input to output? a zero learning rate?); "
                      f"see {name}", flush=True)

    def evaluate(self, done: int, evaluate: Callable[[], np.ndarray]) -> None:
        """Writes the evaluation row of every member: `evaluate()` gives their mean evaluation returns."""
        with self.untimed():
            returns = evaluate()
            for member, writer in enumerate(self.run.writers):
                writer.write(done, {"eval/episode_return": returns[member]}, kind="eval")
            for label, members in self._groups():
                print(f"  eval at step {done:,}{' (' + label + ')' if label else ''}: return "
                      f"{np.mean([returns[member] for member in members]):.1f} (mean of {len(members)} seed(s))",
                      flush=True)

    def _groups(self) -> list[tuple[str, list[int]]]:
        """(label, members) of each group the console shows: the run's groups, else all members unlabelled."""
        return list(self.run.groups.items()) or [("", list(range(len(self.run.seeds))))]

    @contextlib.contextmanager
    def untimed(self):
        """Leaves the time spent inside out of the row's `sps` (evaluations, checkpoints)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.window_time += time.perf_counter() - started

    def loop_state(self, member: int) -> dict:
        """What a checkpoint keeps of a member: the returns of the episodes that ended since the last log."""
        return {"window_returns": self.window_returns[member]}

    def resume(self, loop_states: list[dict]) -> None:
        """Takes back what `loop_state` gave a checkpoint."""
        self.window_returns = [loop_state.pop("window_returns") for loop_state in loop_states]
