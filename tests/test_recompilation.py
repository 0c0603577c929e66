"""The host loops compile every program once: after the first log, eval, checkpoint and ReDo, nothing compiles again."""

import jax
from sparserl import bench

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"  # jax._src.dispatch.BACKEND_COMPILE_EVENT


def compiles_by_env_step(config) -> list[int]:
    """Trains `config` in process; returns, for each XLA compilation, how many env steps had been taken."""
    clock = bench.StepClock()
    steps_at_compile = []

    def listener(event, duration, **kwargs):
        if event == COMPILE_EVENT:
            steps_at_compile.append(clock.steps[-1] if clock.steps else 0)

    jax.clear_caches()  # programs compiled by earlier tests in this process must compile here again
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        bench.train_in_process(config, clock)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert clock.steps[-1] == config.steps * config.num_seeds  # `steps` counts every env of a seed
    return steps_at_compile


def test_the_off_policy_loop_compiles_nothing_after_its_first_cycle():
    config = bench.agent_config("dqn", "CartPole-v1", {
        "steps": 400, "num_seeds": 2, "learning_starts": 50, "log_every": 100, "eval_every": 200, "eval_episodes": 1,
        "checkpoint_every": 200, "network.hidden_sizes": (16,), "batch_size": 8, "redo.enabled": True,
        "redo.period": 40, "redo.batch_size": 16, "sparse.sparsity": 0.5})
    steps_at_compile = compiles_by_env_step(config)
    assert steps_at_compile and max(steps_at_compile) <= 200 * 2, steps_at_compile


def test_the_on_policy_loop_compiles_nothing_after_its_first_cycle():
    config = bench.agent_config("ppo", "CartPole-v1", {
        "steps": 512, "num_seeds": 2, "num_envs": 2, "rollout_steps": 32, "num_minibatches": 2, "update_epochs": 1,
        "log_every": 128, "eval_every": 256, "eval_episodes": 1, "checkpoint_every": 256,
        "network.hidden_sizes": (8,), "redo.enabled": True, "redo.period": 4, "sparse.sparsity": 0.5})
    steps_at_compile = compiles_by_env_step(config)
    # The clock counts both seeds' env steps; the first eval and checkpoint come at 256 steps per seed.
    assert steps_at_compile and max(steps_at_compile) <= 256 * 2, steps_at_compile
