"""The loops that drive agents over a vector of seeds (DESIGN contract 1).

Every agent function is vmapped over a leading seed axis; only the gradient
step counter `state.step` is shared by all seeds (it is unbatched, so
`lax.cond` on the schedules stays a real branch under vmap). Each env step
makes one jitted call that stores the transition in the device replay, takes
a gradient step when due, recycles dormant neurons when due (ReDo, inside
jit), and picks the next actions. Only observations and actions cross between
host and device in the loop; metrics are fetched at log time.
"""

import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sparserl import dormancy, replay as replay_lib
from sparserl.agent import Agent
from sparserl.envs import EnvSpec, SeedEnvs
from sparserl.logging import MetricsWriter, ProgressPrinter


def seed_axes(state: Any) -> Any:
    """vmap axes of a TrainState: 0 everywhere but the shared step counter."""
    return jax.tree.map(lambda _: 0, state).replace(step=None)


def seed_keys(seeds) -> jax.Array:
    """One key per seed, a function of the seed value only (so seed i of a batch equals a run of that seed)."""
    return jax.vmap(jax.random.key)(jnp.asarray(seeds, jnp.uint32))


def _split_rng(state):
    rng, key = jax.random.split(state.rng)
    return state.replace(rng=rng), key


def init_states(agent: Agent, seeds) -> Any:
    """The vmapped initial TrainState of every seed."""
    abstract = jax.eval_shape(agent.init, jax.random.key(0))
    return jax.jit(jax.vmap(agent.init, out_axes=seed_axes(abstract)))(seed_keys(seeds))


def nan_like(tree: Any) -> Any:
    return jax.tree.map(lambda leaf: jnp.full(leaf.shape, jnp.nan, leaf.dtype), tree)


def make_off_policy_step(agent: Agent, config: ml_collections.ConfigDict, state_axes: Any) -> Callable:
    """The jitted per-env-step function of DQN and SAC: store, learn when due, recycle when due, act."""
    recycle_schedule = dormancy.RecycleSchedule(period=config.redo.period)

    def step(state, replay, transition, observations, env_step):
        replay = replay_lib.add(replay, transition)
        state, sample_key = _split_rng(state)
        state, update_key = _split_rng(state)
        state, redo_key = _split_rng(state)
        state, act_key = _split_rng(state)

        def learn(state):
            return agent.update(state, replay_lib.sample(replay, sample_key, config.batch_size), update_key)

        def skip(state):
            return state, nan_like(jax.eval_shape(learn, state)[1])

        is_learning_step = (env_step >= config.learning_starts) & (env_step % config.train_every == 0)
        state, metrics = jax.lax.cond(is_learning_step, learn, skip, state)

        recycled = jnp.zeros((), jnp.int32)
        if config.redo.enabled:
            def recycle(state):
                batch_key, recycle_key = jax.random.split(redo_key)
                return agent.recycle(state, replay_lib.sample(replay, batch_key, config.redo.batch_size), recycle_key)

            state, recycled = jax.lax.cond(
                is_learning_step & recycle_schedule.is_due(state.step), recycle, lambda s: (s, recycled), state
            )
        actions = agent.act(state, observations, act_key, env_step + 1, True)
        return state, replay, actions, metrics, recycled

    batched = jax.vmap(step, in_axes=(state_axes, 0, 0, 0, None), out_axes=(state_axes, 0, 0, 0, 0))
    return jax.jit(batched, donate_argnums=(0, 1))


def make_actor(agent: Agent, state_axes: Any, explore: bool) -> Callable:
    """Jitted vmapped `act` for a batch of observations per seed."""
    return jax.jit(
        jax.vmap(lambda state, observations, key, env_step: agent.act(state, observations, key, env_step, explore),
                 in_axes=(state_axes, 0, 0, None))
    )


def evaluate(actor: Callable, state: Any, config: ml_collections.ConfigDict, seeds, eval_index: int) -> np.ndarray:
    """Mean return of `config.eval_episodes` evaluation episodes per seed (one env per episode, run side by side).

    Eval envs and keys are functions of (seed, eval_index) only, so the result
    does not depend on which other seeds share the process.
    """
    envs = SeedEnvs(config.env, [seed + 1_000_003 * (eval_index + 1) for seed in seeds], config.eval_episodes)
    observations = envs.reset()
    returns = np.full(observations.shape[:2], np.nan)
    keys = jax.vmap(lambda seed: jax.random.fold_in(jax.random.key(seed), eval_index))(jnp.asarray(seeds, jnp.uint32))
    while np.isnan(returns).any():
        keys, act_keys = jax.vmap(jax.random.split, out_axes=1)(keys)
        actions = np.asarray(actor(state, observations, act_keys, 0))
        result = envs.step(actions)
        finished = ~np.isnan(result.episode_return) & np.isnan(returns)
        returns[finished] = result.episode_return[finished]
        observations = result.observation
    envs.close()
    return returns.mean(axis=1)


def _mean_over_seeds(rows: list[dict]) -> dict[str, float]:
    """Mean of each metric over the seeds that have a value (for the console line)."""
    means = {}
    for name in rows[0]:
        values = np.asarray([row[name] for row in rows], np.float64)
        means[name] = float(np.mean(values[~np.isnan(values)])) if (~np.isnan(values)).any() else np.nan
    return means


def _host(tree: Any) -> Any:
    return jax.tree.map(np.asarray, jax.device_get(tree))


def run_off_policy(agent: Agent, config: ml_collections.ConfigDict, seeds, writers: list[MetricsWriter],
                   progress: ProgressPrinter, env_spec: EnvSpec) -> None:
    """Trains one agent per seed for `config.steps` env steps, logging every `log_every` and evaluating every `eval_every`."""
    state = init_states(agent, seeds)
    state_axes = seed_axes(state)
    train_step = make_off_policy_step(agent, config, state_axes)
    measure = jax.jit(jax.vmap(
        lambda state, replay, key: agent.measure(state, replay_lib.sample(replay, key, config.redo.batch_size)),
        in_axes=(state_axes, 0, 0)))
    explore_actor = make_actor(agent, state_axes, explore=True)
    eval_actor = make_actor(agent, state_axes, explore=False)

    num_seeds = len(seeds)
    action_shape = () if env_spec.discrete else (env_spec.num_actions,)
    action_dtype = jnp.int32 if env_spec.discrete else jnp.float32
    replay = jax.vmap(lambda _: replay_lib.init(
        config.replay_capacity, env_spec.observation_shape, env_spec.observation_dtype, action_shape, action_dtype
    ))(jnp.arange(num_seeds))
    envs = SeedEnvs(config.env, seeds)
    observations = envs.reset()
    first_keys = jax.vmap(lambda seed: jax.random.fold_in(jax.random.key(seed), 2**31 - 1))(jnp.asarray(seeds, jnp.uint32))
    actions = explore_actor(state, observations, first_keys, 0)

    window_returns: list[list[float]] = [[] for _ in seeds]
    last_metrics, recycled_total = None, np.zeros(num_seeds, np.int64)
    window_start, window_time = 0, time.perf_counter()
    for env_step in range(config.steps):
        host_actions = np.asarray(actions)
        result = envs.step(host_actions)
        transition = replay_lib.Transition(
            observations[:, 0], host_actions[:, 0], result.reward[:, 0], result.next_observation[:, 0], result.terminated[:, 0]
        )
        state, replay, actions, update_metrics, recycled = train_step(state, replay, transition, result.observation, env_step)
        observations = result.observation
        if env_step >= config.learning_starts:
            last_metrics = update_metrics
        recycled_total += np.asarray(recycled) if config.redo.enabled else 0
        for seed_index, episode_return in enumerate(result.episode_return[:, 0]):
            if not np.isnan(episode_return):
                window_returns[seed_index].append(float(episode_return))

        done = env_step + 1
        if done % config.log_every == 0 or done == config.steps:
            now = time.perf_counter()
            sps = (done - window_start) / max(now - window_time, 1e-9)
            keys = jax.vmap(lambda seed: jax.random.fold_in(jax.random.key(seed), done))(jnp.asarray(seeds, jnp.uint32))
            network_metrics = _host(measure(state, replay, keys))
            update_host = _host(last_metrics) if last_metrics is not None else {}
            rows = []
            for seed_index, writer in enumerate(writers):
                row = {"train/episode_return": np.mean(window_returns[seed_index]) if window_returns[seed_index] else np.nan}
                row.update({name: value[seed_index] for name, value in update_host.items()})
                row["sps"] = sps
                row.update({name: value[seed_index] for name, value in network_metrics.items()})
                if config.redo.enabled:
                    row["redo/recycled"] = recycled_total[seed_index]
                writer.write(done, row)
                rows.append(row)
            progress.update(done, _mean_over_seeds(rows), final=done == config.steps)
            window_returns = [[] for _ in seeds]
            window_start, window_time = done, time.perf_counter()
        if done % config.eval_every == 0 or done == config.steps:
            eval_start = time.perf_counter()
            eval_returns = evaluate(eval_actor, state, config, seeds, done // config.eval_every)
            for seed_index, writer in enumerate(writers):
                writer.write(done, {"eval/episode_return": eval_returns[seed_index]}, kind="eval")
            print(f"  eval at step {done:,}: return {np.mean(eval_returns):.1f} (mean of {len(seeds)} seed(s))", flush=True)
            window_time += time.perf_counter() - eval_start
    envs.close()


class Rollout(NamedTuple):
    """One on-policy rollout per seed, arrays [rollout_steps, envs_per_seed, ...] (a leading seed axis in the runner).

    `next_observation[t]` is the true s' of step t: the final observation
    where an episode ended (terminated or truncated), else `observation[t + 1]`.
    """

    observation: Any
    action: Any
    reward: Any
    terminated: Any
    truncated: Any
    next_observation: Any


def run_on_policy(agent: Agent, config: ml_collections.ConfigDict, seeds, writers: list[MetricsWriter],
                  progress: ProgressPrinter, env_spec: EnvSpec) -> None:
    """Trains one on-policy agent (PPO) per seed for at least `config.steps` env steps (whole rollouts).

    Each rollout is `config.num_envs` envs per seed x `config.rollout_steps`
    steps, collected on the host with one jitted vmapped `act` per env step,
    then one jitted vmapped `update` of the whole rollout. Metrics are logged
    after the first rollout that reaches each multiple of `log_every`, evaluations
    likewise for `eval_every`, and both after the last rollout.
    """
    state = init_states(agent, seeds)
    state_axes = seed_axes(state)
    num_seeds, num_envs, num_steps = len(seeds), config.num_envs, config.rollout_steps
    explore_actor = make_actor(agent, state_axes, explore=True)
    eval_actor = make_actor(agent, state_axes, explore=False)

    def draw_act_keys(state):
        state, key = _split_rng(state)
        return state, jax.random.key_data(jax.random.split(key, num_steps))

    def learn(state, batch):
        state, key = _split_rng(state)
        return agent.update(state, batch, key)

    draw_keys = jax.jit(jax.vmap(draw_act_keys, in_axes=(state_axes,), out_axes=(state_axes, 0)), donate_argnums=(0,))
    update = jax.jit(jax.vmap(learn, in_axes=(state_axes, 0), out_axes=(state_axes, 0)), donate_argnums=(0,))
    measure = jax.jit(jax.vmap(agent.measure, in_axes=(state_axes, 0)))

    envs = SeedEnvs(config.env, seeds, num_envs)
    observations = envs.reset()
    action_shape = () if env_spec.discrete else (env_spec.num_actions,)
    buffers = Rollout(
        observation=np.zeros((num_seeds, num_steps, *observations.shape[1:]), observations.dtype),
        action=np.zeros((num_seeds, num_steps, num_envs, *action_shape), np.int32 if env_spec.discrete else np.float32),
        reward=np.zeros((num_seeds, num_steps, num_envs), np.float32),
        terminated=np.zeros((num_seeds, num_steps, num_envs), bool),
        truncated=np.zeros((num_seeds, num_steps, num_envs), bool),
        next_observation=np.zeros((num_seeds, num_steps, *observations.shape[1:]), observations.dtype),
    )

    window_returns: list[list[float]] = [[] for _ in seeds]
    recycled_total = np.zeros(num_seeds, np.int64)
    done, eval_index = 0, 0
    next_log, next_eval = config.log_every, config.eval_every
    window_start, window_time = 0, time.perf_counter()
    while done < config.steps:
        state, act_keys = draw_keys(state)
        act_keys = np.asarray(act_keys)
        for t in range(num_steps):
            actions = np.asarray(explore_actor(state, observations, act_keys[:, t], done))
            env_actions = actions if env_spec.discrete else np.clip(actions, env_spec.action_low, env_spec.action_high)
            result = envs.step(env_actions)
            buffers.observation[:, t] = observations
            buffers.action[:, t] = actions
            buffers.reward[:, t] = result.reward
            buffers.terminated[:, t] = result.terminated
            buffers.truncated[:, t] = result.truncated
            buffers.next_observation[:, t] = result.next_observation
            for seed_index, env_index in zip(*np.nonzero(~np.isnan(result.episode_return))):
                window_returns[seed_index].append(float(result.episode_return[seed_index, env_index]))
            observations = result.observation
            done += num_envs
        state, update_metrics = update(state, buffers)
        update_metrics = _host(update_metrics)
        if "redo/recycled" in update_metrics:
            recycled_total += update_metrics.pop("redo/recycled").astype(np.int64)

        final = done >= config.steps
        if done >= next_log or final:
            now = time.perf_counter()
            sps = (done - window_start) / max(now - window_time, 1e-9)
            network_metrics = _host(measure(state, buffers))
            rows = []
            for seed_index, writer in enumerate(writers):
                row = {"train/episode_return": np.mean(window_returns[seed_index]) if window_returns[seed_index] else np.nan}
                row.update({name: value[seed_index] for name, value in update_metrics.items()})
                row["sps"] = sps
                row.update({name: value[seed_index] for name, value in network_metrics.items()})
                if config.redo.enabled:
                    row["redo/recycled"] = recycled_total[seed_index]
                writer.write(done, row)
                rows.append(row)
            progress.update(done, _mean_over_seeds(rows), final=final)
            window_returns = [[] for _ in seeds]
            while next_log <= done:
                next_log += config.log_every
            window_start, window_time = done, time.perf_counter()
        if done >= next_eval or final:
            eval_start = time.perf_counter()
            eval_index += 1
            eval_returns = evaluate(eval_actor, state, config, seeds, eval_index)
            for seed_index, writer in enumerate(writers):
                writer.write(done, {"eval/episode_return": eval_returns[seed_index]}, kind="eval")
            print(f"  eval at step {done:,}: return {np.mean(eval_returns):.1f} (mean of {len(seeds)} seed(s))", flush=True)
            while next_eval <= done:
                next_eval += config.eval_every
            window_time += time.perf_counter() - eval_start
    envs.close()


LOOPS = {"off_policy": run_off_policy, "on_policy": run_on_policy}
