"""The host loops compile every program once: after the first log, eval, checkpoint and ReDo, nothing compiles again."""

import os

import jax

from sparserl.experiments.bench import training
from sparserl.reporting import read_csv

# jax._src.dispatch.JAXPR_TO_MLIR_MODULE_EVENT: every program built, whether or not the persistent compilation cache
# (which `sparserl.train` turns on) then holds its binary.
LOWERING_EVENT = "/jax/core/compile/jaxpr_to_mlir_module_duration"


def compiles_by_logged_step(agent: str, overrides: dict, workdir: str) -> list[int]:
    """Trains `python -m sparserl.train --agent=AGENT --env=CartPole-v1` with `overrides` in process; returns, for
    each program built, the step of the last metrics row written by then (0: none yet)."""
    prepared = training.prepare(agent, "CartPole-v1", overrides, workdir)
    metrics = os.path.join(prepared.run_dirs[0], f"seed{prepared.seeds[0]}", "metrics.csv")

    def last_logged_step() -> int:
        rows = read_csv(metrics) if os.path.exists(metrics) else []
        return rows[-1]["step"] if rows else 0

    steps_at_compile = []

    def listener(event, duration, **kwargs):
        if event == LOWERING_EVENT:
            steps_at_compile.append(last_logged_step())

    jax.clear_caches()  # programs compiled by earlier tests in this process must compile here again
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        training.train_quietly(prepared)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert last_logged_step() == overrides["steps"]
    return steps_at_compile


def test_the_off_policy_loop_compiles_nothing_after_its_first_cycle(tmp_path):
    overrides = {
        "steps": 400, "num_seeds": 2, "learning_starts": 50, "log_every": 10, "eval_every": 200, "eval_episodes": 1,
        "checkpoint_every": 200, "network.hidden_sizes": (16,), "batch_size": 8, "redo.enabled": True,
        "redo.period": 40, "redo.batch_size": 16, "sparse.sparsity": 0.5}
    steps_at_compile = compiles_by_logged_step("dqn", overrides, str(tmp_path))
    # The first eval and checkpoint come after the row of step 200; a row is logged every 10 steps.
    assert steps_at_compile and max(steps_at_compile) <= 200, steps_at_compile


def test_the_on_policy_loop_compiles_nothing_after_its_first_cycle(tmp_path):
    overrides = {
        "steps": 512, "num_seeds": 2, "num_envs": 2, "rollout_steps": 32, "num_minibatches": 2, "update_epochs": 1,
        "log_every": 64, "eval_every": 256, "eval_episodes": 1, "checkpoint_every": 256,
        "network.hidden_sizes": (8,), "redo.enabled": True, "redo.period": 4, "sparse.sparsity": 0.5}
    steps_at_compile = compiles_by_logged_step("ppo", overrides, str(tmp_path))
    # The first eval and checkpoint come after the row of step 256; a row is logged every rollout (64 steps).
    assert steps_at_compile and max(steps_at_compile) <= 256, steps_at_compile
