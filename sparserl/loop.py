"""What both kinds of loop share: the host loops (`sparserl.runner`: Gymnasium envs stepped on the host, a jitted
call per env step) and the compiled loops (`sparserl.compiled_runner`: gymnax envs inside one program).

- Seeds (and a sweep's levels) are a batch axis (docs/design.md contract 1): `seed_axes`, `seed_keys`,
  `init_states`, `split_rng`.
- The off-policy step both loops run (`off_policy_step`: store -> learn when due -> act) for `num_envs` envs
  per seed, and the replay it fills (`init_replay`).
- The schedule: where a log row ends, which rows evaluate and checkpoint (`Schedule`), and what the host does at
  the end of a row (`RunHost`: the NaN stop, the metrics row, the evaluation row, the checkpoint and the stop on
  SIGTERM/SIGINT), and on resume.
"""

import dataclasses
import functools
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sparserl import replay as replay_lib
from sparserl.agent_contract import Agent
from sparserl.checkpoint import Checkpointer
from sparserl.envs import EnvSpec
from sparserl.metrics_log import MetricsLog
from sparserl.preemption import StopRequests
from sparserl.reporting import MetricsWriter, ProgressPrinter
from sparserl.run_guard import RunGuard


@dataclasses.dataclass
class Run:
    """Where a loop writes: one seed directory per member (seed, or level and seed in a sweep), its writers, the
    console and checkpoints; `resume_step` is the checkpoint to resume from (None: a fresh start). The console
    shows the mean of each group of members."""

    seeds: list[int]
    writers: list[MetricsWriter]
    progress: ProgressPrinter
    checkpointer: Checkpointer
    stop_requests: StopRequests = dataclasses.field(default_factory=StopRequests)
    resume_step: int | None = None
    # The console's groups of members, by label: a sweep's levels ({"sparsity 0.5": [0, 1], ...}); empty: one group.
    groups: dict[str, list[int]] = dataclasses.field(default_factory=dict)


def seed_axes(state: Any) -> Any:
    """vmap axes of a TrainState: 0 everywhere but the shared step counter."""
    return jax.tree.map(lambda _: 0, state).replace(step=None)


def seed_keys(seeds) -> jax.Array:
    """One key per seed, a function of the seed value only (so seed i of a batch equals a run of that seed)."""
    return jax.vmap(jax.random.key)(jnp.asarray(seeds, jnp.uint32))


def init_states(agent: Agent, seeds) -> Any:
    """The vmapped initial TrainState of every seed."""
    abstract = jax.eval_shape(agent.init, jax.random.key(0))
    states = jax.jit(jax.vmap(agent.init, out_axes=seed_axes(abstract)))(seed_keys(seeds))
    # Wait for it: with jaxlib 0.10 on CPU, compiling the next program while this one still runs
    # sometimes never finishes (a deadlock measured in the PPO tests, about one run in two).
    return jax.block_until_ready(states)


def split_rng(state):
    """(state with its next key, a fresh key): a seed's own stream of keys, kept in its TrainState."""
    rng, key = jax.random.split(state.rng)
    return state.replace(rng=rng), key


def nan_like(tree: Any) -> Any:
    return jax.tree.map(lambda leaf: jnp.full(leaf.shape, jnp.nan, leaf.dtype), tree)


def init_replay(config: ml_collections.ConfigDict, env_spec: EnvSpec, members: int) -> replay_lib.ReplayState:
    """An empty replay of `config.replay_capacity` transitions per member, stacked on a leading axis."""
    action_shape = () if env_spec.discrete else (env_spec.num_actions,)
    action_dtype = jnp.int32 if env_spec.discrete else jnp.float32
    return jax.vmap(lambda _: replay_lib.init(
        config.replay_capacity, env_spec.observation_shape, env_spec.observation_dtype, action_shape, action_dtype
    ))(jnp.arange(members))


# ------------------------------------------------------------------------------------------------ the off-policy step

def updates_per_learning_step(config: ml_collections.ConfigDict) -> int:
    """Updates of a learning step: `gradient_steps` for each multiple of `train_every` among the `num_envs` env
    steps it covers, so the replay ratio gradient_steps / train_every holds in env steps (`num_envs` divides
    `train_every` or is a multiple of it: `agent.off_policy_updates` checks)."""
    return config.gradient_steps * max(1, config.num_envs // config.train_every)


def is_learning_step(env_step, learn_from, config: ml_collections.ConfigDict):
    """Whether the step of every env of a seed that starts at env step `env_step` (a multiple of `num_envs`; a
    Python int or traced) takes its `updates_per_learning_step` updates."""
    return (env_step >= learn_from) & (env_step % max(config.train_every, config.num_envs) == 0)


def _branch(flag, true_fn: Callable, false_fn: Callable, operand):
    """`true_fn(operand)` if `flag` else `false_fn(operand)`: decided in Python when `flag` is a Python bool, by
    `lax.cond` when it is traced. On CPU an update inside a `lax.cond` runs slower than the same update alone,
    even where the branch is always taken (an Atari DQN learn step 14-35% slower; before `networks.Im2colConv`,
    convolutions inside a cond were about 10x slower), so the host loop decides on the host and compiles one
    program per branch (docs/design.md section 7)."""
    if isinstance(flag, bool):
        return true_fn(operand) if flag else false_fn(operand)
    return jax.lax.cond(flag, true_fn, false_fn, operand)


def off_policy_step(agent: Agent, config: ml_collections.ConfigDict) -> Callable:
    """One seed's step of DQN and SAC after its `num_envs` envs moved: store, learn when due, act.

    `step(state, replay, transitions, observations, env_step, learn, plan=None) -> (state, replay, actions,
    metrics)`, with `transitions` and `observations` [num_envs, ...] and `env_step` the first env step of this
    one. A learning step takes `updates_per_learning_step` updates, each on its own batch (a `lax.scan` when more
    than one; its metrics are their mean); metrics are NaN where no update was taken. Each update may draw more
    transitions from the replay (`sample`: ReDo's batch, `dormancy.recycle_when_due`). `learn` is a Python bool
    (the host loop, `runner.OffPolicyStep`) or a traced one (the compiled loop, inside its scan); see `_branch`.
    `plan` is `agent.plan(first_update, count)` of this step's updates where the caller knows their numbers (the
    host loop), else None.
    """
    updates = updates_per_learning_step(config)

    def sample_and_update(state, keys, plan):
        replay, sample_key, update_key = keys
        sample = functools.partial(replay_lib.sample, replay)
        return agent.update(state, sample(sample_key, config.batch_size), update_key, sample, plan)

    def learn_from(operands, plan=None):
        state, replay, sample_key, update_key = operands
        if updates == 1:
            return sample_and_update(state, (replay, sample_key, update_key), plan)
        keys = (jax.random.split(sample_key, updates), jax.random.split(update_key, updates))
        state, metrics = jax.lax.scan(lambda state, keys: sample_and_update(state, (replay, *keys), plan), state, keys)
        return state, jax.tree.map(lambda values: jnp.mean(values, axis=0), metrics)

    def skip_learning(operands):
        return operands[0], nan_like(jax.eval_shape(learn_from, operands)[1])

    def step(state, replay, transitions, observations, env_step, learn, plan=None):
        replay = replay_lib.add(replay, transitions)
        # The fourth key went to ReDo when the runner ran it; it stays drawn so that the act keys (and every
        # seeded run) are what they were.
        rng, sample_key, update_key, _, act_key = jax.random.split(state.rng, 5)
        state = state.replace(rng=rng)
        state, metrics = _branch(learn, functools.partial(learn_from, plan=plan), skip_learning,
                                 (state, replay, sample_key, update_key))
        actions = agent.act(state, observations, act_key, env_step + config.num_envs, True)
        return state, replay, actions, metrics

    return step


# ------------------------------------------------------------------------------------------------ the schedule

class Schedule:
    """Where a run's rows end, and which rows log, evaluate and checkpoint, in env steps per seed.

    A loop advances `granularity` env steps at a time (a step of all of a seed's envs, or a whole rollout). A row
    ends at the first multiple of the granularity that reaches a multiple of `log_every`, `eval_every` or
    `checkpoint_every`, or at the first one at or past `steps` (the last row: a rollout is never cut short). Every
    row writes a metrics row; a row that reaches a multiple of `eval_every` evaluates, one that reaches a multiple
    of `checkpoint_every` checkpoints, and the last row does both.
    """

    def __init__(self, config: ml_collections.ConfigDict, granularity: int):
        self.steps, self.granularity = config.steps, granularity
        self.eval_every, self.checkpoint_every = config.eval_every, config.checkpoint_every
        self._row_every = (config.log_every, config.eval_every, config.checkpoint_every)

    def rows(self, start: int) -> Iterator[tuple[int, int]]:
        """(start, end) of every row after env step `start`."""
        while start < self.steps:
            end = start + self.granularity
            while not any(self._reaches(every, start, end) for every in self._row_every):
                end += self.granularity
            yield start, end
            start = end

    def is_final(self, done: int) -> bool:
        return done >= self.steps

    def _reaches(self, every: int, start: int, done: int) -> bool:
        return done // every > start // every or self.is_final(done)

    def evaluates(self, start: int, done: int) -> bool:
        return self._reaches(self.eval_every, start, done)

    def checkpoints(self, start: int, done: int) -> bool:
        return self._reaches(self.checkpoint_every, start, done)


class RunHost:
    """The host side of a run, shared by every loop: the schedule, the metrics log (`MetricsLog`) and the guard
    (`RunGuard`: NaN stop, checkpoints, stop requests), and what they do at the end of each row."""

    def __init__(self, run: Run, schedule: Schedule):
        self.run, self.schedule = run, schedule
        self.log, self.guard = MetricsLog(run), RunGuard(run)

    def resume(self, arrays: dict, axes: dict) -> tuple[dict, list[dict]]:
        """The arrays of checkpoint `run.resume_step`, shaped like `arrays`, and every member's loop state (the
        metrics log takes back its part)."""
        arrays, loop_states = self.guard.restore(arrays, axes)
        self.log.resume(loop_states)
        return arrays, loop_states

    def end_row(self, start: int, done: int, update_metrics: dict, network_metrics: dict,
                evaluate: Callable[[], np.ndarray], checkpoint: Callable[[], tuple] | None,
                episode_returns: np.ndarray | None = None, sps: float | None = None) -> None:
        """A row's end: the NaN stop on its losses, its metrics rows (`episode_returns`: the mean return per member
        of the episodes that ended in it, else those `log.add_episodes` gathered), its evaluation rows when due
        (`evaluate()`: the mean return per member), and when due, or when SIGTERM/SIGINT asked the run to stop, the
        checkpoint of `checkpoint() -> (arrays, axes, loop states)` (None: this row cannot checkpoint), after which
        `Stopped` is raised on a stop request."""
        final = self.schedule.is_final(done)
        self.guard.check_losses(done, update_metrics)
        self.log.log(done, update_metrics, network_metrics, final, episode_returns, sps)
        if self.schedule.evaluates(start, done):
            self.log.evaluate(done, evaluate)
        if checkpoint is not None and (self.schedule.checkpoints(start, done) or self.run.stop_requests.requested):
            arrays, axes, loop_states = checkpoint()
            with self.log.untimed():
                self.guard.checkpoint(done, arrays, axes,
                                      [{**state, **self.log.loop_state(i)} for i, state in enumerate(loop_states)])
            if not final:
                self.guard.stop_if_requested(done)
