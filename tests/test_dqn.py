"""DQN: TD targets against a plain-Python computation, acting, and one update."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparserl.agents import dqn
from sparserl.configs import dqn as dqn_config
from sparserl import envs
from sparserl.configs.base import network_module
from sparserl.errors import ConfigError
from sparserl.replay import Transition


def test_td_errors_match_a_plain_python_loop():
    gamma = 0.9
    q_values = np.array([[1.0, 2.0], [0.5, -1.0], [3.0, 0.0], [0.0, 0.0]], np.float32)
    next_target_q = np.array([[4.0, 1.0], [2.0, 5.0], [-1.0, -2.0], [7.0, 3.0]], np.float32)
    # transition 1 is terminated (no bootstrap); transition 2 is truncated by a time limit: stored with
    # terminated=False and s' = the final observation, so it bootstraps like any other step.
    batch = Transition(
        observation=np.zeros((4, 1), np.float32),
        action=np.array([1, 0, 0, 1]),
        reward=np.array([1.0, -1.0, 0.5, 2.0], np.float32),
        next_observation=np.zeros((4, 1), np.float32),
        terminated=np.array([False, True, False, False]),
    )
    expected = []
    for i in range(4):
        bootstrap = 0.0 if batch.terminated[i] else gamma * max(next_target_q[i])
        expected.append(batch.reward[i] + bootstrap - q_values[i][batch.action[i]])
    errors = dqn.td_errors(jnp.asarray(q_values), jnp.asarray(next_target_q), jax.tree.map(jnp.asarray, batch), gamma)
    np.testing.assert_allclose(errors, expected, rtol=1e-6)
    np.testing.assert_allclose(expected, [1.0 + 3.6 - 2.0, -1.0 - 0.5, 0.5 - 0.9 - 3.0, 2.0 + 6.3 - 0.0], rtol=1e-6)


def _agent(**overrides):
    config = dqn_config.get_config()
    config.network.hidden_sizes = (32, 32)
    config.sparse.sparsity = 0.5
    config.update(overrides)
    return dqn.make(config, envs.env_spec("CartPole-v1")), config


def test_act_is_greedy_in_eval_and_random_at_the_start_of_training():
    agent, config = _agent()
    state = agent.init(jax.random.key(0))
    observations = jax.random.normal(jax.random.key(1), (512, 4))
    greedy = agent.act(state, observations, jax.random.key(2), 0, False)
    q_values = network_module(config.network, 2).apply({"params": state.online.params}, observations)
    np.testing.assert_array_equal(greedy, jnp.argmax(q_values, axis=-1))
    exploring = agent.act(state, observations, jax.random.key(2), 0, True)  # epsilon = 1 before learning starts
    assert 0.35 < float(jnp.mean(exploring == 0)) < 0.65


def test_random_actions_cover_every_action_uniformly():
    """Epsilon = 1 before learning starts: floor(u * num_actions) of one uniform draw, on Acrobot's 3 actions."""
    config = dqn_config.get_config()
    config.network.hidden_sizes = (8,)
    agent = dqn.make(config, envs.env_spec("Acrobot-v1"))
    actions = np.asarray(agent.act(agent.init(jax.random.key(0)), jnp.zeros((30_000, 6)), jax.random.key(1), 0, True))
    assert set(np.unique(actions)) == {0, 1, 2}
    np.testing.assert_allclose(np.bincount(actions) / actions.size, 1 / 3, atol=0.01)


def test_update_lowers_the_td_loss_and_keeps_the_mask():
    agent, _ = _agent(learning_rate=1e-2, target_update_period=1000)
    state = agent.init(jax.random.key(0))
    keys = jax.random.split(jax.random.key(3), 5)
    batch = Transition(
        observation=jax.random.normal(keys[0], (64, 4)),
        action=jax.random.randint(keys[1], (64,), 0, 2),
        reward=jax.random.normal(keys[2], (64,)),
        next_observation=jax.random.normal(keys[3], (64, 4)),
        terminated=jax.random.bernoulli(keys[4], 0.2, (64,)),
    )
    update = jax.jit(agent.update)
    first_loss = None
    for _ in range(50):
        state, metrics = update(state, batch, jax.random.key(4))
        first_loss = first_loss if first_loss is not None else float(metrics["loss/td"])
    assert float(metrics["loss/td"]) < 0.5 * first_loss
    assert int(state.step) == 50
    masks = state.online.opt_state.masks
    assert all(bool(jnp.all(jnp.where(mask, True, param == 0))) for mask, param in
               zip(jax.tree.leaves(masks), jax.tree.leaves(state.online.params)))


def _hand_batch():
    return Transition(
        observation=jax.random.normal(jax.random.key(10), (6, 4)),
        action=jnp.array([0, 1, 1, 0, 1, 0]),
        reward=jnp.array([5.0, -3.0, 0.5, 0.0, 2.0, -0.2]),
        next_observation=jax.random.normal(jax.random.key(11), (6, 4)),
        terminated=jnp.array([False, True, False, False, True, False]),
    )


@pytest.mark.parametrize("td_loss, reward_clip", [("mse", False), ("huber", False), ("huber", True)])
def test_loss_is_taken_against_the_target_network(td_loss, reward_clip):
    """loss/td by hand: squared error x^2 (TF-Agents) or Huber (Dopamine), rewards clipped to [-1, 1] when asked,
    bootstrapping from the target network's max_a Q(s', a), never the online one."""
    agent, config = _agent(td_loss=td_loss, reward_clip=reward_clip, gamma=0.9)
    state = agent.init(jax.random.key(0))
    state = state.replace(target_params=jax.tree.map(lambda p: 3.0 * p + 0.5, state.online.params))
    batch = _hand_batch()
    _, metrics = agent.update(state, batch, jax.random.key(1))
    module = network_module(config.network, 2)
    q = np.asarray(module.apply({"params": state.online.params}, batch.observation))
    next_q = np.asarray(module.apply({"params": state.target_params}, batch.next_observation))
    losses = []
    for i in range(6):
        reward = float(np.clip(batch.reward[i], -1, 1)) if reward_clip else float(batch.reward[i])
        error = reward + (0.0 if batch.terminated[i] else 0.9 * max(next_q[i])) - q[i][int(batch.action[i])]
        if td_loss == "mse":
            losses.append(error**2)
        else:
            losses.append(0.5 * error**2 if abs(error) <= 1 else abs(error) - 0.5)
    assert max(abs(error) for error in losses) > 1.0  # the Huber branch for large errors is exercised
    assert float(metrics["loss/td"]) == pytest.approx(np.mean(losses), rel=1e-5)


def test_weight_decay_is_an_l2_penalty_on_the_hidden_kernels():
    """The gradient of weight_decay * sum(w^2) over hidden kernels (Keras L2 on rigl's hidden Dense layers)."""
    params = {"dense_0": {"kernel": jnp.full((2, 3), 2.0), "bias": jnp.ones(3)},
              "output": {"kernel": jnp.full((3, 1), 4.0), "bias": jnp.ones(1)}}
    zeros = jax.tree.map(jnp.zeros_like, params)
    transform = dqn.hidden_kernel_l2(1e-2)
    updates, _ = transform.update(zeros, transform.init(params), params)
    np.testing.assert_allclose(updates["dense_0"]["kernel"], np.full((2, 3), 2 * 1e-2 * 2.0))
    for leaf in (updates["dense_0"]["bias"], updates["output"]["kernel"], updates["output"]["bias"]):
        np.testing.assert_array_equal(leaf, 0.0)


def test_classic_control_epsilon_is_random_then_constant():
    """dqn_gym_dense_config.gin: initial random collection, then the constant epsilon_greedy = 0.01."""
    agent, config = _agent()
    state = agent.init(jax.random.key(0))
    observations = jnp.zeros((4000, 4))
    greedy = agent.act(state, observations, jax.random.key(2), 0, False)
    for env_step, lowest, highest in ((config.learning_starts, 0.4, 0.6), (config.learning_starts + 1, 0.0, 0.01),
                                      (50_000, 0.0, 0.01)):
        exploring = agent.act(state, observations, jax.random.key(3), env_step, True)
        assert lowest <= float(jnp.mean(exploring != greedy)) <= highest, env_step


@pytest.mark.parametrize("reset_target", [False, True])
def test_redo_rewrites_the_target_only_when_asked(reset_target):
    """Dopamine's recycled DQN recycles the online network only; `redo.reset_target` also resets the target."""
    agent, config = _agent(redo=dict(enabled=True, tau=1.5, period=1, batch_size=64, reset_target=reset_target))
    state = agent.init(jax.random.key(0))
    state = state.replace(target_params=jax.tree.map(lambda p: p + 1.0, state.online.params))
    new_state, recycled = agent.recycle(state, _hand_batch(), jax.random.key(2))
    assert int(recycled.neurons) > 0
    changed = jax.tree.map(lambda old, new: np.asarray(old != new), state.online.params, new_state.online.params)
    assert any(leaf.any() for leaf in jax.tree.leaves(changed))
    for target, old_target, online, online_changed in zip(*map(jax.tree.leaves, (
            new_state.target_params, state.target_params, new_state.online.params, changed))):
        if not reset_target:
            np.testing.assert_array_equal(target, old_target)
            continue
        # Every rewritten entry takes the online value (a bias zeroed again is rewritten but unchanged).
        np.testing.assert_array_equal(target[online_changed], online[online_changed])
        assert np.all((target == online) | (target == old_target))


def test_update_recycles_dead_neurons_in_the_runner():
    """DQN's update recycles, through the off-policy runner's step, a network with 20 planted dead neurons
    (bias -100) on a batch sampled from the replay: they are recycled."""
    from sparserl import loop, replay as replay_lib, runner

    agent, config = _agent(learning_starts=0, batch_size=8, redo=dict(enabled=True, tau=0.1, period=1, batch_size=8,
                                                                       reset_target=False))
    state = loop.init_states(agent, [0])
    bias = state.online.params["dense_0"]["bias"]
    state = state.replace(online=state.online.replace(params={
        **state.online.params, "dense_0": {**state.online.params["dense_0"], "bias": bias.at[:, :20].set(-100.0)}}))
    step = runner.OffPolicyStep(agent, config, loop.seed_axes(state))
    replay = jax.vmap(lambda _: replay_lib.init(16, (4,), jnp.float32))(jnp.arange(1))
    transition = jax.tree.map(lambda x: x[None], _hand_batch())
    transition = replay_lib.Transition(*(leaf[:, :1] for leaf in transition))  # [seed, one env, ...]
    new_state, _, _, _ = step(state, replay, transition, jnp.zeros((1, 1, 4)), 0, 0)
    assert int(new_state.recycled.neurons[0]) >= 20
    np.testing.assert_array_equal(new_state.online.params["dense_0"]["bias"][0, :20], 0.0)


def test_an_unknown_td_loss_is_a_config_error():
    with pytest.raises(ConfigError, match="^td_loss: unknown loss 'l1'; choose one of huber, mse$") as raised:
        _agent(td_loss="l1")
    assert raised.value.field == "td_loss"


@pytest.mark.skipif(shutil.which("g++") is None, reason="native kernels are built with g++, not on PATH")
def test_the_plan_decides_the_topology_and_target_branches_on_the_host_and_the_update_is_the_same():
    """`plan(u, 1)` for update u (gradient step s = u - 1) under RigL every 5 steps and a target copy every 4, by
    hand: a topology step at s = 5 and 10; the target keeps the online masks unless a topology step fell in
    [last copy, s). An update given the plan holds fewer `cond`s, and equals the update that decides in its
    program: on a topology step, right after one (the target's masks changed) and after the next copy."""
    config = dqn_config.get_config()
    config.network.hidden_sizes, config.target_update_period = (64, 64), 4
    config.sparse.update(method="rigl", structure="fan_in", kernels="native", sparsity=0.9)
    config.sparse.rigl.update_period = 5
    agent = dqn.make(config, envs.env_spec("CartPole-v1"))
    for step in range(13):
        plan = agent.plan(step + 1, 1)
        changed = any(step // 4 * 4 <= topology_step < step for topology_step in (5, 10))
        assert plan.topology == (step in (5, 10),) and plan.target_masks is not changed and plan.recycle is False
    assert agent.plan(1, 5).topology == (False,) and agent.plan(5, 3).topology == (None,)
    state = agent.init(jax.random.key(0))
    batch = _hand_batch()
    for step in (5, 6, 8):
        at_step = state.replace(step=jnp.asarray(step, jnp.int32))
        plan = agent.plan(step + 1, 1)
        planned = jax.jit(lambda state: agent.update(state, batch, jax.random.key(1), plan=plan))
        decided = jax.jit(lambda state: agent.update(state, batch, jax.random.key(1)))
        assert str(jax.make_jaxpr(planned)(at_step)).count("cond[") < str(jax.make_jaxpr(decided)(at_step)).count("cond[")
        (planned_state, planned_metrics), (decided_state, decided_metrics) = planned(at_step), decided(at_step)
        np.testing.assert_allclose(planned_metrics["loss/td"], decided_metrics["loss/td"], rtol=1e-6)
        for planned_leaf, decided_leaf in zip(jax.tree.leaves(planned_state.online), jax.tree.leaves(decided_state.online)):
            np.testing.assert_allclose(planned_leaf, decided_leaf, rtol=1e-5, atol=1e-6)
