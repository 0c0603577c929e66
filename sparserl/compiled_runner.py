"""The compiled loops for JAX-native envs (``gymnax:<id>``): one jitted call advances every seed by a log window.

The host loops (`sparserl.runner`) make a jitted call per env step and step
Gymnasium envs on the host. Here the env is a pure JAX function too
(`sparserl.envs.GymnaxEnv`), so a whole log window is one program, as in
PureJaxRL (Lu et al. 2022, "Discovered Policy Optimisation",
github.com/luchris429/purejaxrl): a `lax.scan` over env steps, vmapped over
seeds, with no host round trip inside.

- Off-policy (DQN, SAC): each scan step moves the env, then runs the host
  loop's own per-step function (`runner.off_policy_step`: store -> learn when
  due -> act) on the device replay.
- On-policy (PPO): a scan over rollouts; each rollout is a scan over env
  steps that fills a `ppo.Rollout` [rollout_steps, num_envs, ...], then
  the agent's `update` of that rollout.

The agents' pure `init/act/update/measure` are used unchanged (ReDo runs inside `update`). Every
key is a function of the seed (and the env step), so seed i of a vmapped run
equals a single-seed run of seed i. Metrics and the episode returns of the
window come back once per window; evaluation is one more jitted program on
fresh env states. The host keeps what the host loops keep (`runner.MetricsLog`:
CSV/TensorBoard rows, console line; `run_guard.RunGuard`: NaN stop, checkpoints);
checkpoints sit on window boundaries and hold the env states and keys, so a
resume continues exactly where the run stopped.
"""

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sparserl.agents.ppo import Rollout
from sparserl import replay as replay_lib, runner
from sparserl.agent import Agent
from sparserl.envs import EnvSpec, GymnaxEnv, GymnaxEnvState
from sparserl.run_guard import RunGuard

# Streams folded into a seed's key, apart from the agent's own (`agent.init(key(seed))`).
_FIRST_ACTION_STREAM = 2**31 - 1  # the off-policy loop's first action, as in the host loop
_ENV_STREAM = 2**31 - 2  # env resets and steps
_EVAL_STREAM = 2**31 - 3  # evaluation episodes (then folded with the eval step)
_MEASURE_STREAM = 2**31 - 4  # the replay batch that network metrics are measured on (then the env step)


def _stream(seed: jax.Array, stream: int) -> jax.Array:
    return jax.random.fold_in(jax.random.key(seed), stream)


def _split_rng(state):
    rng, key = jax.random.split(state.rng)
    return state.replace(rng=rng), key


# A seed's envs are one vmapped call; across seeds (and sweep levels) the calls run one after another
# (`sequential_vmap`). XLA on CPU computes an elementwise op (CartPole's sin and cos) on a vector of one
# seed's values and on a vector of several seeds' with different code, so the last bit could differ; one
# seed at a time keeps seed i of a batch equal to a run of seed i alone (DESIGN contract 1).


def _reset_envs(env: GymnaxEnv, key: jax.Array, num_envs: int) -> tuple[jax.Array, GymnaxEnvState]:
    reset = jax.custom_batching.sequential_vmap(lambda key: jax.vmap(env.reset)(jax.random.split(key, num_envs)))
    return reset(key)


def _step_envs(env: GymnaxEnv, key: jax.Array, env_state: GymnaxEnvState, actions: jax.Array):
    step = jax.custom_batching.sequential_vmap(
        lambda key, env_state, actions: jax.vmap(env.step)(jax.random.split(key, actions.shape[0]), env_state, actions)
    )
    return step(key, env_state, actions)


def env_actions(env_spec: EnvSpec, actions: jax.Array) -> jax.Array:
    """Actions as the env takes them: continuous ones clipped to the action bounds (PPO samples unbounded)."""
    if env_spec.discrete:
        return actions
    return jnp.clip(actions, jnp.asarray(env_spec.action_low), jnp.asarray(env_spec.action_high))


class EnvCarry(NamedTuple):
    """A seed's envs between windows: their states, the observations to act on, and the env key."""

    env_state: GymnaxEnvState
    observation: jax.Array  # [num_envs, *obs_shape]
    key: jax.Array


class OffPolicyCarry(NamedTuple):
    envs: EnvCarry
    action: jax.Array  # the pending action, chosen for `envs.observation`: [1, *action_shape]


class WindowOutput(NamedTuple):
    """What one window returns to the host, per seed."""

    episode_return: jax.Array  # [window steps * envs], NaN where no episode ended
    update_metrics: dict  # of the window's last gradient step
    network_metrics: dict  # sparsity, dormancy (and ReDo's count) at the window's end


def _init_envs(env: GymnaxEnv, seed: jax.Array, num_envs: int) -> EnvCarry:
    key, reset_key = jax.random.split(_stream(seed, _ENV_STREAM))
    observation, env_state = _reset_envs(env, reset_key, num_envs)
    return EnvCarry(env_state, observation, key)


def _evaluator(agent_for: Callable, env: GymnaxEnv, episodes: int) -> Callable:
    """One member's mean return of `episodes` greedy episodes on fresh envs, run side by side to their ends."""

    def evaluate(level, state, seed, eval_step):
        agent = agent_for(level)
        reset_key, key = jax.random.split(jax.random.fold_in(_stream(seed, _EVAL_STREAM), eval_step))
        observation, env_state = _reset_envs(env, reset_key, episodes)

        def unfinished(loop):
            return jnp.any(jnp.isnan(loop[3]))

        def step(loop):
            env_state, observation, key, returns = loop
            key, act_key, step_key = jax.random.split(key, 3)
            actions = agent.act(state, observation, act_key, 0, False)
            env_state, result = _step_envs(env, step_key, env_state, actions)
            returns = jnp.where(jnp.isnan(returns), result.episode_return, returns)
            return env_state, result.observation, key, returns

        returns = jnp.full((episodes,), jnp.nan, jnp.float32)
        return jnp.mean(jax.lax.while_loop(unfinished, step, (env_state, observation, key, returns))[3])

    return evaluate


class Members(NamedTuple):
    """The runs one program trains side by side (its vmapped axis): a seed and a sparsity level each.

    Without a sweep every member has the run's own level (unused: the agent is built once, concretely).
    """

    seeds: jax.Array  # uint32 [members]
    levels: jax.Array  # float32 [members]


def _init_states(agent_for: Callable, members: Members) -> tuple[Any, Any]:
    """Every member's initial TrainState (`agent.init(key(seed))`) and the vmap axes of a TrainState."""
    abstract = jax.eval_shape(agent_for(float(members.levels[0])).init, jax.random.key(0))
    axes = runner.seed_axes(abstract)
    init = jax.vmap(lambda level, key: agent_for(level).init(key), out_axes=axes)
    # Waited for, as in runner.init_states (jaxlib 0.10 CPU deadlock when compiling while this runs).
    return jax.block_until_ready(jax.jit(init)(members.levels, runner.seed_keys(members.seeds))), axes


def _window_ends(start: int, every: int, steps: int, granularity: int = 1):
    """Ends of the windows after `start`: the first multiple of `granularity` steps that reaches a multiple of
    `every`, or `steps`."""
    while start < steps:
        end = start
        while True:
            end += granularity
            if end // every > start // every or end >= steps:
                break
        yield start, end
        start = end


class _Host(NamedTuple):
    """The host side of a compiled run: its metrics log and its guard."""

    log: runner.MetricsLog
    guard: RunGuard


def _host_side(run: runner.Run, evaluate: Callable, state: Any, state_axes: Any, members: "Members") -> _Host:
    """A `MetricsLog` whose evaluation is `evaluate` jitted over the members, and a `RunGuard`."""
    evaluate_members = jax.jit(jax.vmap(evaluate, in_axes=(0, state_axes, 0, None)))
    eval_returns = lambda state, done: np.asarray(evaluate_members(members.levels, state, members.seeds, done))  # noqa: E731
    return _Host(runner.MetricsLog(run, eval_returns, state), RunGuard(run))


def _resume(host: _Host, arrays: dict, axes: dict) -> dict:
    """The arrays of checkpoint `run.resume_step`, shaped like `arrays`; the metrics log takes back its part."""
    arrays, loop_states = host.guard.restore(arrays, axes)
    host.log.resume(arrays["state"], loop_states)
    return arrays


def _close_window(host: _Host, config, start: int, done: int, output: WindowOutput,
                  learned: bool, state: Any, arrays: dict, axes: dict) -> None:
    """Host side of a window's end: episodes, a metrics row per seed, eval and checkpoint when due (and when
    SIGTERM/SIGINT asked the run to stop: then `Stopped` is raised after the checkpoint)."""
    output = jax.device_get(output)
    host.log.add_episodes(output.episode_return)
    final = done >= config.steps
    reached = lambda every: done // every > start // every or final  # noqa: E731
    update_metrics = output.update_metrics if learned else {}
    host.guard.check_losses(done, update_metrics)
    host.log.log(done, state, update_metrics, output.network_metrics, final)
    if reached(config.eval_every):
        host.log.evaluate(state, done)
    if reached(config.checkpoint_every) or host.guard.run.stop_requests.requested:
        with host.log.untimed():
            host.guard.checkpoint(done, arrays, axes, [host.log.loop_state(i) for i in range(len(host.guard.run.seeds))])
        if not final:
            host.guard.stop_if_requested(done)


def _seed_axes(arrays: dict, state_axes: Any) -> dict:
    """Checkpoint axes of {"state": ..., other arrays}: the state's own, seed axis 0 for the rest."""
    return {name: state_axes if name == "state" else jax.tree.map(lambda _: 0, tree) for name, tree in arrays.items()}


def _off_policy_window(agent_for: Callable, config: ml_collections.ConfigDict, env: GymnaxEnv, length: int) -> Callable:
    """One member's window of `length` env steps: env step, then `runner.off_policy_step`, in a scan."""

    def window(level, state, replay, carry: OffPolicyCarry, seed, start, learn_from):
        agent = agent_for(level)
        step = runner.off_policy_step(agent, config)

        def env_step(loop, env_step):
            state, replay, carry, last_metrics = loop
            key, step_key = jax.random.split(carry.envs.key)
            env_state, result = _step_envs(env, step_key, carry.envs.env_state, carry.action)
            transition = replay_lib.Transition(
                carry.envs.observation[0], carry.action[0], result.reward[0], result.next_observation[0],
                result.terminated[0],
            )
            learned = runner.is_learning_step(env_step, learn_from, config)
            state, replay, action, metrics = step(state, replay, transition, result.observation, env_step, learned)
            last_metrics = jax.tree.map(lambda new, old: jnp.where(learned, new, old), metrics, last_metrics)
            carry = OffPolicyCarry(EnvCarry(env_state, result.observation, key), action)
            return (state, replay, carry, last_metrics), result.episode_return[0]

        metrics_shape = jax.eval_shape(step, state, replay, jax.tree.map(lambda x: x[0], replay.storage),
                                       carry.envs.observation, start, True)[3]
        loop = (state, replay, carry, runner.nan_like(metrics_shape))
        (state, replay, carry, last_metrics), episode_return = jax.lax.scan(
            env_step, loop, start + jnp.arange(length)
        )
        end = start + length
        batch_key = jax.random.fold_in(_stream(seed, _MEASURE_STREAM), end)
        network_metrics = agent.measure(state, replay_lib.sample(replay, batch_key, config.dormancy.batch_size))
        return state, replay, carry, WindowOutput(episode_return, last_metrics, network_metrics)

    return window


def run_off_policy(agent: Agent, config: ml_collections.ConfigDict, env_spec: EnvSpec, run: runner.Run) -> None:
    """DQN and SAC on a gymnax env, `config.log_every` env steps per compiled call (see the module docstring)."""
    _run_off_policy(lambda level: agent, _members(run.seeds, config.sparse.sparsity), config, env_spec, run)


def _run_off_policy(agent_for: Callable, members: Members, config: ml_collections.ConfigDict, env_spec: EnvSpec,
                    run: runner.Run) -> None:
    env = GymnaxEnv(config.env)
    seed_values = members.seeds
    state, state_axes = _init_states(agent_for, members)
    host = _host_side(run, _evaluator(agent_for, env, config.eval_episodes), state, state_axes, members)

    def init_carry(level, state, seed):
        envs = _init_envs(env, seed, 1)
        first_key = _stream(seed, _FIRST_ACTION_STREAM)
        return OffPolicyCarry(envs, agent_for(level).act(state, envs.observation, first_key, 0, True))

    carry = jax.jit(jax.vmap(init_carry, in_axes=(0, state_axes, 0)))(members.levels, state, seed_values)
    action_shape = () if env_spec.discrete else (env_spec.num_actions,)
    action_dtype = jnp.int32 if env_spec.discrete else jnp.float32
    replay = jax.vmap(lambda _: replay_lib.init(
        config.replay_capacity, env_spec.observation_shape, env_spec.observation_dtype, action_shape, action_dtype
    ))(seed_values)

    def arrays_of(state, replay, carry):
        arrays = {"state": state, "loop": carry}
        return {**arrays, "replay": replay} if config.checkpoint_replay else arrays

    axes = _seed_axes(arrays_of(state, replay, carry), state_axes)
    start, learn_from = 0, config.learning_starts
    if run.resume_step is not None:
        arrays = _resume(host, arrays_of(state, replay, carry), axes)
        state, replay, carry = arrays["state"], arrays.get("replay", replay), arrays["loop"]
        start = run.resume_step
        if not config.checkpoint_replay:
            learn_from = start + config.learning_starts
            print(f"  the replay buffer was not checkpointed: it refills until step {learn_from:,}", flush=True)

    @functools.cache
    def compiled_window(length: int) -> Callable:
        window = jax.vmap(_off_policy_window(agent_for, config, env, length),
                          in_axes=(0, state_axes, 0, 0, 0, None, None), out_axes=(state_axes, 0, 0, 0))
        return jax.jit(window, donate_argnums=(1, 2, 3))

    for start, done in _window_ends(start, config.log_every, config.steps):
        state, replay, carry, output = compiled_window(done - start)(
            members.levels, state, replay, carry, seed_values, start, learn_from
        )
        jax.block_until_ready(output)
        first_update = max(start, learn_from) + (-max(start, learn_from)) % config.train_every
        _close_window(host, config, start, done, output, first_update < done, state,
                      arrays_of(state, replay, carry), axes)


def _on_policy_window(agent_for: Callable, config: ml_collections.ConfigDict, env_spec: EnvSpec, env: GymnaxEnv,
                      rollouts: int) -> Callable:
    """One member's window of `rollouts` PPO iterations: collect a rollout in a scan, then `agent.update` of it."""
    num_envs, num_steps = config.num_envs, config.rollout_steps

    def rollout(agent, state, envs: EnvCarry, start):
        state, key = _split_rng(state)
        act_keys = jax.random.split(key, num_steps)

        def env_step(envs: EnvCarry, inputs):
            t, act_key = inputs
            actions = agent.act(state, envs.observation, act_key, start + t * num_envs, True)
            key, step_key = jax.random.split(envs.key)
            env_state, result = _step_envs(env, step_key, envs.env_state, env_actions(env_spec, actions))
            transition = Rollout(envs.observation, actions, result.reward, result.terminated,
                                        result.truncated, result.next_observation)
            return EnvCarry(env_state, result.observation, key), (transition, result.episode_return)

        envs, (batch, episode_return) = jax.lax.scan(env_step, envs, (jnp.arange(num_steps), act_keys))
        state, key = _split_rng(state)
        state, metrics = agent.update(state, batch, key)
        return state, envs, batch, metrics, episode_return

    def window(level, state, envs: EnvCarry, start):
        agent = agent_for(level)

        def iteration(loop, index):
            state, envs, _ = loop
            state, envs, batch, metrics, episode_return = rollout(agent, state, envs, start + index * num_envs * num_steps)
            return (state, envs, batch), (metrics, episode_return)

        batch_shape = jax.eval_shape(functools.partial(rollout, agent), state, envs, start)[2]
        empty_batch = jax.tree.map(lambda leaf: jnp.zeros(leaf.shape, leaf.dtype), batch_shape)
        (state, envs, batch), (metrics, episode_return) = jax.lax.scan(
            iteration, (state, envs, empty_batch), jnp.arange(rollouts)
        )
        last_metrics = jax.tree.map(lambda values: values[-1], metrics)
        output = WindowOutput(episode_return.reshape(-1), last_metrics, agent.measure(state, batch))
        return state, envs, output

    return window


def run_on_policy(agent: Agent, config: ml_collections.ConfigDict, env_spec: EnvSpec, run: runner.Run) -> None:
    """PPO on a gymnax env: whole rollouts until a log window is reached, per compiled call.

    Windows end at the first rollout boundary that reaches a multiple of
    `log_every` (or the end), as in the host loop (`runner.run_on_policy`).
    """
    _run_on_policy(lambda level: agent, _members(run.seeds, config.sparse.sparsity), config, env_spec, run)


def _run_on_policy(agent_for: Callable, members: Members, config: ml_collections.ConfigDict, env_spec: EnvSpec,
                   run: runner.Run) -> None:
    env = GymnaxEnv(config.env)
    state, state_axes = _init_states(agent_for, members)
    host = _host_side(run, _evaluator(agent_for, env, config.eval_episodes), state, state_axes, members)
    envs = jax.jit(jax.vmap(lambda seed: _init_envs(env, seed, config.num_envs)))(members.seeds)
    axes = _seed_axes({"state": state, "loop": envs}, state_axes)
    start = 0
    if run.resume_step is not None:
        arrays = _resume(host, {"state": state, "loop": envs}, axes)
        state, envs, start = arrays["state"], arrays["loop"], run.resume_step

    @functools.cache
    def compiled_window(rollouts: int) -> Callable:
        window = jax.vmap(_on_policy_window(agent_for, config, env_spec, env, rollouts),
                          in_axes=(0, state_axes, 0, None), out_axes=(state_axes, 0, 0))
        return jax.jit(window, donate_argnums=(1, 2))

    rollout_size = config.num_envs * config.rollout_steps
    for start, done in _window_ends(start, config.log_every, config.steps, rollout_size):
        state, envs, output = compiled_window((done - start) // rollout_size)(members.levels, state, envs, start)
        jax.block_until_ready(output)
        _close_window(host, config, start, done, output, True, state, {"state": state, "loop": envs}, axes)


LOOPS = {"off_policy": run_off_policy, "on_policy": run_on_policy}
_SWEEP_LOOPS = {"off_policy": _run_off_policy, "on_policy": _run_on_policy}


def _members(seeds, level: float) -> Members:
    return Members(jnp.asarray(seeds, jnp.uint32), jnp.full(len(seeds), level, jnp.float32))


def with_sparsity(config: ml_collections.ConfigDict, level) -> ml_collections.ConfigDict:
    """A copy of `config` at sparsity `level` (a float, or a traced scalar inside a sweep)."""
    copy = config.copy_and_resolve_references()
    with copy.sparse.ignore_type():
        copy.sparse.sparsity = level
    return copy


def run_sweep(make_agent: Callable, loop: str, config: ml_collections.ConfigDict, env_spec: EnvSpec,
              levels, run: runner.Run) -> None:
    """Several sparsity levels of one method, each with the run's seeds, trained in one compiled program.

    The level is a traced value: the agent is built inside the vmapped program by
    `make_agent(with_sparsity(config, level))` (e.g. `agents.dqn.make` with the env spec bound), so ERK
    sparsities, mask counts and drop counts follow it (`sparserl.sparse`). `run` holds one writer and seed
    directory per member, level-major: level 0's seeds, then level 1's... Member (level, seed) equals a
    run of that seed at that level (`config.sparse.sparsity` = level), bit for bit where the level's float32
    arithmetic gives the same per-layer zero counts as the Python float: always in the tests' MLPs; a layer
    of 10^5+ weights may keep one weight more or less (tests/test_sparse_distributions.py).
    """
    num_seeds = len(run.seeds) // len(levels)
    members = Members(jnp.asarray(run.seeds, jnp.uint32), jnp.repeat(jnp.asarray(levels, jnp.float32), num_seeds))
    agent_for = lambda level: make_agent(with_sparsity(config, level))  # noqa: E731
    _SWEEP_LOOPS[loop](agent_for, members, config, env_spec, run)
