"""PPO: GAE with truncation/termination, the agent's pure functions, the on-policy loop end to end, learning."""

import math
import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from sparserl.agents import ppo
from sparserl.configs import ppo as ppo_config
from sparserl import batches, dormancy, envs, loop, runner
from sparserl.errors import ConfigError
from sparserl.reporting import read_csv
from tests.helpers import PREFETCHED_RUNS, built_modules, with_fields

GAMMA, LAMBDA = 0.9, 0.8


def reference_gae(rewards, values, next_values, terminated, truncated, gamma, lambda_):
    """Plain-Python GAE of one env's trajectory, written from the definitions.

    delta_t = r_t + gamma * V(s'_t) * [not terminated] - V(s_t), with V(s'_t) the value of the true next
    observation (the final one after a truncation); the advantage recursion stops at any episode end.
    """
    advantages = [0.0] * len(rewards)
    following = 0.0
    for t in reversed(range(len(rewards))):
        if terminated[t]:
            delta = rewards[t] - values[t]
            following = 0.0
        elif truncated[t]:
            delta = rewards[t] + gamma * next_values[t] - values[t]
            following = 0.0
        else:
            next_value = values[t + 1] if t + 1 < len(rewards) else next_values[t]
            delta = rewards[t] + gamma * next_value - values[t]
        advantages[t] = delta + gamma * lambda_ * following
        following = advantages[t]
    return advantages


def test_gae_matches_python_loop_with_truncation_and_termination():
    rng = np.random.default_rng(0)
    steps, num_envs = 7, 3
    rewards = rng.normal(size=(steps, num_envs)).astype(np.float32)
    values = rng.normal(size=(steps, num_envs)).astype(np.float32)
    terminated = np.zeros((steps, num_envs), bool)
    truncated = np.zeros((steps, num_envs), bool)
    truncated[2, 0] = True  # env 0: time limit at t=2, bootstraps from its final observation
    terminated[4, 1] = True  # env 1: terminal state at t=4, no bootstrap
    truncated[1, 2] = terminated[1, 2] = True  # env 2: both flags: a termination wins
    truncated[5, 2] = True
    # V(s'_t): the next step's value while the episode goes on, the final observation's value where it ended.
    next_values = np.concatenate([values[1:], rng.normal(size=(1, num_envs)).astype(np.float32)])
    ended = terminated | truncated
    next_values[ended] = rng.normal(size=ended.sum()).astype(np.float32) + 5.0

    advantages, returns = ppo.gae(
        jnp.asarray(rewards), jnp.asarray(values), jnp.asarray(next_values),
        jnp.asarray(terminated), jnp.asarray(truncated), GAMMA, LAMBDA,
    )
    expected = np.stack([
        reference_gae(rewards[:, e], values[:, e], next_values[:, e], terminated[:, e], truncated[:, e], GAMMA, LAMBDA)
        for e in range(num_envs)
    ], axis=1)
    np.testing.assert_allclose(advantages, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(returns, expected + values, rtol=1e-5, atol=1e-5)
    # The truncated step's one-step target uses the final observation's value; the terminated one none.
    assert advantages[2, 0] == pytest.approx(rewards[2, 0] + GAMMA * next_values[2, 0] - values[2, 0], abs=1e-5)
    assert advantages[4, 1] == pytest.approx(rewards[4, 1] - values[4, 1], abs=1e-5)
    assert advantages[1, 2] == pytest.approx(rewards[1, 2] - values[1, 2], abs=1e-5)


def test_clipped_losses_by_hand():
    """Surrogate, value clipping and advantage normalisation against plain Python (CleanRL `ppo.py`)."""
    old_log_probs = np.array([0.0, 0.0, 0.0, 0.0])
    log_probs = np.log([1.5, 0.7, 1.1, 0.5])  # ratios 1.5, 0.7, 1.1, 0.5
    advantages = np.array([2.0, -1.0, 1.0, 4.0])
    values, old_values = np.array([1.0, 2.0, 0.0, -1.0]), np.array([0.5, 2.5, 0.1, -1.0])
    returns = np.array([2.0, 1.0, 0.0, 1.0])
    clip = 0.2
    normalised = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    ratios = [1.5, 0.7, 1.1, 0.5]
    policy = np.mean([max(-a * r, -a * min(max(r, 1 - clip), 1 + clip)) for a, r in zip(normalised, ratios)])
    clipped_values = [o + min(max(v - o, -clip), clip) for v, o in zip(values, old_values)]  # 0.7, 2.3, 0.0, -1.0
    value = 0.5 * np.mean([max((v - g) ** 2, (c - g) ** 2) for v, c, g in zip(values, clipped_values, returns)])
    value_unclipped = 0.5 * np.mean((values - returns) ** 2)
    raw_policy = np.mean([max(-a * r, -a * min(max(r, 1 - clip), 1 + clip)) for a, r in zip(advantages, ratios)])
    arrays = [jnp.asarray(x, jnp.float32) for x in (log_probs, old_log_probs, advantages, values, old_values, returns)]
    policy_loss, value_loss, ratio, _ = ppo.clipped_losses(*arrays, clip, True, True)
    np.testing.assert_allclose(ratio, ratios, rtol=1e-6)
    assert float(policy_loss) == pytest.approx(policy, rel=1e-5)
    assert float(value_loss) == pytest.approx(value, rel=1e-5)
    policy_loss, value_loss, _, _ = ppo.clipped_losses(*arrays, clip, False, False)
    assert float(policy_loss) == pytest.approx(raw_policy, rel=1e-5)
    assert float(value_loss) == pytest.approx(value_unclipped, rel=1e-5)
    assert value != pytest.approx(value_unclipped) and policy != pytest.approx(raw_policy)


def test_running_stats_match_numpy():
    rng = np.random.default_rng(1)
    first, second = rng.normal(3.0, 2.0, size=(50, 4)), rng.normal(-1.0, 0.5, size=(70, 4))
    stats = ppo.update_stats(ppo.update_stats(ppo.init_stats((4,)), jnp.asarray(first)), jnp.asarray(second))
    both = np.concatenate([first, second])
    np.testing.assert_allclose(stats.mean, both.mean(axis=0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(stats.var, both.var(axis=0), rtol=1e-3, atol=1e-3)


def _small_config(**fields) -> ml_collections.ConfigDict:
    config = ppo_config.get_config()
    config.steps, config.num_envs, config.rollout_steps = 256, 2, 32
    config.num_minibatches, config.update_epochs = 4, 2
    return with_fields(config, **fields)


@pytest.mark.parametrize("fields, field, reason", [
    ({"rollout_steps": 0}, "rollout_steps", "must be >= 1, got 0"),
    ({"num_minibatches": 3}, "num_minibatches", "3 does not divide the rollout of 2 x 32 transitions"),
])
def test_a_rollout_ppo_cannot_split_is_a_config_error(fields, field, reason):
    with pytest.raises(ConfigError) as raised:
        ppo.make(_small_config(**fields), envs.env_spec("CartPole-v1"))
    assert (raised.value.field, raised.value.reason) == (field, reason)


def _random_rollout(spec: envs.EnvSpec, steps: int, num_envs: int, seed: int = 0) -> batches.Rollout:
    rng = np.random.default_rng(seed)
    observation_shape = (steps, num_envs, *spec.observation_shape)
    if spec.discrete:
        actions = rng.integers(0, spec.num_actions, size=(steps, num_envs)).astype(np.int32)
    else:
        actions = rng.normal(size=(steps, num_envs, spec.num_actions)).astype(np.float32)
    return batches.Rollout(
        observation=rng.normal(size=observation_shape).astype(np.float32),
        action=actions,
        reward=rng.normal(size=(steps, num_envs)).astype(np.float32),
        terminated=rng.random((steps, num_envs)) < 0.05,
        truncated=rng.random((steps, num_envs)) < 0.05,
        next_observation=rng.normal(size=observation_shape).astype(np.float32),
    )


def test_gaussian_agent_sparsity_log_std_redo_and_obs_normalisation():
    spec = envs.env_spec("Pendulum-v1")
    config = _small_config(**{
        "sparse.sparsity": 0.5, "sparse.actor_sparsity": 0.8, "sparse.rigl.update_period": 2,
        "redo.enabled": True, "redo.period": 4, "redo.tau": 1.5,  # tau > 1: some neurons are always recycled
        "normalize_observations": True, "clip_grad_norm_jointly": True,
    })
    agent = ppo.make(config, spec)
    state = agent.init(jax.random.key(0))
    assert state.actor.params["log_std"]["bias"].shape == (spec.num_actions,)
    assert bool(state.actor.opt_state.masks["log_std"]["bias"].all())  # never masked

    batch = _random_rollout(spec, config.rollout_steps, config.num_envs)
    new_state, metrics = jax.jit(agent.update)(state, batch, jax.random.key(1))
    assert int(new_state.step) == config.update_epochs * config.num_minibatches
    assert int(new_state.recycled.neurons) > 0
    for name in ("loss/policy", "loss/value", "loss/entropy"):
        assert np.isfinite(float(metrics[name])), name
    assert not np.allclose(new_state.actor.params["log_std"]["bias"], 0.0)  # the log std learns
    flat_observations = batch.observation.reshape(-1, *spec.observation_shape)
    np.testing.assert_allclose(new_state.obs_stats.mean, flat_observations.mean(axis=0), rtol=1e-3, atol=1e-3)

    measured = agent.measure(new_state, batch)
    assert float(measured["sparsity/actor/total"]) == pytest.approx(0.8, abs=0.02)
    assert float(measured["sparsity/critic/total"]) == pytest.approx(0.5, abs=0.02)
    assert "dormant/0.1/actor/total" in measured and "dormant/0/critic/dense_1" in measured

    observations = jnp.asarray(flat_observations[:5])
    sampled = agent.act(new_state, observations, jax.random.key(2), 0, True)
    greedy = agent.act(new_state, observations, jax.random.key(2), 0, False)
    assert sampled.shape == greedy.shape == (5, spec.num_actions)
    assert np.all(np.abs(np.asarray(greedy)) <= spec.action_high)


def test_redo_runs_through_the_shared_helper_after_every_due_minibatch_step(monkeypatch):
    """PPO recycles through `dormancy.recycle_when_due`, the helper every agent's update calls, on its schedule:
    every 3 minibatch steps of 2 epochs x 4 minibatches (steps 3 and 6), each recycle of every hidden neuron
    (tau 1e9) of the 2x8 actor and critic counting 32 in `state.recycled`."""
    calls = []
    shared = dormancy.recycle_when_due
    monkeypatch.setattr(dormancy, "recycle_when_due", lambda *args: calls.append(args[0]) or shared(*args))
    config = _small_config(**{"update_epochs": 2, "num_minibatches": 4, "network.hidden_sizes": (8, 8),
                              "redo.enabled": True, "redo.period": 3, "redo.tau": 1e9})
    spec = envs.env_spec("CartPole-v1")
    agent = ppo.make(config, spec)
    new_state, _ = jax.jit(agent.update)(agent.init(jax.random.key(0)), _random_rollout(spec, config.rollout_steps,
                                                                                        config.num_envs), jax.random.key(1))
    assert calls == [dormancy.RecycleSchedule(period=3)]  # traced once, inside the minibatch scan
    assert int(new_state.step) == 8 and int(new_state.recycled.neurons) == 2 * 32
    assert "recycle/neurons" in agent.measure(new_state, _random_rollout(spec, config.rollout_steps, config.num_envs))


def test_categorical_agent_greedy_action_and_vmapped_update():
    spec = envs.env_spec("CartPole-v1")
    config = _small_config(**{"sparse.sparsity": 0.9})
    agent = ppo.make(config, spec)
    states = loop.init_states(agent, [3, 4])
    axes = loop.seed_axes(states)
    batch = _random_rollout(spec, config.rollout_steps, config.num_envs)
    batches = jax.tree.map(lambda array: np.stack([array, array]), batch)
    update = jax.jit(jax.vmap(agent.update, in_axes=(axes, 0, None), out_axes=(axes, 0)))
    new_states, metrics = update(states, batches, jax.random.key(0))
    assert new_states.step.shape == ()  # the shared gradient step counter stays unbatched
    assert metrics["loss/policy"].shape == (2,)
    observations = jnp.asarray(batch.observation[0])
    actor = runner.make_actor(agent, axes, explore=False)
    actions = np.asarray(actor(new_states, jnp.stack([observations, observations]), jax.random.split(jax.random.key(0), 2), 0))
    assert actions.shape == (2, config.num_envs) and actions.dtype.kind == "i"


def _metrics(run_dir: str, seed: int, kind: str = "metrics") -> list[dict]:
    return read_csv(os.path.join(run_dir, f"seed{seed}", f"{kind}.csv"))


def _check(result) -> None:
    assert result.returncode == 0, result.stderr[-3000:]


_SEEDS = ("--agent=ppo", "--sparsity=0.8", "--redo", "--redo_period=8", "--steps=1024", "--eval_every=1024",
          "--config.log_every=512", "--config.eval_episodes=2")
# This file's CLI runs, the longest first (`PrefetchedRuns` runs them in this order). "second",
# seed 1 alone, is the vmapped pair's second member (seed 0 alone would be its first: the same check once more).
CLI_RUNS = {
    "pong": ("--agent=ppo", "--env=ALE/Pong-v5", "--sparsity=0.9", "--steps=64", "--eval_every=64", "--config.num_envs=2",
             "--config.rollout_steps=32", "--config.num_minibatches=2", "--config.update_epochs=1",
             "--config.eval_episodes=1"),
    "both": (*_SEEDS, "--num_seeds=2", "--seed=0"),
    # 10,240 steps: -176 there when this run was twice as long (-228 at its end), against a frozen policy's -500.
    "acrobot": ("--agent=ppo", "--env=Acrobot-v1", "--sparsity=0.9", "--seed=1", "--steps=10240", "--eval_every=10240"),
    "cheetah": ("--agent=ppo", "--env=HalfCheetah-v5", "--sparsity=0.9", "--steps=512", "--eval_every=512",
                "--config.rollout_steps=256", "--config.num_minibatches=4", "--config.update_epochs=2",
                "--config.eval_episodes=1"),
    "second": (*_SEEDS, "--seed=1"),
}


PREFETCHED_RUNS.register(__name__, "cli_runs", CLI_RUNS)


@pytest.fixture(scope="module")
def cli_runs():
    """The workdir of every run of CLI_RUNS (prefetched from the session's start: `PrefetchedRuns`), each checked to
    have ended with status 0."""
    workdir, results = PREFETCHED_RUNS.results(__name__, "cli_runs")
    for result in results.values():
        _check(result)
    return workdir


def test_num_seeds_equals_single_seed_runs(cli_runs):
    together, alone = _metrics(cli_runs / "both", 1), _metrics(cli_runs / "second", 1)
    assert len(together) == len(alone) == 2
    for row_together, row_alone in zip(together, alone):
        assert set(row_together) == set(row_alone)
        for name in row_together:
            if name == "sps":
                continue
            a, b = row_together[name], row_alone[name]
            assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-5, abs=1e-6), (name, a, b)
    assert _metrics(cli_runs / "both", 1, "eval") == _metrics(cli_runs / "second", 1, "eval")
    row = _metrics(cli_runs / "both", 0)[-1]
    for name in ("train/episode_return", "loss/policy", "loss/value", "loss/entropy", "sps", "recycle/neurons",
                 "sparsity/actor/total", "sparsity/critic/dense_0", "dormant/0.1/actor/total", "dormant/0.025/critic/total",
                 "grama/0.1/actor/total", "grama/0/critic/dense_1", "srank/actor/dense_0", "weight_magnitude/critic/output"):
        assert name in row, name
    assert row["sparsity/actor/total"] == pytest.approx(0.8, abs=0.01)


def test_continuous_control_smoke_run(cli_runs):
    rows = _metrics(cli_runs / "cheetah", 0)
    assert rows[-1]["step"] == 512
    assert np.isfinite(rows[-1]["loss/value"]) and rows[-1]["sparsity/actor/total"] == pytest.approx(0.9, abs=0.01)
    assert np.isfinite(_metrics(cli_runs / "cheetah", 0, "eval")[-1]["eval/episode_return"])


def test_atari_smoke_run(cli_runs):
    rows = _metrics(cli_runs / "pong", 0)
    assert rows[-1]["step"] == 64 and np.isfinite(rows[-1]["loss/policy"])
    assert "dormant/0.1/actor/conv_0" in rows[-1] and "sparsity/critic/conv_2" in rows[-1]
    eval_rows = _metrics(cli_runs / "pong", 0, "eval")
    assert [row["step"] for row in eval_rows] == [64] and np.isfinite(eval_rows[0]["eval/episode_return"])


@pytest.mark.slow
def test_a_90_percent_sparse_actor_learns_acrobot_on_the_seed_that_froze(cli_runs):
    """Seed 1 at 90% ERK once kept a uniform policy for a whole 40k-step run (entropy ln 3, approx_kl ~ 0, eval -500):
    masking a dense init shrank every hidden layer's activations by about sqrt(density), so the tanh features were
    too small and too alike to move the 0.01-scaled policy head. With sparse-aware init it learns like dense."""
    returns = [row["eval/episode_return"] for row in _metrics(cli_runs / "acrobot", 1, "eval")]
    assert returns[-1] >= -300, returns
    assert all(row["warnings/frozen/actor"] == 0.0 for row in _metrics(cli_runs / "acrobot", 1))


def _orthogonal_gain(kernel) -> float:
    """g when the kernel's columns (output units, over the flattened fan-in) are orthogonal with norm g, else nan."""
    matrix = np.asarray(kernel).reshape(-1, kernel.shape[-1])
    gram = matrix.T @ matrix
    gain_squared = gram[0, 0]
    return float(np.sqrt(gain_squared)) if np.allclose(gram, gain_squared * np.eye(len(gram)), atol=1e-5) else float("nan")


def test_ppo_cnn_takes_cleanrl_orthogonal_init(monkeypatch):
    """CleanRL ppo_atari.py's layer_init: orthogonal gain sqrt(2) for the convs and the dense layer, 0.01 for the
    actor's output and 1 for the critic's (issue 15: network_module dropped these for CNNs, so Atari PPO got
    LeCun-normal kernels)."""
    import jax
    import jax.numpy as jnp

    from sparserl.agents import ppo
    from sparserl.envs import EnvSpec

    env_spec = EnvSpec("test", "minatar", (6, 6, 2), np.dtype(np.float32), True, 3, None, None, None)
    modules = built_modules(monkeypatch, ppo, ppo_config.get_config("minatar"), env_spec)
    actor, critic = (modules[name].init(jax.random.key(0), jnp.zeros((1, 6, 6, 2)))["params"] for name in ("actor", "critic"))
    for params in (actor, critic):
        assert _orthogonal_gain(params["conv_0"]["kernel"]) == pytest.approx(np.sqrt(2.0), rel=1e-4)
        assert _orthogonal_gain(params["dense_0"]["kernel"]) == pytest.approx(np.sqrt(2.0), rel=1e-4)
    assert _orthogonal_gain(actor["output"]["kernel"]) == pytest.approx(0.01, rel=1e-4)
    assert _orthogonal_gain(critic["output"]["kernel"]) == pytest.approx(1.0, rel=1e-4)


@pytest.mark.skipif(shutil.which("g++") is None, reason="native kernels are built with g++, not on PATH")
@pytest.mark.parametrize("method_fields", [
    {"sparse.method": "rigl", "sparse.sparsity": 0.75, "sparse.rigl.update_period": 64},
    # pruned to 90% from step 0 to 160 every 16: masked phases, then kept values at each capacity of the ladder
    {"sparse.method": "prune", "sparse.sparsity": 0.9, "sparse.prune.update_period": 16,
     "sparse.prune.start_fraction": 0.0, "sparse.prune.end_fraction": 0.5},
], ids=["rigl", "prune"])
def test_native_kernels_equal_masked_over_320_minibatch_steps_with_topology_updates(method_fields):
    """40 rollouts x 2 epochs x 4 minibatches of 16 of 75% RigL or 90% prune (fan_in) Gaussian PPO, 2 seeds
    vmapped, actor and critic in one loss: topology updates (dense gradients there for RigL, new indices after),
    observation normalisation."""
    spec = envs.env_spec("Pendulum-v1")
    rollouts, seeds = 40, [3, 4]
    rollout_batches = jax.tree.map(lambda *arrays: np.stack(arrays),
                                   *[_random_rollout(spec, 32, 2, seed=index) for index in range(rollouts)])

    def trained(kernels):
        config = _small_config(**{"steps": rollouts * 64, "sparse.distribution": "uniform", **method_fields,
                                  "sparse.structure": "fan_in", "network.hidden_sizes": (32, 32),
                                  "normalize_observations": True, "sparse.kernels": kernels})
        agent = ppo.make(config, spec)
        states = loop.init_states(agent, seeds)
        axes = loop.seed_axes(states)

        def train(state, keys):
            return jax.lax.scan(lambda state, inputs: agent.update(state, *inputs), state, (rollout_batches, keys))

        keys = jax.random.split(jax.random.key(0), (len(seeds), rollouts))
        return states, *jax.jit(jax.vmap(train, in_axes=(axes, 0), out_axes=(axes, 0)))(states, keys)

    (_, masked, masked_metrics), (initial, native, native_metrics) = trained("masked"), trained("native")
    assert int(native.step) == 320 and native.actor.indices and native.critic.indices and not masked.actor.indices
    moved = jax.tree.map(lambda first, last: bool(np.any(first != last)), initial.actor.indices, native.actor.indices)
    assert any(jax.tree.leaves(moved))  # the topology updates moved the indices
    for name in masked_metrics:
        np.testing.assert_allclose(native_metrics[name], masked_metrics[name], rtol=1e-4, atol=1e-5, err_msg=name)
    for masked_leaf, native_leaf in zip(jax.tree.leaves((masked.actor.params, masked.critic.params)),
                                        jax.tree.leaves((native.actor.params, native.critic.params))):
        np.testing.assert_allclose(native_leaf, masked_leaf, rtol=1e-4, atol=1e-5)
