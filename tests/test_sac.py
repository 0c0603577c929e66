"""SAC: the soft TD target, the tanh-Gaussian policy, action bounds, per-network sparsity, seeds as a batch axis,
smoke runs on MuJoCo and dm_control, and learning Pendulum-v1 dense and 90% sparse."""

import math
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparserl.agents import sac
from sparserl.configs import sac as sac_config
from sparserl import envs, replay as replay_lib
from sparserl.errors import ConfigError
from sparserl.reporting import read_csv

from tests.helpers import PREFETCHED_RUNS, built_modules, hidden_outputs, with_fields


def _config(**fields):
    return with_fields(sac_config.get_config(), **fields)


def _batch(spec, size, key):
    obs_key, action_key, next_key, reward_key = jax.random.split(key, 4)
    low, high = jnp.asarray(spec.action_low), jnp.asarray(spec.action_high)
    return replay_lib.Transition(
        observation=jax.random.normal(obs_key, (size, *spec.observation_shape)),
        action=jax.random.uniform(action_key, (size, spec.num_actions), minval=low, maxval=high),
        reward=jax.random.normal(reward_key, (size,)),
        next_observation=jax.random.normal(next_key, (size, *spec.observation_shape)),
        terminated=jnp.arange(size) % 3 == 0,
    )


# --- the maths of one update ---------------------------------------------------------------------------------

def test_critic_targets_match_plain_python():
    # Rows: an ordinary step, a termination (no bootstrap) and a time-limit truncation
    # (stored with terminated=False and s' = the final observation, so it bootstraps).
    reward = [1.0, -2.0, 0.5]
    terminated = [False, True, False]
    next_q = [[3.0, -1.0, 10.0], [2.5, 4.0, 12.0]]  # twin target critics at (s', a')
    next_log_prob = [-0.7, 0.3, 1.2]
    alpha, gamma = 0.2, 0.99

    expected = []
    for i in range(3):
        soft_value = min(next_q[0][i], next_q[1][i]) - alpha * next_log_prob[i]
        expected.append(reward[i] + (0.0 if terminated[i] else gamma * soft_value))
    assert expected[1] == -2.0

    targets = sac.critic_targets(jnp.asarray(reward), jnp.asarray(terminated), jnp.asarray(next_q),
                                 jnp.asarray(next_log_prob), jnp.asarray(alpha), gamma)
    np.testing.assert_allclose(np.asarray(targets), expected, rtol=1e-6)


def test_tanh_gaussian_log_prob_is_the_change_of_variables():
    mean = jnp.asarray([[0.3, -1.0], [2.0, 0.0]])
    log_std = jnp.asarray([[-0.5, 0.2], [0.0, -2.0]])
    key = jax.random.key(3)
    actions, log_prob = sac.sample_action(mean, log_std, key)
    noise = jax.random.normal(key, mean.shape)
    pre_tanh = np.asarray(mean + jnp.exp(log_std) * noise, np.float64)
    std = np.exp(np.asarray(log_std, np.float64))
    gaussian = -0.5 * ((pre_tanh - np.asarray(mean)) / std) ** 2 - np.log(std) - 0.5 * math.log(2 * math.pi)
    expected = np.sum(gaussian - np.log(1.0 - np.tanh(pre_tanh) ** 2), axis=-1)
    np.testing.assert_allclose(np.asarray(actions), np.tanh(pre_tanh), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(log_prob), expected, rtol=1e-4, atol=1e-4)


def test_log_std_stays_in_its_range():
    mean, log_std = sac.squashed_gaussian(jnp.asarray([[0.0, 1e6], [1.0, -1e6]]), -5.0, 2.0)
    np.testing.assert_allclose(np.asarray(mean)[:, 0], [0.0, 1.0])
    np.testing.assert_allclose(np.asarray(log_std)[:, 0], [2.0, -5.0])


def test_update_steps_every_part_and_polyak_averages_the_target():
    spec = envs.env_spec("Pendulum-v1")
    config = _config(**{"sparse.sparsity": 0.9, "sparse.rigl.update_period": 1})
    agent = sac.make(config, spec)
    state = agent.init(jax.random.key(0))
    batch = _batch(spec, 32, jax.random.key(1))
    new_state, metrics = jax.jit(agent.update)(state, batch, jax.random.key(2))
    for name in ("loss/critic", "loss/actor", "loss/temperature", "alpha"):
        assert np.isfinite(float(metrics[name])), name
    assert int(new_state.step) == 1
    # The temperature moves towards the target entropy: up when the policy is less random than the target.
    target_entropy = -config.target_entropy_scale * spec.num_actions
    assert (float(new_state.log_alpha) - float(state.log_alpha)) * (target_entropy - float(metrics["entropy"])) > 0
    tau = config.tau
    jax.tree.map(
        lambda new_target, old_target, online: np.testing.assert_allclose(
            np.asarray(new_target), tau * np.asarray(online) + (1 - tau) * np.asarray(old_target), rtol=1e-5, atol=1e-7),
        new_state.target_critic_params, state.target_critic_params, new_state.critic.params)
    for network in ("actor", "critic"):
        old, new = jax.tree.leaves(getattr(state, network).params), jax.tree.leaves(getattr(new_state, network).params)
        assert any(not np.array_equal(a, b) for a, b in zip(old, new)), network


# --- actions and sparsity, on built agents -------------------------------------------------------------------

@pytest.mark.parametrize("env_id", ["HalfCheetah-v5", "dmc:cheetah-run"])
def test_actions_have_the_env_shape_and_bounds(env_id):
    spec = envs.env_spec(env_id)
    assert spec.num_actions == 6
    config = _config(learning_starts=100)
    agent = sac.make(config, spec)
    state = agent.init(jax.random.key(0))
    # Large observations push the policy means far into the tanh tails: actions must still be in bounds.
    observations = 100.0 * jax.random.normal(jax.random.key(1), (64, *spec.observation_shape))
    observations = observations.astype(spec.observation_dtype)
    act = jax.jit(agent.act, static_argnums=4)
    for env_step, explore in ((0, True), (100, True), (0, False)):
        actions = np.asarray(act(state, observations, jax.random.key(2), env_step, explore))
        assert actions.shape == (64, 6)
        assert actions.dtype == np.float32
        assert np.all(actions >= spec.action_low) and np.all(actions <= spec.action_high)
    evaluation = np.asarray(act(state, observations, jax.random.key(3), 1000, False))
    np.testing.assert_array_equal(evaluation, np.asarray(act(state, observations, jax.random.key(4), 1000, False)))


def test_random_actions_before_learning_starts_cover_the_bounds():
    spec = envs.env_spec("Pendulum-v1")
    agent = sac.make(_config(learning_starts=10), spec)
    state = agent.init(jax.random.key(0))
    observations = jnp.zeros((2000, *spec.observation_shape))
    actions = np.asarray(agent.act(state, observations, jax.random.key(1), 0, True))
    assert actions.min() < 0.95 * spec.action_low[0] and actions.max() > 0.95 * spec.action_high[0]
    assert abs(actions.mean()) < 0.1


@pytest.mark.parametrize(
    "fields, expected",
    [
        ({"sparse.sparsity": 0.8}, (0.8, 0.8)),
        ({"sparse.sparsity": 0.8, "sparse.actor_sparsity": 0.0}, (0.0, 0.8)),
        ({"sparse.actor_sparsity": 0.5, "sparse.critic_sparsity": 0.9}, (0.5, 0.9)),
    ],
)
def test_actor_and_critic_take_their_own_sparsity(fields, expected):
    spec = envs.env_spec("Pendulum-v1")
    agent = sac.make(_config(**fields), spec)
    state = agent.init(jax.random.key(0))
    metrics = agent.measure(state, _batch(spec, 16, jax.random.key(1)))
    assert float(metrics["sparsity/actor/total"]) == pytest.approx(expected[0], abs=0.005)
    assert float(metrics["sparsity/critic/total"]) == pytest.approx(expected[1], abs=0.005)
    assert "sparsity/critic/q1/dense_0" in metrics and "sparsity/critic/q2/output" in metrics
    assert "dormant/0.1/actor/total" in metrics and "dormant/0.1/critic/q2/dense_1" in metrics


@pytest.mark.parametrize("reset_target", [False, True])
def test_redo_rewrites_the_target_critic_only_when_asked(reset_target):
    """Dopamine's recycled SAC resets target critics only with reset_target_models=True (default False)."""
    spec = envs.env_spec("Pendulum-v1")
    agent = sac.make(_config(**{"redo.tau": 1.5, "redo.reset_target": reset_target}), spec)  # many recycled
    state = agent.init(jax.random.key(0))
    state = state.replace(target_critic_params=jax.tree.map(lambda p: p + 1.0, state.critic.params))
    new_state, recycled = agent.recycle(state, _batch(spec, 64, jax.random.key(1)), jax.random.key(2))
    assert int(recycled.neurons) > 0
    changed = jax.tree.map(lambda old, new: np.asarray(old != new), state.critic.params, new_state.critic.params)
    assert any(leaf.any() for leaf in jax.tree.leaves(changed))
    for target, old_target, online, online_changed in zip(*map(jax.tree.leaves, (
            new_state.target_critic_params, state.target_critic_params, new_state.critic.params, changed))):
        if not reset_target:
            np.testing.assert_array_equal(target, old_target)
            continue
        np.testing.assert_array_equal(target[online_changed], online[online_changed])
        assert np.all((target == online) | (target == old_target))


def test_target_critic_carries_no_weight_off_the_online_mask_after_a_topology_update():
    spec = envs.env_spec("Pendulum-v1")
    config = _config(**{"sparse.sparsity": 0.9, "sparse.rigl.update_period": 5})
    agent = sac.make(config, spec)
    state = agent.init(jax.random.key(0))
    state = state.replace(step=jnp.asarray(5, jnp.int32))  # a RigL step: drop and grow in the critic
    new_state, _ = jax.jit(agent.update)(state, _batch(spec, 32, jax.random.key(1)), jax.random.key(2))
    old_masks, new_masks = state.critic.opt_state.masks, new_state.critic.opt_state.masks
    dropped = sum(int(np.sum(old & ~new)) for old, new in zip(jax.tree.leaves(old_masks), jax.tree.leaves(new_masks)))
    assert dropped > 0
    off_mask = sum(int(np.sum((np.asarray(target) != 0) & ~np.asarray(mask))) for target, mask in
                   zip(jax.tree.leaves(new_state.target_critic_params), jax.tree.leaves(new_masks)))
    assert off_mask == 0


def test_actor_and_temperature_losses_by_hand():
    log_prob = jnp.array([-1.0, 0.5, 2.0])
    q = jnp.array([[1.0, 3.0, -2.0], [2.0, 0.0, -1.0]])  # min over the twins: 1, 0, -2
    assert float(sac.actor_loss(0.2, log_prob, q)) == pytest.approx(((-0.2 - 1) + (0.1 - 0) + (0.4 + 2)) / 3, rel=1e-6)
    log_alpha = jnp.log(0.5)
    # target entropy -1: mean over the batch of -0.5 * (log pi + target) = -0.5 * mean(-2, -0.5, 1)
    assert float(sac.temperature_loss(log_alpha, log_prob, -1.0)) == pytest.approx(-0.5 * (-1.5 / 3), rel=1e-6)
    # Entropy -mean(log pi) = -0.5 below a target of 3: the gradient is alpha * (entropy - target) < 0, so
    # gradient descent raises alpha; above a target of -3, it lowers alpha.
    for target_entropy in (3.0, -3.0):
        grad = float(jax.grad(sac.temperature_loss)(log_alpha, log_prob, target_entropy))
        assert grad == pytest.approx(0.5 * (-0.5 - target_entropy), rel=1e-6)


# --- through the command line --------------------------------------------------------------------------------

_SHORT = ("--agent=sac", "--config.batch_size=64", "--config.eval_episodes=1")
_SEEDS = (*_SHORT, "--sparsity=0.9", "--steps=600", "--config.learning_starts=200", "--config.log_every=200",
          "--config.sparse.rigl.update_period=150", "--eval_every=600", "--config.eval_episodes=2")
# The smoke run also gives actor and critic their own sparsities.
_SMOKE = (*_SHORT, "--actor_sparsity=0.5", "--critic_sparsity=0.9", "--steps=300", "--config.learning_starts=100",
          "--config.log_every=100", "--config.sparse.rigl.update_period=50")
# This file's CLI runs, the longest first (`PrefetchedRuns` runs them in this order).
CLI_RUNS = {
    "both": (*_SEEDS, "--num_seeds=2"),
    "single": (*_SEEDS, "--seed=1"),
    "HalfCheetah-v5": (*_SMOKE, "--env=HalfCheetah-v5"),
}


PREFETCHED_RUNS.register(__name__, "cli_runs", {name.replace(":", "_"): arguments for name, arguments in CLI_RUNS.items()})


@pytest.fixture(scope="module")
def cli_runs():
    """The workdir of every run of CLI_RUNS (run directory: the run's name, ':' as '_'; prefetched from the
    session's start: `PrefetchedRuns`), each checked to have ended with status 0."""
    workdir, results = PREFETCHED_RUNS.results(__name__, "cli_runs")
    for result in results.values():
        assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def _csv(cli_runs, run, seed, kind="metrics"):
    return read_csv(cli_runs / run.replace(":", "_") / f"seed{seed}" / f"{kind}.csv")


# MuJoCo through the CLI (dm_control's envs: tests/test_envs.py; they reach the agent through the same adapter).
@pytest.mark.parametrize("env_id", ["HalfCheetah-v5"])
def test_smoke_run(cli_runs, env_id):
    last = _csv(cli_runs, env_id, 0)[-1]
    assert last["step"] == 300
    for name in ("loss/critic", "loss/actor", "loss/temperature", "sparsity/actor/total", "sparsity/critic/total",
                 "grama/0.1/actor/total", "grama/0/critic/q2/dense_1", "srank/critic/q1/dense_0",
                 "weight_magnitude/actor/output"):
        assert np.isfinite(last[name]), name
    assert np.isfinite(_csv(cli_runs, env_id, 0, "eval")[-1]["eval/episode_return"])


def test_actor_and_critic_sparsities_are_honoured_separately(cli_runs):
    last = _csv(cli_runs, "HalfCheetah-v5", 0)[-1]
    assert last["sparsity/actor/total"] == pytest.approx(0.5, abs=0.005)
    assert last["sparsity/critic/total"] == pytest.approx(0.9, abs=0.005)


def test_two_seeds_in_one_process_equal_a_single_seed_run(cli_runs):
    """Seed 1, the second of the vmapped pair, equals its own run (the DQN and PPO tests check the same way)."""
    for kind in ("metrics", "eval"):
        both = _csv(cli_runs, "both", 1, kind)
        single = _csv(cli_runs, "single", 1, kind)
        assert len(both) == len(single) > 0
        for row_both, row_single in zip(both, single):
            assert row_both.keys() == row_single.keys()
            for name in row_both:
                if name != "sps":
                    np.testing.assert_equal(row_both[name], row_single[name], err_msg=f"{kind} {name}")


def test_sac_critic_takes_the_configured_activation_and_refuses_a_cnn(monkeypatch):
    """The twin critic is built with `network.activation` (issue 15: it was always ReLU)."""
    import jax

    from sparserl.agents import sac
    from sparserl import envs

    config = sac_config.get_config()
    config.network.hidden_sizes = (8, 8)
    config.network.activation = "tanh"
    env_spec = envs.env_spec("Pendulum-v1")
    critic = built_modules(monkeypatch, sac, config, env_spec)["critic"]
    hidden = hidden_outputs(critic, jax.random.normal(jax.random.key(1), (16, 3)), jax.random.uniform(jax.random.key(2), (16, 1)))
    assert len(hidden) == 4  # q1 and q2, two hidden layers each
    for outputs in hidden:
        assert np.all(np.abs(outputs) < 1.0) and np.any(outputs < 0.0)
    config.network.kind = "cnn"
    with pytest.raises(ConfigError, match="^network.kind: sac builds MLPs only") as raised:
        sac.make(config, env_spec)
    assert raised.value.field == "network.kind"


@pytest.mark.parametrize("remedy", ["regrama", "shrink_perturb", "reset"])
def test_every_remedy_rewrites_actor_and_critic_on_their_masks(remedy):
    """A 90%-sparse SAC: each remedy changes both networks (ReGraMa through the gradients of their own losses,
    tau 1.5), only on kept weights, and leaves masks and targets alone."""
    spec = envs.env_spec("Pendulum-v1")
    config = _config(**{"redo.enabled": True, "redo.remedy": remedy, "redo.tau": 1.5, "sparse.method": "static",
                        "sparse.sparsity": 0.9})
    agent = sac.make(config, spec)
    state = agent.init(jax.random.key(0))
    new_state, counts = agent.recycle(state, _batch(spec, 64, jax.random.key(1)), jax.random.key(2))
    assert float(counts.weights) > 0 and float(counts.distance) > 0
    for network in ("actor", "critic"):
        old, new = getattr(state, network), getattr(new_state, network)
        assert any(bool(np.any(a != b)) for a, b in zip(jax.tree.leaves(old.params), jax.tree.leaves(new.params))), network
        jax.tree.map(np.testing.assert_array_equal, new.opt_state.masks, old.opt_state.masks)
        jax.tree.map(lambda leaf, mask: np.testing.assert_array_equal(np.where(mask, 0.0, leaf), 0.0),
                     new.params, old.opt_state.masks)
    jax.tree.map(np.testing.assert_array_equal, new_state.target_critic_params, state.target_critic_params)


# --- native condensed kernels ----------------------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("g++") is None, reason="native kernels are built with g++, not on PATH")
def test_native_kernels_equal_masked_over_200_updates_with_topology_updates():
    """200 updates of 75% RigL (fan_in) SAC, 2 seeds vmapped: topology updates every 50 (dense gradients there,
    new indices after), the target critics Polyak-averaged on the online masks and run on the online indices."""
    spec = envs.env_spec("gymnax:Pendulum-v1")
    updates, seeds = 200, 2
    batches = jax.vmap(lambda key: jax.vmap(lambda step_key: _batch(spec, 16, step_key))(jax.random.split(key, updates)))(
        jax.random.split(jax.random.key(1), seeds))
    update_keys = jax.random.split(jax.random.key(2), (seeds, updates))

    def final_state(kernels):
        config = _config(**{"sparse.sparsity": 0.75, "sparse.distribution": "uniform", "sparse.structure": "fan_in",
                            "sparse.rigl.update_period": 50, "network.hidden_sizes": (32,),
                            "sparse.kernels": kernels})
        agent = sac.make(config, spec)

        def train(key, seed_batches, seed_keys):
            def step(state, inputs):
                return agent.update(state, *inputs)

            return jax.lax.scan(step, agent.init(key), (seed_batches, seed_keys))

        init_keys = jax.random.split(jax.random.key(0), seeds)
        return jax.vmap(agent.init)(init_keys), *jax.jit(jax.vmap(train))(init_keys, batches, update_keys)

    (_, masked, masked_metrics), (initial, native, native_metrics) = final_state("masked"), final_state("native")
    assert native.actor.indices and native.critic.indices and not masked.critic.indices
    moved = jax.tree.map(lambda first, last: bool(np.any(first != last)), initial.critic.indices, native.critic.indices)
    assert any(jax.tree.leaves(moved))  # the topology updates moved the indices
    for name in masked_metrics:
        np.testing.assert_allclose(native_metrics[name], masked_metrics[name], rtol=1e-4, atol=1e-5, err_msg=name)
    for masked_leaf, native_leaf in zip(jax.tree.leaves((masked.actor.params, masked.critic.params,
                                                         masked.target_critic_params, masked.log_alpha)),
                                        jax.tree.leaves((native.actor.params, native.critic.params,
                                                         native.target_critic_params, native.log_alpha))):
        np.testing.assert_allclose(native_leaf, masked_leaf, rtol=1e-4, atol=1e-5)
