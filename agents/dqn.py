"""DQN (Mnih et al. 2015) with a sparse Q-network, as studied by Graesser et al. 2022.

Pure functions over one `DQNState`; the runner vmaps them over seeds. The
loss (`config.td_loss`: Huber or squared) is taken of the one-step Q-learning
TD error (`rlax.q_learning`): target r + gamma * (1 - terminated) * max_a Q_target(s', a).
A time-limit truncation is stored with terminated = False and s' = the final
observation, so the target bootstraps through it.
"""

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax
import rlax

from sparserl import sparse_network
from sparserl.agent_contract import Agent
from sparserl.agent_networks import AgentNetwork, AgentNetworks, UpdatePlan, network_of
from sparserl.dormancy import RecycleCounts
from sparserl.configs.base import kernels, network_module, off_policy_updates
from sparserl.envs import EnvSpec
from sparserl.errors import ConfigError
from sparserl.replay import Transition
from sparserl.sparse.masks import layer_of


LOOP = "off_policy"

# Loss of the TD errors x: Huber with delta 1 (0.5 x^2 inside [-1, 1], |x| - 0.5 outside: Mnih et al. 2015;
# Dopamine, Atari and MinAtar) or the squared error x^2 (TF-Agents' `element_wise_squared_loss`, the
# classic-control protocol of Graesser et al. 2022). Both are averaged over the batch.
TD_LOSSES = {"huber": lambda errors: rlax.huber_loss(errors, 1.0), "mse": jnp.square}


class DQNState(flax.struct.PyTreeNode):
    online: sparse_network.NetworkState
    target_params: Any
    target_kept: dict  # the online network's `NetworkState.kept` when it was copied into `target_params`
    rng: jax.Array
    step: jax.Array  # gradient updates so far; shared by all seeds (unbatched under the runner's vmap)
    recycled: RecycleCounts  # what the remedy changed so far (`dormancy.recycle_when_due`)


def td_errors(q_values: jax.Array, next_target_q_values: jax.Array, batch: Transition, gamma: float) -> jax.Array:
    """r + gamma * (1 - terminated) * max_a Q_target(s', a) - Q(s, a), per transition: the error inside Mnih et al.
    2015's loss (eq. 2), as `rlax.q_learning` computes it."""
    discounts = gamma * (1.0 - batch.terminated.astype(jnp.float32))
    return jax.vmap(rlax.q_learning)(q_values, batch.action, batch.reward, discounts, next_target_q_values)


def td_loss(network: sparse_network.SparseNetwork, config: ml_collections.ConfigDict, params: Any, batch: Transition,
            next_target_q_values: jax.Array, indices: dict | None = None) -> tuple[jax.Array, jax.Array]:
    """(Mean `config.td_loss` of the TD errors of the online `params` on `batch`, Q(s, .)), rewards clipped to
    [-1, 1] under `config.reward_clip` (Mnih et al. 2015, eq. 2)."""
    if config.reward_clip:
        batch = batch._replace(reward=jnp.clip(batch.reward, -1.0, 1.0))
    q_values = sparse_network.apply(network, params, batch.observation, indices=indices)
    errors = td_errors(q_values, next_target_q_values, batch, config.gamma)
    return jnp.mean(TD_LOSSES[config.td_loss](errors)), q_values


def hidden_kernel_l2(weight_decay: float) -> optax.GradientTransformation:
    """Adds the gradient 2 * weight_decay * w of the penalty weight_decay * sum(w^2) over the hidden kernels.

    The classic-control reference puts a Keras `L2(weight_decay)` kernel regularizer on its hidden Dense
    layers only (rigl `rl/tfagents/dqn_train_eval.py`, `build_network`), whose loss TF-Agents adds to the TD
    loss: a coupled L2 penalty, through Adam, on neither biases nor the output layer.
    """

    def is_hidden_kernel(params):
        def hidden_kernel(path, leaf):
            layer = layer_of(path)
            return layer is not None and layer.rsplit("/", 1)[-1] != "output"

        return jax.tree_util.tree_map_with_path(hidden_kernel, params)

    return optax.add_decayed_weights(2.0 * weight_decay, mask=is_hidden_kernel)


def target_q_values(network: sparse_network.SparseNetwork, config: ml_collections.ConfigDict, state: DQNState, observations: jax.Array,
                    masks_known: bool | None) -> jax.Array:
    """Q_target(s', .). The target is the online network as of its last copy, after update `last_copy`; while
    no topology update has run since, its masks are the online ones and it runs with the online indices
    (condensed kernels) and the kept values copied with it, else masked. ReDo's `reset_target` writes the
    target off those masks: masked. `masks_known`: whether the masks are unchanged, where the host knows it
    (`Agent.plan`, `sparse_network.masks_unchanged_on_host`), else None (a `lax.cond`)."""
    masked = lambda: sparse_network.apply(network, state.target_params, observations)
    if not state.online.indices or config.redo.reset_target:
        return masked()
    condensed = lambda: sparse_network.apply(
        network, state.target_params, observations, step=state.step,
        indices=sparse_network.with_kept_values(state.online.indices, state.target_kept))
    if masks_known is not None:
        return condensed() if masks_known else masked()
    last_copy = state.step // config.target_update_period * config.target_update_period
    return jax.lax.cond(sparse_network.masks_unchanged(network, last_copy, state.step, config.target_update_period),
                        condensed, masked)


def make(config: ml_collections.ConfigDict, env_spec: EnvSpec) -> Agent:
    """DQN's pure functions (docs/design.md contract 1) for `config` on an env like `env_spec`."""
    if config.td_loss not in TD_LOSSES:
        raise ConfigError("td_loss", f"unknown loss {config.td_loss!r}; choose one of {', '.join(TD_LOSSES)}")
    if not env_spec.discrete:
        raise ValueError(f"--agent=dqn needs a discrete action space; {env_spec.env_id} is continuous (use --agent=sac or ppo)")
    network = network_of(
        config, network_module(config.network, env_spec.num_actions),
        optax.chain(hidden_kernel_l2(config.weight_decay), optax.adam(config.learning_rate, eps=config.adam_eps)),
        off_policy_updates(config), kernels=kernels(config.sparse))

    def measured_loss(params, state: DQNState, batch: Transition) -> jax.Array:
        """GraMa's loss: the TD loss on the measured batch, the targets from the target network (masked)."""
        return td_loss(network, config, params, batch,
                       sparse_network.apply(network, state.target_params, batch.next_observation))[0]

    networks = AgentNetworks([AgentNetwork(network, "online", target_field="target_params", loss=measured_loss)],
                             inputs=lambda state, batch: [(batch.observation,)], redo=config.redo)
    sample_observation = jnp.zeros((1, *env_spec.observation_shape), env_spec.observation_dtype)
    epsilon = optax.linear_schedule(
        1.0, config.epsilon_end, config.epsilon_decay_steps, transition_begin=config.learning_starts
    )

    def init(key: jax.Array) -> DQNState:
        network_key, rng = jax.random.split(key)
        online = sparse_network.init(network, network_key, sample_observation)
        return DQNState(online, online.params, online.kept, rng, jnp.zeros((), jnp.int32), RecycleCounts.zero())

    def act(state: DQNState, observations: jax.Array, key: jax.Array, env_step: jax.Array, explore: bool) -> jax.Array:
        """Epsilon-greedy actions for a batch of observations (Mnih et al. 2015).

        One uniform draw gives both the exploration coin and the random action,
        floor(u * num_actions) (uniform over the actions to within 2^-23, u having
        23 random bits): every `jax.random` call is a threefry evaluation of its
        own, and the split, randint and uniform this replaces made DQN's act
        program about twice as slow on the CPU.
        """
        greedy = jnp.argmax(sparse_network.apply(network, state.online.params, observations,
                                                 indices=sparse_network.indices_of(state.online), step=state.step), axis=-1)
        coin, pick = jax.random.uniform(key, (2, *greedy.shape))
        random_actions = jnp.minimum(jnp.floor(pick * env_spec.num_actions).astype(greedy.dtype), env_spec.num_actions - 1)
        exploration = epsilon(env_step) if explore else config.eval_epsilon
        return jnp.where(coin < exploration, random_actions, greedy)

    unchanged_target_masks = sparse_network.masks_unchanged_on_host(network, config.target_update_period)

    def plan(first_update: int, count: int) -> UpdatePlan:
        """`AgentNetworks.plan`, and for one update whether the target still has the online masks."""
        known = networks.plan(first_update, count)
        return known if count != 1 else known._replace(target_masks=unchanged_target_masks(first_update - 1))

    def update(state: DQNState, batch: Transition, key: jax.Array, sample=None, plan=None) -> tuple[DQNState, dict[str, jax.Array]]:
        """One gradient step on `batch`, then ReDo when due, on `sample(key, redo.batch_size)` from the replay
        (`plan`: `plan(first_update, 1)` when the caller knows the update number: ReDo's, the topology step's and
        the target's branches decided on the host, see `dormancy.recycle_when_due`, `UpdatePlan`)."""
        next_target_q_values = target_q_values(network, config, state, batch.next_observation,
                                               None if plan is None else plan.target_masks)

        def loss_fn(params, indices):
            return td_loss(network, config, params, batch, next_target_q_values, indices)

        (loss, q_values), online = sparse_network.gradient_step(network, loss_fn, state.online, state.step, key,
                                                                networks.topology_step(plan, "online"))
        step = state.step + 1
        target_params, target_kept = jax.lax.cond(step % config.target_update_period == 0,
                                                  lambda: (online.params, online.kept),
                                                  lambda: (state.target_params, state.target_kept))
        metrics = {"loss/td": loss, "q/mean": jnp.mean(q_values)}
        state = DQNState(online, target_params, target_kept, state.rng, step, state.recycled)
        return networks.recycle_from_replay(state, sample, key, plan), metrics

    return Agent(init=init, act=act, update=update, measure=networks.measure, recycle=networks.recycle, plan=plan)
