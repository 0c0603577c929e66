"""The host loops: Gymnasium envs stepped on the host, the agent vmapped over a vector of seeds (docs/design.md
contract 1).

Each env step makes one jitted call that stores the transitions in the device replay, takes the gradient steps
that are due (the agent's `update`, which also runs ReDo on its schedule), and picks the next actions. Only
observations and actions cross between host and device in the loop; metrics are fetched at log time. What the
host loops share with the compiled ones (`sparserl.compiled_runner`), the off-policy step, the schedule of
rows, evaluations and checkpoints, and the host's work at a row's end, is `sparserl.loop`'s.
"""

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sparserl import loop, replay as replay_lib
from sparserl.agent_contract import Agent
from sparserl.batches import Rollout, Transition
from sparserl.envs import EnvSpec, SeedEnvs
from sparserl.metrics_log import FrozenNetworkWatch


class OffPolicyStep:
    """The host loop's per-env-step call of DQN and SAC (`loop.off_policy_step`, vmapped over seeds).

    `step(state, replay, transitions, observations, env_step, learn_from)` returns
    `(state, replay, actions, metrics)`. Whether a step learns (a function of
    the env step), and the agent's `plan` of the updates it takes (of the
    gradient update count, read once from the state and then counted here), are
    decided on the host, which picks one jitted program per (learn, plan) (see
    `loop._branch`; with ReDo: a program for the steps it is due on, one for the
    others). The program of a step that only acts returns the new RNG key
    rather than the whole TrainState, which it neither changes nor takes over
    (fewer buffers to hand over per call).
    """

    def __init__(self, agent: Agent, config: ml_collections.ConfigDict, state_axes: Any):
        self.agent, self.config = agent, config
        self.updates = loop.updates_per_learning_step(config)
        self.gradient_updates: int | None = None  # the state's `step`, read once at the first learning step
        step = loop.off_policy_step(agent, config)

        @functools.cache
        def program(learn: bool, plan) -> Callable:
            def call(state, replay, transitions, observations, env_step):
                state, replay, actions, metrics = step(state, replay, transitions, observations, env_step, learn, plan)
                return state if learn else state.rng, replay, actions, metrics

            state_out = state_axes if learn else 0
            batched = jax.vmap(call, in_axes=(state_axes, 0, 0, 0, None), out_axes=(state_out, 0, 0, 0))
            return jax.jit(batched, donate_argnums=(0, 1) if learn else (1,))

        self.program = program

    def __call__(self, state, replay, transitions, observations, env_step: int, learn_from: int):
        learn = bool(loop.is_learning_step(env_step, learn_from, self.config))
        plan = None
        if learn:
            if self.gradient_updates is None:
                self.gradient_updates = int(state.step)
            plan = self.agent.plan(self.gradient_updates + 1, self.updates)
            self.gradient_updates += self.updates
        new_state, replay, actions, metrics = self.program(learn, plan)(state, replay, transitions, observations, env_step)
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


def _host(tree: Any) -> Any:
    return jax.tree.map(np.asarray, jax.device_get(tree))


def _restore_envs(envs: SeedEnvs, loop_states: list[dict], observations: np.ndarray, actions: np.ndarray):
    """Puts the envs back mid-episode; where an env could not be saved, every seed starts new episodes."""
    if any(loop_state["envs"] is None for loop_state in loop_states):
        print("  note: this env's state cannot be checkpointed; the resumed run starts new episodes", flush=True)
        return observations, actions
    for seed_index, loop_state in enumerate(loop_states):
        envs.restore_seed_state(seed_index, loop_state["envs"])
    return np.stack([s["observation"] for s in loop_states]), np.stack([s["pending_action"] for s in loop_states])


def run_off_policy(agent: Agent, config: ml_collections.ConfigDict, env_spec: EnvSpec, run: loop.Run) -> None:
    """Trains one agent per seed for `config.steps` env steps of each of its `num_envs` envs' steps, on the
    schedule of `loop.Schedule`; resumes from `run.resume_step`."""
    seeds, num_envs = run.seeds, config.num_envs
    state = loop.init_states(agent, seeds)
    state_axes = loop.seed_axes(state)
    train_step = OffPolicyStep(agent, config, state_axes)
    measure = jax.jit(jax.vmap(
        lambda state, replay, key: agent.measure(state, replay_lib.sample(replay, key, config.dormancy.batch_size)),
        in_axes=(state_axes, 0, 0)))
    eval_actor = make_actor(agent, state_axes, explore=False)
    host = loop.RunHost(run, loop.Schedule(config, num_envs))

    replay = loop.init_replay(config, env_spec, len(seeds))
    envs = SeedEnvs(config.env, seeds, num_envs)
    observations = envs.reset()
    first_keys = jax.vmap(lambda seed: jax.random.fold_in(jax.random.key(seed), 2**31 - 1))(jnp.asarray(seeds, jnp.uint32))
    actions = np.asarray(make_actor(agent, state_axes, explore=True)(state, observations, first_keys, 0))

    position, learn_from = 0, config.learning_starts
    array_axes = {"state": state_axes, **({"replay": jax.tree.map(lambda _: 0, replay)} if config.checkpoint_replay else {})}
    if run.resume_step is not None:
        arrays, loop_states = host.resume({"state": state, "replay": replay} if config.checkpoint_replay else {"state": state},
                                          array_axes)
        state, replay = arrays["state"], arrays.get("replay", replay)
        position = run.resume_step
        if not config.checkpoint_replay:
            learn_from = position + config.learning_starts
            print(f"  the replay buffer was not checkpointed: it refills until step {learn_from:,}", flush=True)
        observations, actions = _restore_envs(envs, loop_states, observations, actions)
    watch = FrozenNetworkWatch(state, state_axes)

    for start, done in host.schedule.rows(position):
        last_metrics = None
        for env_step in range(start, done, num_envs):
            result = envs.step(actions)
            transitions = Transition(observations, actions, result.reward, result.next_observation, result.terminated)
            state, replay, actions, update_metrics = train_step(state, replay, transitions, result.observation,
                                                                env_step, learn_from)
            if loop.is_learning_step(env_step, learn_from, config):
                last_metrics = update_metrics
            observations, actions = result.observation, np.asarray(actions)
            host.log.add_episodes(result.episode_return)
        keys = jax.vmap(lambda seed: jax.random.fold_in(jax.random.key(seed), done))(jnp.asarray(seeds, jnp.uint32))
        network_metrics = {**_host(measure(state, replay, keys)), **watch.check(state)}

        def checkpoint():
            arrays = {"state": state, "replay": replay} if config.checkpoint_replay else {"state": state}
            loop_states = [{"envs": envs.seed_state(i), "observation": observations[i], "pending_action": actions[i]}
                           for i in range(len(seeds))]
            return arrays, array_axes, loop_states

        host.end_row(start, done, _host(last_metrics) if last_metrics is not None else {}, network_metrics,
                     lambda: evaluate(eval_actor, state, config, seeds, done), checkpoint)
    envs.close()


def run_on_policy(agent: Agent, config: ml_collections.ConfigDict, env_spec: EnvSpec, run: loop.Run) -> None:
    """Trains one on-policy agent (PPO) per seed for at least `config.steps` env steps (whole rollouts).

    Each rollout is `config.num_envs` envs per seed x `config.rollout_steps`
    steps, collected on the host with one jitted vmapped `act` per env step,
    then one jitted vmapped `update` of the whole rollout. Rows end on rollout
    boundaries (`loop.Schedule`), so checkpoints do too, and a resume starts a
    fresh rollout.
    """
    seeds = run.seeds
    state = loop.init_states(agent, seeds)
    state_axes = loop.seed_axes(state)
    num_seeds, num_envs, num_steps = len(seeds), config.num_envs, config.rollout_steps
    explore_actor = make_actor(agent, state_axes, explore=True)
    eval_actor = make_actor(agent, state_axes, explore=False)
    host = loop.RunHost(run, loop.Schedule(config, num_envs * num_steps))

    def draw_act_keys(state):
        state, key = loop.split_rng(state)
        return state, jax.random.key_data(jax.random.split(key, num_steps))

    def learn(state, batch):
        state, key = loop.split_rng(state)
        return agent.update(state, batch, key)

    draw_keys = jax.jit(jax.vmap(draw_act_keys, in_axes=(state_axes,), out_axes=(state_axes, 0)), donate_argnums=(0,))
    update = jax.jit(jax.vmap(learn, in_axes=(state_axes, 0), out_axes=(state_axes, 0)), donate_argnums=(0,))
    measure = jax.jit(jax.vmap(agent.measure, in_axes=(state_axes, 0)))

    envs = SeedEnvs(config.env, seeds, num_envs)
    observations = envs.reset()
    position = 0
    if run.resume_step is not None:
        arrays, loop_states = host.resume({"state": state}, {"state": state_axes})
        state, position = arrays["state"], run.resume_step
        observations, _ = _restore_envs(envs, loop_states, observations, None)
    watch = FrozenNetworkWatch(state, state_axes)

    action_shape = () if env_spec.discrete else (env_spec.num_actions,)
    buffers = Rollout(
        observation=np.zeros((num_seeds, num_steps, *observations.shape[1:]), observations.dtype),
        action=np.zeros((num_seeds, num_steps, num_envs, *action_shape), np.int32 if env_spec.discrete else np.float32),
        reward=np.zeros((num_seeds, num_steps, num_envs), np.float32),
        terminated=np.zeros((num_seeds, num_steps, num_envs), bool),
        truncated=np.zeros((num_seeds, num_steps, num_envs), bool),
        next_observation=np.zeros((num_seeds, num_steps, *observations.shape[1:]), observations.dtype),
    )
    for start, done in host.schedule.rows(position):
        for rollout_start in range(start, done, num_envs * num_steps):
            state, act_keys = draw_keys(state)
            act_keys = np.asarray(act_keys)
            for t in range(num_steps):
                actions = np.asarray(explore_actor(state, observations, act_keys[:, t], rollout_start + t * num_envs))
                env_actions = actions if env_spec.discrete else np.clip(actions, env_spec.action_low, env_spec.action_high)
                result = envs.step(env_actions)
                buffers.observation[:, t] = observations
                buffers.action[:, t] = actions
                buffers.reward[:, t] = result.reward
                buffers.terminated[:, t] = result.terminated
                buffers.truncated[:, t] = result.truncated
                buffers.next_observation[:, t] = result.next_observation
                host.log.add_episodes(result.episode_return)
                observations = result.observation
            state, update_metrics = update(state, buffers)
        network_metrics = {**_host(measure(state, buffers)), **watch.check(state)}

        def checkpoint():
            loop_states = [{"envs": envs.seed_state(i), "observation": observations[i], "pending_action": None}
                           for i in range(num_seeds)]
            return {"state": state}, {"state": state_axes}, loop_states

        host.end_row(start, done, _host(update_metrics), network_metrics,
                     lambda: evaluate(eval_actor, state, config, seeds, done), checkpoint)
    envs.close()


LOOPS = {"off_policy": run_off_policy, "on_policy": run_on_policy}
