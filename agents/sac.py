"""SAC (Haarnoja et al. 2018) with a sparse actor and sparse twin critics, as studied by Graesser et al. 2022.

Pure functions over one `SACState`; the runner vmaps them over seeds. One
`update` is, top to bottom (Haarnoja et al. 2018b, "Soft Actor-Critic
Algorithms and Applications", eqs. 5, 7, 18):

- critic: a' ~ pi(.|s'), y = r + gamma * (1 - terminated) * (min_i Q_target_i(s', a') - alpha * log pi(a'|s')),
  loss = sum over the twin critics of mean (Q_i(s, a) - y)^2 / 2;
- actor: a ~ pi(.|s) (reparameterised), loss = mean alpha * log pi(a|s) - min_i Q_i(s, a);
- temperature: loss = mean -alpha * (log pi(a|s) + target_entropy), target_entropy = -|A|;
- target critic: Polyak averaging with tau, kept on the online critic's masks
  (`sparse_network.soft_update_target`).

With condensed or native kernels (`sparse.kernels`, `sparserl.sparse.condensed`)
every network runs on its own indices: the actor, the critics (also inside the
actor's loss, where only the gradient in the action flows through them) and
the target critics, which always hold the online critic's masks. Each
network takes one `sparse_network.gradient_step`: native kernels train the
kept values alone, and the gradients are dense on topology-update steps only.

The policy is a tanh-squashed Gaussian over [-1, 1]^|A| (the log-probability
includes the tanh change of variables); actions are rescaled to the env's
bounds only when they leave the agent, and the critics see actions in [-1, 1]
(replay holds env actions and is mapped back). A time-limit truncation is
stored with terminated = False and s' = the final observation, so the target
bootstraps through it.
"""

from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax

from sparserl import sparse_network
from sparserl.agent_contract import Agent
from sparserl.agent_networks import AgentNetwork, AgentNetworks, network_of
from sparserl.dormancy import RecycleCounts
from sparserl.configs.base import kernels, network_module, off_policy_updates
from sparserl.envs import EnvSpec
from sparserl.errors import ConfigError
from sparserl.networks import TwinCritic
from sparserl.replay import Transition


LOOP = "off_policy"


class SACState(flax.struct.PyTreeNode):
    actor: sparse_network.NetworkState
    critic: sparse_network.NetworkState
    target_critic_params: Any
    log_alpha: jax.Array
    alpha_opt_state: Any
    rng: jax.Array
    step: jax.Array  # gradient updates so far; shared by all seeds (unbatched under the runner's vmap)
    recycled: RecycleCounts  # what the remedy changed so far (`dormancy.recycle_when_due`)


def critic_targets(reward: jax.Array, terminated: jax.Array, next_q: jax.Array, next_log_prob: jax.Array,
                   alpha: jax.Array, gamma: float) -> jax.Array:
    """Soft TD targets r + gamma * (1 - terminated) * (min_i Q_target_i(s', a') - alpha * log pi(a'|s'))
    (Haarnoja et al. 2018b, eqs. 3 and 5), over the minimum of the twin target critics.

    `next_q` is [2, batch] (the twin target critics at (s', a')), the rest [batch].
    """
    soft_value = jnp.min(next_q, axis=0) - alpha * next_log_prob
    return reward + gamma * (1.0 - terminated.astype(jnp.float32)) * soft_value


def squashed_gaussian(outputs: jax.Array, log_std_min: float, log_std_max: float):
    """Mean and log-std from the actor's output layer: [mean | raw log-std], log-std tanh-rescaled into its range
    (CleanRL `sac_continuous_action.py`)."""
    mean, raw_log_std = jnp.split(outputs, 2, axis=-1)
    log_std = log_std_min + 0.5 * (log_std_max - log_std_min) * (jnp.tanh(raw_log_std) + 1.0)
    return mean, log_std


def sample_action(mean: jax.Array, log_std: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """A reparameterised tanh-Gaussian action in [-1, 1]^|A| and its log-probability (summed over action dims;
    Haarnoja et al. 2018a, appendix C).

    log pi(a) = log N(u; mean, std) - sum log(1 - tanh(u)^2), with
    log(1 - tanh(u)^2) = 2 * (log 2 - u - softplus(-2u)) (numerically stable).
    """
    noise = jax.random.normal(key, mean.shape)
    pre_tanh = mean + jnp.exp(log_std) * noise
    gaussian_log_prob = -0.5 * noise**2 - log_std - 0.5 * jnp.log(2.0 * jnp.pi)
    log_det = 2.0 * (jnp.log(2.0) - pre_tanh - jax.nn.softplus(-2.0 * pre_tanh))
    return jnp.tanh(pre_tanh), jnp.sum(gaussian_log_prob - log_det, axis=-1)


def critic_loss(q: jax.Array, targets: jax.Array) -> jax.Array:
    """sum over the twin critics of mean (Q_i(s, a) - y)^2 / 2 (Haarnoja et al. 2018b, eq. 5); `q` is [2, batch]."""
    return jnp.sum(jnp.mean(0.5 * (q - targets[None]) ** 2, axis=1))


def actor_loss(alpha: jax.Array, log_prob: jax.Array, q: jax.Array) -> jax.Array:
    """mean alpha * log pi(a|s) - min_i Q_i(s, a), a ~ pi(.|s) (Haarnoja et al. 2018b, eq. 7); `q` is [2, batch]."""
    return jnp.mean(alpha * log_prob - jnp.min(q, axis=0))


def temperature_loss(log_alpha: jax.Array, log_prob: jax.Array, target_entropy: float) -> jax.Array:
    """mean -alpha * (log pi(a|s) + target_entropy) (eq. 18), alpha = exp(log_alpha), log pi held fixed.

    Its gradient in log_alpha is alpha * (entropy - target_entropy): a policy less random than the target
    raises the temperature, a more random one lowers it.
    """
    return jnp.mean(-jnp.exp(log_alpha) * jax.lax.stop_gradient(log_prob + target_entropy))


class ActionBounds(NamedTuple):
    """The env's action box: the agent acts in [-1, 1]^|A| and maps to the env's bounds (and back) at its edges."""

    low: jax.Array
    high: jax.Array
    center: jax.Array
    half_range: jax.Array

    @classmethod
    def of(cls, env_spec: EnvSpec) -> "ActionBounds":
        """The bounds of `env_spec`'s action box, as float32."""
        low, high = jnp.asarray(env_spec.action_low, jnp.float32), jnp.asarray(env_spec.action_high, jnp.float32)
        return cls(low, high, (high + low) / 2.0, (high - low) / 2.0)

    def to_env(self, actions: jax.Array) -> jax.Array:
        """Actions in [-1, 1] -> the env's bounds."""
        return jnp.clip(self.center + self.half_range * actions, self.low, self.high)

    def from_env(self, actions: jax.Array) -> jax.Array:
        """The env's actions (as the replay holds them) -> [-1, 1], where the critics see them."""
        return jnp.clip((actions - self.center) / self.half_range, -1.0, 1.0)


class SACLosses(NamedTuple):
    """SAC's policy and losses over its networks (Haarnoja et al. 2018b, eqs. 5, 7): what `update` takes gradients
    of, and what GraMa measures (`measured_critic`, `measured_actor`: the losses at the state, drawn with its rng)."""

    actor_net: sparse_network.SparseNetwork
    critic_net: sparse_network.SparseNetwork
    bounds: ActionBounds
    config: ml_collections.ConfigDict

    def policy(self, actor_params: Any, observations: jax.Array, indices: dict | None = None,
               step: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        outputs = sparse_network.apply(self.actor_net, actor_params, observations, indices=indices, step=step)
        return squashed_gaussian(outputs, self.config.log_std_min, self.config.log_std_max)

    def soft_targets(self, state: "SACState", batch: Transition, key: jax.Array, condensed: bool = True) -> jax.Array:
        """`critic_targets` from the target critics and a fresh action a' ~ pi(.|s') drawn with `key`; the target
        critics run on the online critic's indices (their masks are the online ones), unless `condensed` is False."""
        actor_indices, critic_indices = ((sparse_network.indices_of(state.actor), state.critic.indices) if condensed
                                         else (None, None))
        next_actions, next_log_prob = sample_action(*self.policy(state.actor.params, batch.next_observation,
                                                                 actor_indices, state.step), key)
        next_q = sparse_network.apply(self.critic_net, state.target_critic_params, batch.next_observation, next_actions,
                                      indices=critic_indices, step=state.step)
        return critic_targets(batch.reward, batch.terminated, next_q, next_log_prob, jnp.exp(state.log_alpha),
                              self.config.gamma)

    def critic(self, critic_params: Any, batch: Transition, targets: jax.Array,
               indices: dict | None = None) -> tuple[jax.Array, jax.Array]:
        """(`critic_loss` of the twin critics at (s, a) against `targets`, Q [2, batch])."""
        q = sparse_network.apply(self.critic_net, critic_params, batch.observation, self.bounds.from_env(batch.action),
                                 indices=indices)
        return critic_loss(q, targets), q

    def actor(self, actor_params: Any, critic: sparse_network.NetworkState, critic_step: jax.Array, alpha: jax.Array,
              batch: Transition, key: jax.Array, indices: dict | None = None) -> tuple[jax.Array, jax.Array]:
        """(`actor_loss` of a reparameterised a ~ pi(.|s) drawn with `key`, log pi(a|s)); the critics run on their
        own indices, those of gradient step `critic_step` (only the gradient in the action flows through them)."""
        new_actions, log_prob = sample_action(*self.policy(actor_params, batch.observation, indices), key)
        new_q = sparse_network.apply(self.critic_net, critic.params, batch.observation, new_actions,
                                     indices=sparse_network.indices_of(critic), step=critic_step)
        return actor_loss(alpha, log_prob, new_q), log_prob

    def measured_critic(self, critic_params: Any, state: "SACState", batch: Transition) -> jax.Array:
        """The critic loss with every network masked: GraMa reads its dense gradient."""
        return self.critic(critic_params, batch, self.soft_targets(state, batch, state.rng, condensed=False))[0]

    def measured_actor(self, actor_params: Any, state: "SACState", batch: Transition) -> jax.Array:
        """The actor loss with every network masked: GraMa reads its dense gradient."""
        return self.actor(actor_params, state.critic.replace(indices={}), state.step, jnp.exp(state.log_alpha), batch,
                          state.rng)[0]


def build_networks(config: ml_collections.ConfigDict,
                   action_dim: int) -> tuple[sparse_network.SparseNetwork, sparse_network.SparseNetwork]:
    """The actor (an MLP whose output is [mean | raw log-std]) and the twin critics, each at its own sparsity."""
    if config.network.kind != "mlp":
        raise ConfigError("network.kind", "sac builds MLPs only (its critics read observation and action); "
                                          f"choose one of mlp, got {config.network.kind!r}")
    updates = off_policy_updates(config)
    chosen_kernels = kernels(config.sparse)
    critic = TwinCritic(tuple(config.network.hidden_sizes), width_multiplier=config.network.width_multiplier,
                        activation=config.network.activation)
    return (network_of(config, network_module(config.network, 2 * action_dim), optax.adam(config.learning_rate),
                       updates, "actor", kernels=chosen_kernels),
            network_of(config, critic, optax.adam(config.learning_rate), updates, "critic", kernels=chosen_kernels))


def make(config: ml_collections.ConfigDict, env_spec: EnvSpec) -> Agent:
    """SAC's pure functions (docs/design.md contract 1) for `config` on an env like `env_spec`."""
    if env_spec.discrete:
        raise ValueError(f"--agent=sac needs a continuous action space; {env_spec.env_id} is discrete (use --agent=dqn or ppo)")
    action_dim = env_spec.num_actions
    actor_net, critic_net = build_networks(config, action_dim)
    bounds = ActionBounds.of(env_spec)
    losses = SACLosses(actor_net, critic_net, bounds, config)
    networks = AgentNetworks(
        [AgentNetwork(actor_net, "actor", loss=losses.measured_actor),
         AgentNetwork(critic_net, "critic", target_field="target_critic_params", loss=losses.measured_critic)],
        inputs=lambda state, batch: [(batch.observation,), (batch.observation, bounds.from_env(batch.action))],
        redo=config.redo)
    alpha_optimizer = optax.adam(config.temperature_learning_rate)
    target_entropy = -config.target_entropy_scale * action_dim
    sample_observation = jnp.zeros((1, *env_spec.observation_shape), env_spec.observation_dtype)

    def init(key: jax.Array) -> SACState:
        actor_key, critic_key, rng = jax.random.split(key, 3)
        actor = sparse_network.init(actor_net, actor_key, sample_observation)
        critic = sparse_network.init(critic_net, critic_key, sample_observation, jnp.zeros((1, action_dim), jnp.float32))
        log_alpha = jnp.asarray(jnp.log(config.init_temperature), jnp.float32)
        return SACState(actor, critic, critic.params, log_alpha, alpha_optimizer.init(log_alpha), rng,
                        jnp.zeros((), jnp.int32), RecycleCounts.zero())

    def act(state: SACState, observations: jax.Array, key: jax.Array, env_step: jax.Array, explore: bool) -> jax.Array:
        """Env-bounded actions: sampled (uniform before `learning_starts`) when exploring, else tanh(mean)."""
        mean, log_std = losses.policy(state.actor.params, observations, sparse_network.indices_of(state.actor), state.step)
        if not explore:
            return bounds.to_env(jnp.tanh(mean))
        policy_key, random_key = jax.random.split(key)
        sampled, _ = sample_action(mean, log_std, policy_key)
        uniform = jax.random.uniform(random_key, mean.shape, minval=-1.0, maxval=1.0)
        return bounds.to_env(jnp.where(env_step < config.learning_starts, uniform, sampled))

    def update(state: SACState, batch: Transition, key: jax.Array, sample=None, plan=None) -> tuple[SACState, dict[str, jax.Array]]:
        """One gradient step on `batch`, then ReDo when due, on `sample(key, redo.batch_size)` from the replay
        (`plan`: `plan(first_update, 1)` when the caller knows the update number: ReDo's and the topology steps'
        branches decided on the host, see `dormancy.recycle_when_due`, `UpdatePlan`)."""
        next_key, actor_key, critic_sparse_key, actor_sparse_key = jax.random.split(key, 4)
        alpha = jnp.exp(state.log_alpha)

        # Critic: soft TD targets from the target critics and a fresh action at s'.
        targets = losses.soft_targets(state, batch, next_key)
        (critic_loss_value, q), critic = sparse_network.gradient_step(
            critic_net, lambda params, indices: losses.critic(params, batch, targets, indices), state.critic, state.step,
            critic_sparse_key, networks.topology_step(plan, "critic"))

        # Actor: maximise min_i Q_i(s, a) + alpha * entropy, with a reparameterised a ~ pi(.|s).
        (actor_loss_value, log_prob), actor = sparse_network.gradient_step(
            actor_net, lambda params, indices: losses.actor(params, critic, state.step + 1, alpha, batch, actor_key, indices),
            state.actor, state.step, actor_sparse_key, networks.topology_step(plan, "actor"))

        # Temperature: move the policy's entropy towards the target entropy.
        temperature_loss_value, alpha_grad = jax.value_and_grad(temperature_loss)(state.log_alpha, log_prob, target_entropy)
        alpha_updates, alpha_opt_state = alpha_optimizer.update(alpha_grad, state.alpha_opt_state)
        log_alpha = optax.apply_updates(state.log_alpha, alpha_updates)

        target_critic_params = sparse_network.soft_update_target(critic, state.target_critic_params, config.tau)
        metrics = {"loss/critic": critic_loss_value, "loss/actor": actor_loss_value, "loss/temperature": temperature_loss_value,
                   "alpha": alpha, "entropy": -jnp.mean(log_prob), "q/mean": jnp.mean(q)}
        state = SACState(actor, critic, target_critic_params, log_alpha, alpha_opt_state, state.rng, state.step + 1,
                         state.recycled)
        return networks.recycle_from_replay(state, sample, key, plan), metrics

    return Agent(init=init, act=act, update=update, measure=networks.measure, recycle=networks.recycle,
                 plan=networks.plan)
