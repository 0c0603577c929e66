"""The compiled loops for JAX-native envs (``gymnax:<id>``): one jitted call advances every member by many log rows.

The host loops (`sparserl.runner`) make a jitted call per env step and step
Gymnasium envs on the host. Here the env is a pure JAX function too
(`sparserl.envs.GymnaxEnv`), so training is one program, as in PureJaxRL
(Lu et al. 2022, "Discovered Policy Optimisation", github.com/luchris429/purejaxrl):
`lax` loops over env steps for every member (a seed, or a sweep's level and
seed), the members vmapped or one after another (`member_loop`), with no host
round trip inside.

- Off-policy (DQN, SAC): an iteration steps a member's `num_envs` envs, then
  runs the host loop's own step (`loop.off_policy_step`: store -> learn when
  due -> act) on the device replay.
- On-policy (PPO): an iteration collects a rollout [rollout_steps, num_envs]
  in a scan, then runs the agent's `update` of it.

One program, compiled once per run, runs up to `MAX_ROWS` rows of the
schedule (`loop.Schedule`) per call: a loop over the call's rows, each a
`lax.while_loop` over the row's iterations (so rows of different lengths and
calls of different row counts share the program), then the row's network
metrics, its frozen-network flags (`metrics_log.frozen_flags`) and, where the
row evaluates, the greedy evaluation, all stacked per row. The host writes the rows after the call
(`loop.RunHost`), so logging often costs little. A call ends at a row that
checkpoints (checkpoints need the host) and after about `CALL_SECONDS`, so
that the console, SIGTERM and SIGINT are answered within seconds.

The agents' pure `init/act/update/measure` are used unchanged (ReDo runs inside `update`). Every
key is a function of the seed (and the env step), so seed i of a run of many
members equals a single-seed run of seed i (bit for bit where the members run
one after another, to float rounding where they are vmapped), and the rows are
the same however the calls group them. Checkpoints hold the env states and keys, so a resume
continues exactly where the run stopped.
"""

import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sparserl import loop, replay as replay_lib
from sparserl.agent_contract import Agent
from sparserl.batches import Rollout, Transition
from sparserl.envs import EnvSpec, GymnaxEnv, GymnaxEnvState
from sparserl.metrics_log import frozen_flags

MAX_ROWS = 64  # rows one call may run (the length of its stacked outputs; rows it does not run cost nothing)
CALL_SECONDS = 2.0  # about how long a call runs, from the time its rows took so far

# Streams folded into a seed's key, apart from the agent's own (`agent.init(key(seed))`).
_FIRST_ACTION_STREAM = 2**31 - 1  # the off-policy loop's first action, as in the host loop
_ENV_STREAM = 2**31 - 2  # env resets and steps
_EVAL_STREAM = 2**31 - 3  # evaluation episodes (then folded with the eval step)
_MEASURE_STREAM = 2**31 - 4  # the replay batch that network metrics are measured on (then the env step)


def _stream(seed: jax.Array, stream: int) -> jax.Array:
    return jax.random.fold_in(jax.random.key(seed), stream)


# A member's envs are one vmapped call, vmapped again over members where they run side by side. XLA on CPU
# computes an elementwise op (CartPole's sin and cos) on a vector of one member's values and on a vector of
# several members' with different code, so the last bit can differ from a run alone (docs/design.md contract
# 1); stepping the members' envs one after another (`jax.custom_batching.sequential_vmap`) kept that bit, at
# 5% of a 4-seed PPO program (214-230k against 204-217k env steps/s, 3 runs each). `member_loop=map` runs
# each member exactly as alone.


def _reset_envs(env: GymnaxEnv, key: jax.Array, num_envs: int) -> tuple[jax.Array, GymnaxEnvState]:
    return jax.vmap(env.reset)(jax.random.split(key, num_envs))


def _step_envs(env: GymnaxEnv, key: jax.Array, env_state: GymnaxEnvState, actions: jax.Array):
    return jax.vmap(env.step)(jax.random.split(key, actions.shape[0]), env_state, actions)


def env_actions(env_spec: EnvSpec, actions: jax.Array) -> jax.Array:
    """Actions as the env takes them: continuous ones clipped to the action bounds (PPO samples unbounded)."""
    if env_spec.discrete:
        return actions
    return jnp.clip(actions, jnp.asarray(env_spec.action_low), jnp.asarray(env_spec.action_high))


class EnvCarry(NamedTuple):
    """A seed's envs between iterations: their states, the observations to act on, and the env key."""

    env_state: GymnaxEnvState
    observation: jax.Array  # [num_envs, *obs_shape]
    key: jax.Array


class OffPolicyCarry(NamedTuple):
    envs: EnvCarry
    action: jax.Array  # the pending actions, chosen for `envs.observation`: [num_envs, *action_shape]


def _init_envs(env: GymnaxEnv, seed: jax.Array, num_envs: int) -> EnvCarry:
    key, reset_key = jax.random.split(_stream(seed, _ENV_STREAM))
    observation, env_state = _reset_envs(env, reset_key, num_envs)
    return EnvCarry(env_state, observation, key)


def _evaluate(agent: Agent, env: GymnaxEnv, episodes: int, state, seed, eval_step) -> jax.Array:
    """A member's mean return of `episodes` greedy episodes on fresh envs, run side by side to their ends."""
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


class Members(NamedTuple):
    """The runs one program trains side by side (its vmapped axis): a seed and a sparsity level each.

    Without a sweep every member has the run's own level (unused: the agent is built once, concretely).
    """

    seeds: jax.Array  # uint32 [members]
    levels: jax.Array  # float32 [members]


class CallPlan(NamedTuple):
    """The rows of one call, the same for every member (unbatched)."""

    start: jax.Array  # int32: the env step the call starts at
    row_ends: jax.Array  # int32 [MAX_ROWS]: each row's last env step (+1); rows past `rows` repeat the last end
    rows: jax.Array  # int32: the rows this call runs
    evaluates: jax.Array  # bool [MAX_ROWS]: whether the row ends with an evaluation
    learn_from: jax.Array  # int32: the first env step that may learn (off-policy)


class RowOutput(NamedTuple):
    """What a call returns of each row, per member."""

    return_sum: jax.Array  # the returns of the episodes that ended in the row, summed
    return_count: jax.Array  # and counted
    learned: jax.Array  # whether the row took a gradient step
    update_metrics: dict  # of its last gradient step (NaN: none)
    network_metrics: dict  # sparsity, dormancy, ReDo's count and frozen-network flags at its end
    eval_return: jax.Array  # the mean greedy return at its end (NaN: no evaluation)


class _RowTotals(NamedTuple):
    return_sum: jax.Array
    return_count: jax.Array
    learned: jax.Array
    update_metrics: dict


def _call_program(iterate: Callable, measured_batch: Callable, measure: Callable, evaluate: Callable,
                  granularity: int, metrics_shape: Any) -> Callable:
    """One member's call: up to MAX_ROWS rows, each `iterate` in a while loop from its start to its end.

    `iterate(state, carry, position, plan) -> (state, carry, update metrics, learned, episode returns)` advances
    `granularity` env steps. At a row's end `measure(state, measured_batch(carry, row_end))` (the agent's) gives
    its network metrics and, where the plan says so (a `lax.cond` on the unbatched plan), `evaluate(state,
    row_end)` its evaluation. The rows loop runs `plan.rows` times and writes row i of `outputs` ([MAX_ROWS, ...]):
    rows past `plan.rows` cost nothing and keep what `outputs` held.
    """

    def run_row(state, carry, plan: CallPlan, index):
        row_start = jnp.where(index == 0, plan.start, plan.row_ends[index - 1])
        row_end = plan.row_ends[index]

        def iteration(inner):
            state, carry, position, totals = inner
            state, carry, metrics, learned, returns = iterate(state, carry, position, plan)
            ended = ~jnp.isnan(returns)
            totals = _RowTotals(
                totals.return_sum + jnp.sum(jnp.where(ended, returns, 0.0)),
                totals.return_count + jnp.sum(ended, dtype=jnp.int32),
                totals.learned | learned,
                jax.tree.map(lambda new, old: jnp.where(learned, new, old), metrics, totals.update_metrics),
            )
            return state, carry, position + granularity, totals

        totals = _RowTotals(jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32), jnp.zeros((), bool),
                            loop.nan_like(metrics_shape))
        row_state, carry, _, totals = jax.lax.while_loop(
            lambda inner: inner[2] < row_end, iteration, (state, carry, row_start, totals))
        eval_return = jax.lax.cond(plan.evaluates[index], lambda: evaluate(row_state, row_end),
                                   lambda: jnp.full((), jnp.nan, jnp.float32))
        network_metrics = {**measure(row_state, measured_batch(carry, row_end)), **frozen_flags(state, row_state)}
        return row_state, carry, RowOutput(totals.return_sum, totals.return_count, totals.learned,
                                           totals.update_metrics, network_metrics, eval_return)

    run_row = jax.jit(run_row)  # inlined in the program; traced once for its shapes and its loop

    def call(state, carry, plan: CallPlan):
        def row(index, loop_state):
            state, carry, outputs = loop_state
            state, carry, output = run_row(state, carry, plan, index)
            outputs = jax.tree.map(lambda stacked, value: stacked.at[index].set(value), outputs, output)
            return state, carry, outputs

        output_shape = jax.eval_shape(run_row, state, carry, plan, 0)[2]
        outputs = jax.tree.map(lambda leaf: jnp.zeros((MAX_ROWS, *leaf.shape), leaf.dtype), output_shape)
        return jax.lax.fori_loop(0, plan.rows, row, (state, carry, outputs))

    return call


def _init_states(agent_for: Callable, members: Members) -> tuple[Any, Any]:
    """Every member's initial TrainState (`agent.init(key(seed))`) and the vmap axes of a TrainState."""
    abstract = jax.eval_shape(agent_for(float(members.levels[0])).init, jax.random.key(0))
    axes = loop.seed_axes(abstract)
    init = jax.vmap(lambda level, key: agent_for(level).init(key), out_axes=axes)
    # Waited for, as in loop.init_states (jaxlib 0.10 CPU deadlock when compiling while this runs).
    return jax.block_until_ready(jax.jit(init)(members.levels, loop.seed_keys(members.seeds))), axes


class _Loop(NamedTuple):
    """What differs between the off-policy and the on-policy compiled loop."""

    granularity: int  # env steps per iteration
    init_carry: Callable  # (agent, state, seed) -> the member's carry (envs, pending actions, replay)
    iterate: Callable  # (agent, seed) -> iterate(state, carry, position, plan) (see `_call_program`)
    measured_batch: Callable  # seed -> batch(carry, row_end): what `agent.measure` scores at a row's end
    checkpointed: Callable  # carry -> the part of it that checkpoints hold, by name


class CompiledLoop:
    """The program of a compiled run and its members' initial arrays: the seam between the program and the host.

    `program(levels, state, carry, seeds, plan) -> (state, carry, outputs)` is the jitted call (state and carry
    donated); `state` and `carry` the members' initial TrainStates and carries (envs, pending actions, replay).
    """

    def __init__(self, loop_name: str, agent_for: Callable, members: Members, config: ml_collections.ConfigDict,
                 env_spec: EnvSpec):
        env = GymnaxEnv(config.env)
        kind = self.kind = _KINDS[loop_name](config, env, env_spec)
        self.members = members
        self.state, self.state_axes = _init_states(agent_for, members)
        self.carry = jax.jit(jax.vmap(lambda level, state, seed: kind.init_carry(agent_for(level), state, seed),
                                      in_axes=(0, self.state_axes, 0)))(members.levels, self.state, members.seeds)

        def member_call(level, state, carry, seed, plan):
            agent = agent_for(level)
            # Jitted inside the program (inlined there), so that its shapes and the loops that run it trace it once.
            iterate = jax.jit(kind.iterate(agent, seed))
            metrics_shape = jax.eval_shape(iterate, state, carry, plan.start, plan)[2]
            call = _call_program(iterate, kind.measured_batch(seed), agent.measure,
                                 lambda state, step: _evaluate(agent, env, config.eval_episodes, state, seed, step),
                                 kind.granularity, metrics_shape)
            return call(state, carry, plan)

        if member_loop(config, loop_name) == "vmap":
            members_call = jax.vmap(member_call, in_axes=(0, self.state_axes, 0, 0, None),
                                    out_axes=(self.state_axes, 0, 0))
        else:
            members_call = _one_after_another(member_call, self.state_axes, len(members.seeds))
        self.program = jax.jit(members_call, donate_argnums=(1, 2))

    def compile(self, plan: CallPlan) -> Callable:
        """The program compiled ahead of its first call (so that no row's `sps` counts the compile)."""
        return self.program.lower(self.members.levels, self.state, self.carry, self.members.seeds, plan).compile()


def member_loop(config: ml_collections.ConfigDict, loop_name: str) -> str:
    """How the program runs its members (`config.member_loop`): "vmap" (side by side: every op vectorised over
    them; each member equals its run alone to float rounding) or "map" (one after another, `_one_after_another`:
    every op at one member's size, so each member computes exactly as it would alone). "auto" maps the
    off-policy loop and vmaps the on-policy one, by measurement (2-core CPU, CartPole, 4 seeds, aggregate env
    steps/s): an off-policy step is one gradient update of a small batch, and
    XLA:CPU runs the batched matmuls of N vmapped updates more slowly per member than one member's (DQN at
    PureJaxRL's settings: map 67,000-68,500, vmap 54,000-55,000; also with 2x32 and 2x64 networks), while a PPO
    iteration is mostly a rollout of 128 small env and act steps that vectorise well (vmap 211,000, map 179,000).
    """
    chosen = config.get("member_loop", "auto")
    if chosen != "auto":
        return chosen
    return "map" if loop_name == "off_policy" else "vmap"


def _one_after_another(member_call: Callable, state_axes: Any, count: int) -> Callable:
    """`member_call` over the members one after another (a `fori_loop`), taking and giving arrays batched as the
    vmapped call does: each member's TrainState and carry are taken out of the stacked ones and written back in
    place (against `lax.map`, which writes fresh stacked outputs: the same speed on CartPole, 11% faster on
    MinAtar, 29.1 against 32.6 s for 20k steps of 2 seeds at replay ratio 1, with a third less system time for the
    replays' pages). The shared leaves of a TrainState (axis None: the gradient step counter) go to every member as
    they came in and come back as the members left them (the members take the same steps)."""

    def shared(axis) -> bool:
        return axis is None

    def members_call(levels, state, carry, seeds, plan):
        def member_arrays(index, state, carry):
            member_state = jax.tree.map(lambda leaf, first, axis: first if shared(axis) else leaf[index],
                                        state, first_state, state_axes, is_leaf=shared)
            member_carry = jax.tree.map(lambda leaf: leaf[index], carry)
            return member_state, member_carry

        def put(stacked, value, index):
            return stacked.at[index].set(value)

        def run_member(index, loop):
            state, carry, outputs = loop
            new_state, new_carry, output = member_call(levels[index], *member_arrays(index, state, carry), seeds[index],
                                                       plan)
            state = jax.tree.map(lambda leaf, new, axis: new if shared(axis) else put(leaf, new, index),
                                 state, new_state, state_axes, is_leaf=shared)
            carry = jax.tree.map(lambda leaf, new: put(leaf, new, index), carry, new_carry)
            return state, carry, jax.tree.map(lambda leaf, new: put(leaf, new, index), outputs, output)

        first_state = state
        output_shape = jax.eval_shape(lambda: member_call(levels[0], *member_arrays(0, state, carry), seeds[0], plan))[2]
        outputs = jax.tree.map(lambda leaf: jnp.zeros((count, *leaf.shape), leaf.dtype), output_shape)
        return jax.lax.fori_loop(0, count, run_member, (state, carry, outputs))

    return members_call


def _run(compiled_loop: CompiledLoop, config: ml_collections.ConfigDict, run: loop.Run) -> None:
    """Trains every member of `compiled_loop`, `CallPlan` by `CallPlan` (see the module docstring)."""
    kind, members = compiled_loop.kind, compiled_loop.members
    state, carry = compiled_loop.state, compiled_loop.carry
    host = loop.RunHost(run, loop.Schedule(config, kind.granularity))
    position, learn_from = 0, config.get("learning_starts", 0)
    axes = {"state": compiled_loop.state_axes, **jax.tree.map(lambda _: 0, kind.checkpointed(carry))}
    if run.resume_step is not None:
        arrays, _ = host.resume({"state": state, **kind.checkpointed(carry)}, axes)
        state, carry = arrays.pop("state"), {**carry, **arrays}
        position = run.resume_step
        if "replay" in carry and not config.checkpoint_replay:
            learn_from = position + config.learning_starts
            print(f"  the replay buffer was not checkpointed: it refills until step {learn_from:,}", flush=True)
    rows = list(host.schedule.rows(position))
    program = compiled_loop.compile(call_plan(rows[:1], host.schedule, learn_from)) if rows else None
    rows_per_call = 1
    while rows:
        call_rows = []
        for start, done in rows[:rows_per_call]:
            call_rows.append((start, done))
            if host.schedule.checkpoints(start, done):
                break
        rows = rows[len(call_rows):]
        started = time.perf_counter()
        state, carry, outputs = program(members.levels, state, carry, members.seeds,
                                        call_plan(call_rows, host.schedule, learn_from))
        outputs = jax.device_get(outputs)
        seconds = time.perf_counter() - started
        _end_rows(host, call_rows, outputs, (call_rows[-1][1] - call_rows[0][0]) / seconds,
                  lambda: ({"state": state, **kind.checkpointed(carry)}, axes, [{} for _ in run.seeds]))
        rows_per_call = int(np.clip(CALL_SECONDS * len(call_rows) / seconds, 1, MAX_ROWS))


def call_plan(rows: list[tuple[int, int]], schedule: loop.Schedule, learn_from: int) -> CallPlan:
    """The plan of a call that runs `rows` ((start, end) pairs of env steps, in order)."""
    ends = [done for _, done in rows]
    padding = MAX_ROWS - len(rows)
    return CallPlan(
        start=np.int32(rows[0][0]),
        row_ends=np.asarray(ends + ends[-1:] * padding, np.int32),
        rows=np.int32(len(rows)),
        evaluates=np.asarray([schedule.evaluates(start, done) for start, done in rows] + [False] * padding),
        learn_from=np.int32(learn_from),
    )


def _end_rows(host: loop.RunHost, rows: list[tuple[int, int]], outputs: RowOutput, sps: float,
              checkpoint: Callable) -> None:
    """The host's work at the end of each row of a call; only the call's last row may checkpoint."""
    for index, (start, done) in enumerate(rows):
        row = jax.tree.map(lambda values: values[:, index], outputs)
        counts = row.return_count
        episode_returns = np.where(counts > 0, row.return_sum / np.maximum(counts, 1), np.nan)
        host.end_row(start, done, row.update_metrics if row.learned.any() else {}, row.network_metrics,
                     lambda: row.eval_return, checkpoint if index == len(rows) - 1 else None,
                     episode_returns=episode_returns, sps=sps)


def _off_policy(config: ml_collections.ConfigDict, env: GymnaxEnv, env_spec: EnvSpec) -> _Loop:
    """DQN and SAC: an iteration steps a member's `num_envs` envs, then `loop.off_policy_step`."""
    num_envs = config.num_envs

    def init_carry(agent, state, seed):
        envs = _init_envs(env, seed, num_envs)
        first_action = agent.act(state, envs.observation, _stream(seed, _FIRST_ACTION_STREAM), 0, True)
        replay = jax.tree.map(lambda leaf: leaf[0], loop.init_replay(config, env_spec, 1))
        return {"loop": OffPolicyCarry(envs, first_action), "replay": replay}

    def iterate(agent, seed):
        step = loop.off_policy_step(agent, config)

        def iteration(state, carry, position, plan):
            envs, action = carry["loop"]
            key, step_key = jax.random.split(envs.key)
            env_state, result = _step_envs(env, step_key, envs.env_state, action)
            transitions = Transition(envs.observation, action, result.reward, result.next_observation, result.terminated)
            learned = loop.is_learning_step(position, plan.learn_from, config)
            state, replay, action, metrics = step(state, carry["replay"], transitions, result.observation, position, learned)
            carry = {"loop": OffPolicyCarry(EnvCarry(env_state, result.observation, key), action), "replay": replay}
            return state, carry, metrics, learned, result.episode_return

        return iteration

    def measured_batch(seed):
        def batch(carry, row_end):
            batch_key = jax.random.fold_in(_stream(seed, _MEASURE_STREAM), row_end)
            return replay_lib.sample(carry["replay"], batch_key, config.dormancy.batch_size)

        return batch

    def checkpointed(carry):
        return carry if config.checkpoint_replay else {"loop": carry["loop"]}

    return _Loop(num_envs, init_carry, iterate, measured_batch, checkpointed)


def _on_policy(config: ml_collections.ConfigDict, env: GymnaxEnv, env_spec: EnvSpec) -> _Loop:
    """PPO: an iteration collects a rollout of `num_envs` x `rollout_steps` in a scan, then `agent.update`s it.

    The network metrics of a row are measured on its last rollout, which the carry keeps (not checkpointed)."""
    num_envs, num_steps = config.num_envs, config.rollout_steps

    def collect(agent, state, envs: EnvCarry, position):
        state, key = loop.split_rng(state)

        def env_step(envs: EnvCarry, inputs):
            t, act_key = inputs
            actions = agent.act(state, envs.observation, act_key, position + t * num_envs, True)
            key, step_key = jax.random.split(envs.key)
            env_state, result = _step_envs(env, step_key, envs.env_state, env_actions(env_spec, actions))
            transition = Rollout(envs.observation, actions, result.reward, result.terminated, result.truncated,
                                 result.next_observation)
            return EnvCarry(env_state, result.observation, key), (transition, result.episode_return)

        envs, (batch, episode_return) = jax.lax.scan(env_step, envs, (jnp.arange(num_steps), jax.random.split(key, num_steps)))
        return state, envs, batch, episode_return

    def init_carry(agent, state, seed):
        envs = _init_envs(env, seed, num_envs)
        batch = jax.eval_shape(lambda state, envs: collect(agent, state, envs, 0), state, envs)[2]
        return {"loop": envs, "batch": jax.tree.map(lambda leaf: jnp.zeros(leaf.shape, leaf.dtype), batch)}

    def iterate(agent, seed):
        def iteration(state, carry, position, plan):
            state, envs, batch, episode_return = collect(agent, state, carry["loop"], position)
            state, key = loop.split_rng(state)
            state, metrics = agent.update(state, batch, key)
            return state, {"loop": envs, "batch": batch}, metrics, jnp.ones((), bool), episode_return.reshape(-1)

        return iteration

    def measured_batch(seed):
        return lambda carry, row_end: carry["batch"]

    return _Loop(num_envs * num_steps, init_carry, iterate, measured_batch, lambda carry: {"loop": carry["loop"]})


_KINDS = {"off_policy": _off_policy, "on_policy": _on_policy}


def _members(seeds, level: float) -> Members:
    return Members(jnp.asarray(seeds, jnp.uint32), jnp.full(len(seeds), level, jnp.float32))


def _run_loop(name: str, agent_for: Callable, members: Members, config: ml_collections.ConfigDict, env_spec: EnvSpec,
              run: loop.Run) -> None:
    _run(CompiledLoop(name, agent_for, members, config, env_spec), config, run)


def run_off_policy(agent: Agent, config: ml_collections.ConfigDict, env_spec: EnvSpec, run: loop.Run) -> None:
    """DQN and SAC on a gymnax env (see the module docstring)."""
    _run_loop("off_policy", lambda level: agent, _members(run.seeds, config.sparse.sparsity), config, env_spec, run)


def run_on_policy(agent: Agent, config: ml_collections.ConfigDict, env_spec: EnvSpec, run: loop.Run) -> None:
    """PPO on a gymnax env: whole rollouts, rows ending on rollout boundaries (`loop.Schedule`)."""
    _run_loop("on_policy", lambda level: agent, _members(run.seeds, config.sparse.sparsity), config, env_spec, run)


LOOPS = {"off_policy": run_off_policy, "on_policy": run_on_policy}


def with_sparsity(config: ml_collections.ConfigDict, level) -> ml_collections.ConfigDict:
    """A copy of `config` at sparsity `level` (a float, or a traced scalar inside a sweep)."""
    copy = config.copy_and_resolve_references()
    with copy.sparse.ignore_type():
        copy.sparse.sparsity = level
    return copy


def run_sweep(make_agent: Callable, loop_name: str, config: ml_collections.ConfigDict, env_spec: EnvSpec,
              levels, run: loop.Run) -> None:
    """Several sparsity levels of one method, each with the run's seeds, trained in one compiled program.

    The level is a traced value: the agent is built inside the vmapped program by
    `make_agent(with_sparsity(config, level))` (e.g. `agents.dqn.make` with the env spec bound), so ERK
    sparsities, mask counts and drop counts follow it (`sparserl.sparse`); condensed indices, where the kernels
    run them (fan_in masks of static, SET, RigL or SRigL), hold the lowest level's k slots per neuron (`sparse.index_level`;
    native kernels use each level's own k of them, with offsets). `run` holds one writer and seed
    directory per member, level-major: level 0's seeds, then level 1's... Member (level, seed) equals a
    run of that seed at that level (`config.sparse.sparsity` = level), bit for bit where the level's float32
    arithmetic gives the same per-layer zero counts as the Python float: always in the tests' MLPs; a layer
    of 10^5+ weights may keep one weight more or less (tests/test_sparse_distributions.py).
    """
    num_seeds = len(run.seeds) // len(levels)
    members = Members(jnp.asarray(run.seeds, jnp.uint32), jnp.repeat(jnp.asarray(levels, jnp.float32), num_seeds))
    config = config.copy_and_resolve_references()
    config.sparse.index_level = float(min(levels))  # every level's condensed indices: the lowest level's k slots
    agent_for = lambda level: make_agent(with_sparsity(config, level))  # noqa: E731
    _run_loop(loop_name, agent_for, members, config, env_spec, run)
