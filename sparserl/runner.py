"""The loops that drive agents over a vector of seeds (docs/design.md contract 1).

Every agent function is vmapped over a leading seed axis; only the gradient
step counter `state.step` is shared by all seeds (it is unbatched, so
`lax.cond` on the schedules stays a real branch under vmap). Each env step
makes one jitted call that stores the transition in the device replay, takes
a gradient step when due (the agent's `update`, which also runs ReDo on its
schedule), and picks the next actions. Only observations and actions cross
between host and device in the loop; metrics are fetched at log time. On the
host, `MetricsLog` writes the metrics and `run_guard.RunGuard` the checkpoints.
"""

import contextlib
import dataclasses
import functools
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sparserl.agents.ppo import Rollout
from sparserl import replay as replay_lib, sparse_network
from sparserl.checkpoint import Checkpointer
from sparserl.agent import Agent
from sparserl.envs import EnvSpec, SeedEnvs
from sparserl.reporting import MetricsWriter, ProgressPrinter
from sparserl.preemption import StopRequests
from sparserl.run_guard import RunGuard


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
    states = jax.jit(jax.vmap(agent.init, out_axes=seed_axes(abstract)))(seed_keys(seeds))
    # Wait for it: with jaxlib 0.10 on CPU, compiling the next program while this one still runs
    # sometimes never finishes (a deadlock measured in the PPO tests, about one run in two).
    return jax.block_until_ready(states)


def nan_like(tree: Any) -> Any:
    return jax.tree.map(lambda leaf: jnp.full(leaf.shape, jnp.nan, leaf.dtype), tree)


def _branch(flag, true_fn: Callable, false_fn: Callable, operand):
    """`true_fn(operand)` if `flag` else `false_fn(operand)`: decided in Python when `flag` is a Python bool, by
    `lax.cond` when it is traced. On CPU an update inside a `lax.cond` runs slower than the same update alone,
    even where the branch is always taken (an Atari DQN learn step 14-35% slower; before `networks.Im2colConv`,
    convolutions inside a cond were about 10x slower), so the host loop decides on the host and compiles one
    program per branch (docs/design.md section 7)."""
    if isinstance(flag, bool):
        return true_fn(operand) if flag else false_fn(operand)
    return jax.lax.cond(flag, true_fn, false_fn, operand)


def is_learning_step(env_step, learn_from, config: ml_collections.ConfigDict):
    """Whether env step `env_step` (a Python int or traced) takes the learning step's `gradient_steps` updates."""
    return (env_step >= learn_from) & (env_step % config.train_every == 0)


def off_policy_step(agent: Agent, config: ml_collections.ConfigDict) -> Callable:
    """One seed's env step of DQN and SAC after the env moved: store, learn when due, act.

    `step(state, replay, transition, observations, env_step, learn, plan=None) -> (state, replay, actions,
    metrics)`. A learning step takes `gradient_steps` updates, each on its own batch (a `lax.scan` when more than
    one; its metrics are their mean); metrics are NaN where no update was taken. Each update may draw more
    transitions from the replay (`sample`: ReDo's batch, `dormancy.recycle_when_due`). `learn` is a Python bool
    (the host loop, `OffPolicyStep`) or a traced one (the compiled loop, `sparserl.compiled_runner`, inside its
    scan); see `_branch`. `plan` is `agent.plan(first_update, gradient_steps)` of this step's updates where the
    caller knows their numbers (the host loop), else None.
    """

    def sample_and_update(state, keys, plan):
        replay, sample_key, update_key = keys
        sample = functools.partial(replay_lib.sample, replay)
        return agent.update(state, sample(sample_key, config.batch_size), update_key, sample, plan)

    def learn_from(operands, plan=None):
        state, replay, sample_key, update_key = operands
        if config.gradient_steps == 1:
            return sample_and_update(state, (replay, sample_key, update_key), plan)
        keys = (jax.random.split(sample_key, config.gradient_steps), jax.random.split(update_key, config.gradient_steps))
        state, metrics = jax.lax.scan(lambda state, keys: sample_and_update(state, (replay, *keys), plan), state, keys)
        return state, jax.tree.map(lambda values: jnp.mean(values, axis=0), metrics)

    def skip_learning(operands):
        return operands[0], nan_like(jax.eval_shape(learn_from, operands)[1])

    def step(state, replay, transition, observations, env_step, learn, plan=None):
        replay = replay_lib.add(replay, transition)
        # The fourth key went to ReDo when the runner ran it; it stays drawn so that the act keys (and every
        # seeded run) are what they were.
        rng, sample_key, update_key, _, act_key = jax.random.split(state.rng, 5)
        state = state.replace(rng=rng)
        state, metrics = _branch(learn, functools.partial(learn_from, plan=plan), skip_learning,
                                 (state, replay, sample_key, update_key))
        actions = agent.act(state, observations, act_key, env_step + 1, True)
        return state, replay, actions, metrics

    return step


class OffPolicyStep:
    """The host loop's per-env-step call of DQN and SAC (`off_policy_step`, vmapped over seeds).

    `step(state, replay, transition, observations, env_step, learn_from)` returns
    `(state, replay, actions, metrics)`. Whether a step learns (a function of
    the env step), and the agent's `plan` of the updates it takes (of the
    gradient update count, read once from the state and then counted here), are
    decided on the host, which picks one jitted program per (learn, plan) (see
    `_branch`; with ReDo: a program for the steps it is due on, one for the
    others). The program of a step that only acts returns the new RNG key
    rather than the whole TrainState, which it neither changes nor takes over
    (fewer buffers to hand over per call).
    """

    def __init__(self, agent: Agent, config: ml_collections.ConfigDict, state_axes: Any):
        self.agent, self.config = agent, config
        self.gradient_updates: int | None = None  # the state's `step`, read once at the first learning step
        step = off_policy_step(agent, config)

        @functools.cache
        def program(learn: bool, plan) -> Callable:
            def call(state, replay, transition, observations, env_step):
                state, replay, actions, metrics = step(state, replay, transition, observations, env_step, learn, plan)
                return state if learn else state.rng, replay, actions, metrics

            state_out = state_axes if learn else 0
            batched = jax.vmap(call, in_axes=(state_axes, 0, 0, 0, None), out_axes=(state_out, 0, 0, 0))
            return jax.jit(batched, donate_argnums=(0, 1) if learn else (1,))

        self.program = program

    def __call__(self, state, replay, transition, observations, env_step: int, learn_from: int):
        learn = bool(is_learning_step(env_step, learn_from, self.config))
        plan = None
        if learn:
            if self.gradient_updates is None:
                self.gradient_updates = int(state.step)
            plan = self.agent.plan(self.gradient_updates + 1, self.config.gradient_steps)
            self.gradient_updates += self.config.gradient_steps
        new_state, replay, actions, metrics = self.program(learn, plan)(state, replay, transition, observations, env_step)
        state = new_state if learn else state.replace(rng=new_state)
        return state, replay, actions, metrics


def make_actor(agent: Agent, state_axes: Any, explore: bool) -> Callable:
    """Jitted vmapped `act` for a batch of observations per seed."""
    return jax.jit(
        jax.vmap(lambda state, observations, key, env_step: agent.act(state, observations, key, env_step, explore),
                 in_axes=(state_axes, 0, 0, None))
    )


def evaluate(actor: Callable, state: Any, config: ml_collections.ConfigDict, seeds, eval_step: int) -> np.ndarray:
    """Mean return of `config.eval_episodes` evaluation episodes per seed (one env per episode, run side by side).

    Eval envs and keys are functions of (seed, eval_step) only, so the result
    does not depend on which other seeds share the process, nor on a resume.
    """
    envs = SeedEnvs(config.env, [seed + 1_000_003 * (eval_step + 1) for seed in seeds], config.eval_episodes)
    observations = envs.reset()
    returns = np.full(observations.shape[:2], np.nan)
    keys = jax.vmap(lambda seed: jax.random.fold_in(jax.random.key(seed), eval_step))(jnp.asarray(seeds, jnp.uint32))
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


@dataclasses.dataclass
class Run:
    """Where a loop writes: one seed directory per seed, its writers, the console and checkpoints."""

    seeds: list[int]
    writers: list[MetricsWriter]
    progress: ProgressPrinter
    checkpointer: Checkpointer
    stop_requests: StopRequests = dataclasses.field(default_factory=StopRequests)
    resume_step: int | None = None


def network_params(state: Any) -> dict[str, Any]:
    """The params of every network of an agent state (its `sparse_network.NetworkState` fields), by field name."""
    return {field.name: getattr(state, field.name).params for field in dataclasses.fields(state)
            if isinstance(getattr(state, field.name), sparse_network.NetworkState)}


@jax.jit
def _changed_per_seed(before: dict[str, Any], after: dict[str, Any]) -> dict[str, jax.Array]:
    """Per network, per seed (leading axis): whether any parameter differs."""
    def changed(old, new):
        return jnp.any(old != new, axis=tuple(range(1, old.ndim)))

    return {name: jnp.any(jnp.stack(jax.tree.leaves(jax.tree.map(changed, before[name], after[name]))), axis=0)
            for name in before}


class FrozenNetworkWatch:
    """Notices a network whose parameters got exactly no update over a whole log window of gradient steps.

    That is never training: a layer without a path from input to output, a
    zero learning rate, or a sparse mask that blocks every gradient. Each log
    row gets `warnings/frozen/<network>` (1 frozen, 0 not; NaN while no gradient
    step was taken), and the console says so once per network.
    """

    def __init__(self, state: Any):
        self._reported: set[str] = set()
        self._remember(state)

    def _remember(self, state: Any) -> None:
        self._params = jax.tree.map(jnp.copy, network_params(state))  # copies: the loop donates the state's buffers
        self._updates = int(state.step)

    def check(self, state: Any, seeds: list[int], window: tuple[int, int]) -> dict[str, np.ndarray]:
        learned = int(state.step) > self._updates
        changed = _host(_changed_per_seed(self._params, network_params(state)))
        metrics = {}
        for name, network_changed in changed.items():
            frozen = learned & ~network_changed
            metrics[f"warnings/frozen/{name}"] = frozen.astype(np.float64) if learned else np.full(len(seeds), np.nan)
            if frozen.any() and name not in self._reported:
                self._reported.add(name)
                frozen_seeds = ", ".join(str(seed) for seed, is_frozen in zip(seeds, frozen) if is_frozen)
                print(f"  warning: the {name} network of seed(s) {frozen_seeds} got no update at all from step "
                      f"{window[0]:,} to {window[1]:,} (no path from input to output? a zero learning rate?); "
                      f"see warnings/frozen/{name}", flush=True)
        self._remember(state)
        return metrics


class MetricsLog:
    """The metrics of a run, as every loop hands them over: the returns of the episodes that end between logs,
    one row per seed at each log (update and network metrics, `sps`, frozen-network warnings; CSV and
    TensorBoard through `run.writers`), the console line, and the evaluation rows.

    `eval_returns(state, done)` gives the mean evaluation return per seed (host envs: `evaluate`; the compiled
    loop evaluates inside its own program). Time spent evaluating, or in `untimed()`, is left out of `sps`.
    """

    def __init__(self, run: Run, eval_returns: Callable[[Any, int], np.ndarray], state: Any):
        self.run, self.eval_returns = run, eval_returns
        self.frozen_watch = FrozenNetworkWatch(state)
        self.window_returns: list[list[float]] = [[] for _ in run.seeds]
        self.window_start = run.resume_step or 0
        self.window_time = time.perf_counter()

    def add_episodes(self, episode_return: np.ndarray) -> None:
        """Records the returns of the episodes that ended ([seeds, envs], NaN where none ended)."""
        for seed_index, env_index in zip(*np.nonzero(~np.isnan(episode_return))):
            self.window_returns[seed_index].append(float(episode_return[seed_index, env_index]))

    def log(self, done: int, state: Any, update_metrics: dict, network_metrics: dict, final: bool) -> None:
        """Writes one metrics row per seed and the console line."""
        network_metrics = {**network_metrics, **self.frozen_watch.check(state, self.run.seeds, (self.window_start, done))}
        sps = (done - self.window_start) / max(time.perf_counter() - self.window_time, 1e-9)
        rows = []
        for seed_index, writer in enumerate(self.run.writers):
            returns = self.window_returns[seed_index]
            row = {"train/episode_return": np.mean(returns) if returns else np.nan}
            row.update({name: value[seed_index] for name, value in update_metrics.items()})
            row["sps"] = sps
            row.update({name: value[seed_index] for name, value in network_metrics.items()})
            writer.write(done, row)
            rows.append(row)
        self.run.progress.update(done, _mean_over_seeds(rows), final=final)
        self.window_returns = [[] for _ in self.run.seeds]
        self.window_start, self.window_time = done, time.perf_counter()

    def evaluate(self, state: Any, done: int) -> None:
        with self.untimed():
            returns = self.eval_returns(state, done)
            for seed_index, writer in enumerate(self.run.writers):
                writer.write(done, {"eval/episode_return": returns[seed_index]}, kind="eval")
            print(f"  eval at step {done:,}: return {np.mean(returns):.1f} (mean of {len(returns)} seed(s))", flush=True)

    @contextlib.contextmanager
    def untimed(self):
        """Leaves the time spent inside out of the window's `sps` (evaluations, checkpoints)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.window_time += time.perf_counter() - started

    def loop_state(self, seed_index: int) -> dict:
        """What a checkpoint keeps of seed `seed_index`: the returns of the episodes that ended since the last log."""
        return {"window_returns": self.window_returns[seed_index]}

    def resume(self, state: Any, loop_states: list[dict]) -> None:
        """Takes back what `loop_state` gave a checkpoint (and forgets the params seen before the restore)."""
        self.window_returns = [loop_state.pop("window_returns") for loop_state in loop_states]
        self.frozen_watch = FrozenNetworkWatch(state)


def _restore_envs(envs: SeedEnvs, loop_states: list[dict], observations: np.ndarray, actions: np.ndarray):
    """Puts the envs back mid-episode; where an env could not be saved, every seed starts new episodes."""
    if any(loop_state["envs"] is None for loop_state in loop_states):
        print("  note: this env's state cannot be checkpointed; the resumed run starts new episodes", flush=True)
        return observations, actions
    for seed_index, loop_state in enumerate(loop_states):
        envs.restore_seed_state(seed_index, loop_state["envs"])
    return np.stack([s["observation"] for s in loop_states]), np.stack([s["pending_action"] for s in loop_states])


def run_off_policy(agent: Agent, config: ml_collections.ConfigDict, env_spec: EnvSpec, run: Run) -> None:
    """Trains one agent per seed for `config.steps` env steps: logs every `log_every`, evaluates every
    `eval_every`, checkpoints every `checkpoint_every` and at the end; resumes from `run.resume_step`."""
    seeds = run.seeds
    state = init_states(agent, seeds)
    state_axes = seed_axes(state)
    train_step = OffPolicyStep(agent, config, state_axes)
    measure = jax.jit(jax.vmap(
        lambda state, replay, key: agent.measure(state, replay_lib.sample(replay, key, config.dormancy.batch_size)),
        in_axes=(state_axes, 0, 0)))
    eval_actor = make_actor(agent, state_axes, explore=False)
    log = MetricsLog(run, lambda state, done: evaluate(eval_actor, state, config, seeds, done), state)
    guard = RunGuard(run)

    action_shape = () if env_spec.discrete else (env_spec.num_actions,)
    action_dtype = jnp.int32 if env_spec.discrete else jnp.float32
    replay = jax.vmap(lambda _: replay_lib.init(
        config.replay_capacity, env_spec.observation_shape, env_spec.observation_dtype, action_shape, action_dtype
    ))(jnp.arange(len(seeds)))
    envs = SeedEnvs(config.env, seeds)
    observations = envs.reset()
    first_keys = jax.vmap(lambda seed: jax.random.fold_in(jax.random.key(seed), 2**31 - 1))(jnp.asarray(seeds, jnp.uint32))
    actions = np.asarray(make_actor(agent, state_axes, explore=True)(state, observations, first_keys, 0))

    start, learn_from = 0, config.learning_starts
    arrays, array_axes = {"state": state}, {"state": state_axes}
    if config.checkpoint_replay:
        arrays["replay"], array_axes["replay"] = replay, jax.tree.map(lambda _: 0, replay)
    if run.resume_step is not None:
        arrays, loop_states = guard.restore(arrays, array_axes)
        state, replay = arrays["state"], arrays.get("replay", replay)
        log.resume(state, loop_states)
        start = run.resume_step
        if not config.checkpoint_replay:
            learn_from = start + config.learning_starts
            print(f"  the replay buffer was not checkpointed: it refills until step {learn_from:,}", flush=True)
        observations, actions = _restore_envs(envs, loop_states, observations, actions)

    last_metrics = None
    for env_step in range(start, config.steps):
        result = envs.step(actions)
        transition = replay_lib.Transition(
            observations[:, 0], actions[:, 0], result.reward[:, 0], result.next_observation[:, 0], result.terminated[:, 0]
        )
        state, replay, actions, update_metrics = train_step(state, replay, transition, result.observation, env_step,
                                                            learn_from)
        observations = result.observation
        if env_step >= learn_from and env_step % config.train_every == 0:
            last_metrics = update_metrics
        actions = np.asarray(actions)
        log.add_episodes(result.episode_return)

        done = env_step + 1
        final = done == config.steps
        if done % config.log_every == 0 or final:
            keys = jax.vmap(lambda seed: jax.random.fold_in(jax.random.key(seed), done))(jnp.asarray(seeds, jnp.uint32))
            update_metrics = _host(last_metrics) if last_metrics is not None else {}
            guard.check_losses(done, update_metrics)
            log.log(done, state, update_metrics, _host(measure(state, replay, keys)), final)
        if done % config.eval_every == 0 or final:
            log.evaluate(state, done)
        if done % config.checkpoint_every == 0 or final or run.stop_requests.requested:
            arrays = {"state": state, "replay": replay} if config.checkpoint_replay else {"state": state}
            loop_states = [{"envs": envs.seed_state(i), "observation": observations[i], "pending_action": actions[i],
                            **log.loop_state(i)} for i in range(len(seeds))]
            with log.untimed():
                guard.checkpoint(done, arrays, array_axes, loop_states)
            if not final:
                guard.stop_if_requested(done)
    envs.close()


def run_on_policy(agent: Agent, config: ml_collections.ConfigDict, env_spec: EnvSpec, run: Run) -> None:
    """Trains one on-policy agent (PPO) per seed for at least `config.steps` env steps (whole rollouts).

    Each rollout is `config.num_envs` envs per seed x `config.rollout_steps`
    steps, collected on the host with one jitted vmapped `act` per env step,
    then one jitted vmapped `update` of the whole rollout. After the rollout
    that reaches a multiple of `log_every` / `eval_every` / `checkpoint_every`
    (and after the last one) it logs / evaluates / checkpoints; checkpoints sit
    on rollout boundaries, so a resume starts a fresh rollout.
    """
    seeds = run.seeds
    state = init_states(agent, seeds)
    state_axes = seed_axes(state)
    num_seeds, num_envs, num_steps = len(seeds), config.num_envs, config.rollout_steps
    explore_actor = make_actor(agent, state_axes, explore=True)
    eval_actor = make_actor(agent, state_axes, explore=False)
    log = MetricsLog(run, lambda state, done: evaluate(eval_actor, state, config, seeds, done), state)
    guard = RunGuard(run)

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
    done = 0
    if run.resume_step is not None:
        arrays, loop_states = guard.restore({"state": state}, {"state": state_axes})
        state, done = arrays["state"], run.resume_step
        log.resume(state, loop_states)
        observations, _ = _restore_envs(envs, loop_states, observations, None)

    action_shape = () if env_spec.discrete else (env_spec.num_actions,)
    buffers = Rollout(
        observation=np.zeros((num_seeds, num_steps, *observations.shape[1:]), observations.dtype),
        action=np.zeros((num_seeds, num_steps, num_envs, *action_shape), np.int32 if env_spec.discrete else np.float32),
        reward=np.zeros((num_seeds, num_steps, num_envs), np.float32),
        terminated=np.zeros((num_seeds, num_steps, num_envs), bool),
        truncated=np.zeros((num_seeds, num_steps, num_envs), bool),
        next_observation=np.zeros((num_seeds, num_steps, *observations.shape[1:]), observations.dtype),
    )
    while done < config.steps:
        state, act_keys = draw_keys(state)
        act_keys = np.asarray(act_keys)
        start = done
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
            log.add_episodes(result.episode_return)
            observations = result.observation
            done += num_envs
        state, update_metrics = update(state, buffers)
        final = done >= config.steps
        reached = lambda every: done // every > start // every  # noqa: E731
        if reached(config.log_every) or final:
            update_metrics = _host(update_metrics)
            guard.check_losses(done, update_metrics)
            log.log(done, state, update_metrics, _host(measure(state, buffers)), final)
        if reached(config.eval_every) or final:
            log.evaluate(state, done)
        if reached(config.checkpoint_every) or final or run.stop_requests.requested:
            loop_states = [{"envs": envs.seed_state(i), "observation": observations[i], "pending_action": None,
                            **log.loop_state(i)} for i in range(num_seeds)]
            with log.untimed():
                guard.checkpoint(done, {"state": state}, {"state": state_axes}, loop_states)
            if not final:
                guard.stop_if_requested(done)
    envs.close()


LOOPS = {"off_policy": run_off_policy, "on_policy": run_on_policy}
