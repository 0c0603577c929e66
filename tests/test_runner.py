"""sparserl.runner: seed axes, the frozen-network watch, the off-policy step (gradient steps, ReDo inside the update)
and an in-process run of the host loop (the loops also run end to end in test_train, test_resume and the agents'
tests)."""

import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparserl.agents import dqn
from sparserl.configs import dqn as dqn_config
from sparserl import checkpoint, envs, loop, metrics_log, replay as replay_lib, runner
from sparserl.configs.base import off_policy_updates
from sparserl.reporting import MetricsWriter, ProgressPrinter, read_csv
from tests.helpers import run_train


def test_a_run_with_a_zero_learning_rate_is_reported_frozen(tmp_path):
    result = run_train("--agent=dqn", "--steps=300", "--config.learning_starts=50", "--config.log_every=100",
                       "--eval_every=300", "--config.eval_episodes=1", "--config.network.hidden_sizes=16,16",
                       "--config.learning_rate=0", f"--workdir={tmp_path}", "--run_name=run")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("warning: the online network of seed(s) 0 got no update at all") == 1
    rows = read_csv(tmp_path / "run" / "seed0" / "metrics.csv")
    assert [row["warnings/frozen/online"] for row in rows] == [1.0, 1.0, 1.0]


def _filled_replay(config, spec, num_seeds, size):
    """A replay per seed holding `size` random CartPole-shaped transitions (steps of one env), and the first step."""
    replay = loop.init_replay(config, spec, num_seeds)
    keys = jax.random.split(jax.random.key(7), 3)
    transitions = replay_lib.Transition(
        observation=jax.random.normal(keys[0], (size, num_seeds, 1, 4)),
        action=jax.random.randint(keys[1], (size, num_seeds, 1), 0, 2),
        reward=jnp.ones((size, num_seeds, 1)),
        next_observation=jax.random.normal(keys[2], (size, num_seeds, 1, 4)),
        terminated=jnp.zeros((size, num_seeds, 1), bool),
    )
    for t in range(size):
        replay = jax.vmap(replay_lib.add)(replay, jax.tree.map(lambda leaf: leaf[t], transitions))
    return replay, jax.tree.map(lambda leaf: leaf[0], transitions)


def test_gradient_steps_take_that_many_updates_each_on_its_own_batch():
    """With gradient_steps=2 one learning step equals two consecutive single updates, on the batches and keys the
    step draws: its sample and update keys, each split in two (Sokar et al. 2023's replay ratio above 1)."""
    spec = envs.env_spec("CartPole-v1")
    config = dqn_config.get_config()
    config.network.hidden_sizes = (8,)
    config.update(batch_size=4, learning_starts=0, gradient_steps=2, target_update_period=1)
    agent = dqn.make(config, spec)
    state = loop.init_states(agent, [0, 1])
    axes = loop.seed_axes(state)
    replay, transition = _filled_replay(config, spec, num_seeds=2, size=16)
    observations = np.zeros((2, 1, 4), np.float32)

    def batches_and_keys(state, replay, transition):
        replay = replay_lib.add(replay, transition)
        rng, sample_key, update_key, _, _ = jax.random.split(state.rng, 5)  # the step's own split: the act key last
        sample_keys, update_keys = jax.random.split(sample_key, 2), jax.random.split(update_key, 2)
        batches = [replay_lib.sample(replay, key, config.batch_size) for key in sample_keys]
        state = state.replace(rng=rng)
        return state, batches, update_keys

    state_after_keys, batches, update_keys = jax.jit(jax.vmap(
        batches_and_keys, in_axes=(axes, 0, 0), out_axes=(axes, 0, 0)))(state, replay, transition)
    single_update = jax.jit(jax.vmap(agent.update, in_axes=(axes, 0, 0), out_axes=(axes, 0)))
    expected_state, first = single_update(state_after_keys, batches[0], update_keys[:, 0])
    expected_state, second = single_update(expected_state, batches[1], update_keys[:, 1])
    expected_loss = (first["loss/td"] + second["loss/td"]) / 2
    step = runner.OffPolicyStep(agent, config, axes)
    state, _, _, metrics = step(jax.tree.map(jnp.copy, state), replay, transition, observations, 0, 0)
    assert int(state.step) == 2
    for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(expected_state)):
        if jnp.issubdtype(got.dtype, jax.dtypes.prng_key):
            got, want = jax.random.key_data(got), jax.random.key_data(want)
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(metrics["loss/td"], expected_loss)


def test_off_policy_updates_count_gradient_steps():
    config = dqn_config.get_config()
    config.update(steps=1_000, learning_starts=100, train_every=2, gradient_steps=4)
    assert off_policy_updates(config) == (900 // 2) * 4


def test_redo_runs_after_the_update_that_reaches_its_period_inside_a_learning_step():
    """ReDo every 3 updates at 2 updates per learning step: learning step 1 (updates 1-2) recycles nothing, step 2
    (updates 3-4) recycles once, after update 3, and step 3 (updates 5-6) once, after update 6. Hidden layer of 8
    units and tau 100 (every hidden neuron is dormant): each recycle counts 8 neurons in `state.recycled`."""
    spec = envs.env_spec("CartPole-v1")
    config = dqn_config.get_config()
    config.network.hidden_sizes = (8,)
    config.update(batch_size=4, learning_starts=0, gradient_steps=2)
    config.redo.update(enabled=True, period=3, tau=100.0, batch_size=4)
    agent = dqn.make(config, spec)
    state = loop.init_states(agent, [0])
    replay, transition = _filled_replay(config, spec, num_seeds=1, size=8)
    step = runner.OffPolicyStep(agent, config, loop.seed_axes(state))
    observations = np.zeros((1, 1, 4), np.float32)
    counts = []
    for env_step in range(3):
        state, replay, _, _ = step(state, replay, transition, observations, env_step, 0)
        counts.append((int(state.step), state.recycled.neurons.tolist()))
    assert counts == [(2, [0]), (4, [8]), (6, [16])]


def _tiny_host_run(tmp_path, seed: int, log_every: int, remedy: str):
    """A 200-step DQN CartPole run (8 hidden units) of the host off-policy loop, in process, with `remedy` every 10
    updates from step 50 on at tau 100 (every hidden neuron dormant) -> (config, spec, seed directory)."""
    config = dqn_config.get_config()
    config.network.hidden_sizes = (8,)
    config.update(steps=200, learning_starts=50, log_every=log_every, eval_every=200, eval_episodes=1,
                  checkpoint_every=200, batch_size=4, checkpoint_replay=False)
    config.redo.update(enabled=True, remedy=remedy, period=10, tau=100.0, batch_size=4)
    spec = envs.env_spec("CartPole-v1")
    seed_dir = str(tmp_path / f"seed{seed}")
    writer = MetricsWriter(seed_dir, seed)
    run = loop.Run(seeds=[seed], writers=[writer], progress=ProgressPrinter("test", config.steps, stream=io.StringIO()),
                   checkpointer=checkpoint.Checkpointer([seed_dir], 1))
    runner.run_off_policy(dqn.make(config, spec), config, spec, run)
    writer.close()
    return config, spec, seed_dir


@pytest.mark.parametrize("remedy", ["regrama", "shrink_perturb", "reset"])
def test_the_host_loop_runs_every_remedy_on_its_schedule(tmp_path, remedy):
    """Each remedy in the host off-policy loop, every 10 updates from update 50 on (15 by the end of 200 steps): the
    rows count what it rewrote. A reset of the output layer re-initialises its 2 units each time; Shrink & Perturb
    rewrites every kept entry (no neuron); ReGraMa at tau 100 recycles all 8 hidden neurons each time."""
    _tiny_host_run(tmp_path, 0, log_every=200, remedy=remedy)
    [row] = read_csv(tmp_path / "seed0" / "metrics.csv")
    entries = 4 * 8 + 8 + 8 * 2 + 2  # dense_0 and output kernels and biases: all kept (dense)
    expected = {"regrama": (8 * 15, None), "shrink_perturb": (0, 15 * entries), "reset": (2 * 15, 15 * (8 * 2 + 2))}
    neurons, weights = expected[remedy]
    assert row["recycle/neurons"] == neurons and row["recycle/distance"] > 0
    if weights is not None:
        assert row["recycle/weights"] == weights


def test_an_in_process_run_logs_checkpoints_and_counts_redo(tmp_path):
    """The host off-policy loop on CartPole, in process: a metrics row per log with ReDo's running count (every 10
    updates from step 50 on, each hidden neuron dormant at tau 100: 8 per recycle), an eval row, and the final
    checkpoint, whose state restores as it was."""
    config, spec, seed_dir = _tiny_host_run(tmp_path, 3, log_every=100, remedy="redo")

    rows = read_csv(tmp_path / "seed3" / "metrics.csv")
    assert [row["step"] for row in rows] == [100, 200]
    assert [row["recycle/neurons"] for row in rows] == [8 * (50 // 10), 8 * (150 // 10)]  # updates 50 and 150 so far
    assert [row["step"] for row in read_csv(tmp_path / "seed3" / "eval.csv")] == [200]
    assert checkpoint.checkpoint_steps(seed_dir) == [200]
    reader = checkpoint.Checkpointer([seed_dir], 1)
    assert reader.load_latest(warn=print) == 200
    template = loop.init_states(dqn.make(config, spec), [3])
    [arrays], [loop_state] = reader.restore(200, [checkpoint.seed_slice({"state": template}, 0, {"state": loop.seed_axes(template)})])
    assert int(arrays["state"].step) == 150 and int(arrays["state"].recycled.neurons) == 8 * 15
    assert loop_state["window_returns"] == [] and loop_state["pending_action"].shape == (1,)
