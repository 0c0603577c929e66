"""PPO (Schulman et al. 2017) with a sparse actor and a sparse critic.

Pure functions over one `PPOState`; the on-policy runner collects a rollout
of `num_envs x rollout_steps` transitions per seed with `act` and hands it to
`update`, all vmapped over seeds. One `update` is the whole PPO update of a
rollout, in one `lax.scan` over epochs x minibatches (as in CleanRL's
`ppo.py` / `ppo_continuous_action.py`):

- values V(s_t), V(s'_t) and the old log-probabilities are computed once
  with the pre-update params; advantages by GAE (`gae`, rlax's truncated
  GAE vmapped over envs). A time-limit truncation bootstraps from the true
  final observation: its reward becomes r + gamma * V(s'_final) and the
  episode ends there; a termination never bootstraps.
- per minibatch: clipped surrogate (advantages normalised per minibatch),
  clipped value loss, entropy bonus; one gradient step on both networks
  (`sparse_network.joint_gradient_step`: sparse masks, topology updates on schedule),
  each network's gradient clipped to a global norm of 0.5, or with
  `clip_grad_norm_jointly` the actor and critic gradients together (CleanRL's
  and SB3's one `clip_grad_norm_` over all parameters, rigl's TF-Agents PPO),
  then Adam with a linearly decaying learning rate; ReDo on schedule (gradient steps,
  `dormancy.recycle_when_due`), scored on the whole rollout.
- condensed or native kernels (`sparse.kernels`, `sparserl.sparse.condensed`):
  both networks run on their own indices, in the rollout's values and
  log-probabilities, in every minibatch loss and when acting; native kernels
  train the kept values alone, and the gradients are dense on topology-update
  steps only (`sparse_network.joint_gradient_step`).
- observation normalisation (continuous control): running mean/variance in
  the state; the rollout is normalised with the statistics the actions were
  chosen with, then the statistics absorb the rollout.

Discrete actions: a categorical policy over the actor's logits. Continuous
actions: a diagonal Gaussian with a state-independent log std, held in the
actor's params as the non-kernel leaf `log_std/bias` (never masked, never
recycled). `act(explore=True)` returns the raw Gaussian sample (its
log-probability is what the update uses); the runner clips it to the action
bounds for the env. `act(explore=False)` returns the clipped mean.
"""

from typing import Callable, NamedTuple

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import rlax

from sparserl import sparse_network
from sparserl.agent_contract import Agent
from sparserl.agent_networks import AgentNetwork, AgentNetworks, network_of
from sparserl.dormancy import RecycleCounts
from sparserl.batches import Rollout
from sparserl.configs.base import kernels, network_module
from sparserl.envs import EnvSpec
from sparserl.errors import ConfigError
from sparserl.networks import orthogonal


LOOP = "on_policy"

_LOG_2PI = float(np.log(2.0 * np.pi))


class RunningStats(flax.struct.PyTreeNode):
    """Running mean and variance of observations (parallel algorithm of Chan et al.)."""

    mean: jax.Array
    var: jax.Array
    count: jax.Array


class PPOState(flax.struct.PyTreeNode):
    actor: sparse_network.NetworkState
    critic: sparse_network.NetworkState
    obs_stats: RunningStats
    rng: jax.Array
    step: jax.Array  # gradient (minibatch) steps so far; shared by all seeds (unbatched under the runner's vmap)
    recycled: RecycleCounts  # what the remedy changed so far (`dormancy.recycle_when_due`)


class _Bias(nn.Module):
    """A lone bias vector: the Gaussian policy's state-independent log std."""

    features: int
    init_value: float = 0.0

    @nn.compact
    def __call__(self) -> jax.Array:
        return self.param("bias", nn.initializers.constant(self.init_value), (self.features,))


class GaussianPolicy(nn.Module):
    """`torso(obs)` is the action mean; `log_std/bias` the state-independent log std.

    The torso shares this module's scope, so its layers keep their own names
    (`dense_0`, ..., `output`) in the params tree and the activations
    collection, and `chains()` are the torso's.
    """

    torso: nn.Module
    action_size: int
    log_std_init: float = 0.0

    def setup(self):
        nn.share_scope(self, self.torso)
        self.log_std = _Bias(self.action_size, self.log_std_init)

    def __call__(self, observations: jax.Array) -> tuple[jax.Array, jax.Array]:
        mean = self.torso(observations)
        return mean, jnp.broadcast_to(self.log_std(), mean.shape)

    def chains(self) -> list[list[str]]:
        return self.torso.chains()


def gae(rewards, values, next_values, terminated, truncated, gamma: float, lambda_: float):
    """Advantages and value targets of a rollout, arrays [T, num_envs]: GAE (Schulman et al. 2016, eq. 16),
    A_t = sum_l (gamma * lambda)^l delta_{t+l}, and returns A_t + V(s_t).

    `values[t]` = V(s_t); `next_values[t]` = V(s'_t), s'_t the true next
    observation (the final one where an episode ended). A truncated step's
    reward becomes r + gamma * V(s'_t) and the episode ends there; a
    terminated step ends it with no bootstrap. Otherwise next_values[t] ==
    values[t + 1], and the last step bootstraps from next_values[-1].
    """
    terminated = terminated.astype(jnp.float32)
    truncated = truncated.astype(jnp.float32) * (1.0 - terminated)
    rewards = rewards + gamma * truncated * next_values
    discounts = gamma * (1.0 - jnp.maximum(terminated, truncated))
    bootstrap_values = jnp.concatenate([values, next_values[-1:]], axis=0)
    advantages = jax.vmap(rlax.truncated_generalized_advantage_estimation, in_axes=(1, 1, None, 1), out_axes=1)(
        rewards, discounts, lambda_, bootstrap_values
    )
    return advantages, advantages + values


def clipped_losses(log_probs, old_log_probs, advantages, values, old_values, returns, clip_coef: float,
                   clip_value_loss: bool, normalize_advantages: bool):
    """(policy loss, value loss, ratio, log ratio) of a minibatch (Schulman et al. 2017, eq. 7; CleanRL `ppo.py`).

    Advantages are normalised over the minibatch (std with ddof 0, + 1e-8) when asked. Policy loss:
    mean max(-A * r, -A * clip(r, 1 - c, 1 + c)), r = exp(log pi - log pi_old). Value loss: 0.5 * mean of
    (V - R)^2, or with `clip_value_loss` of max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2).
    """
    log_ratio = log_probs - old_log_probs
    ratio = jnp.exp(log_ratio)
    if normalize_advantages:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    clipped_ratio = jnp.clip(ratio, 1.0 - clip_coef, 1.0 + clip_coef)
    policy_loss = jnp.mean(jnp.maximum(-advantages * ratio, -advantages * clipped_ratio))
    value_loss = jnp.square(values - returns)
    if clip_value_loss:
        clipped_values = old_values + jnp.clip(values - old_values, -clip_coef, clip_coef)
        value_loss = jnp.maximum(value_loss, jnp.square(clipped_values - returns))
    return policy_loss, 0.5 * jnp.mean(value_loss), ratio, log_ratio


def init_stats(shape) -> RunningStats:
    return RunningStats(jnp.zeros(shape, jnp.float32), jnp.ones(shape, jnp.float32), jnp.asarray(1e-4, jnp.float32))


def update_stats(stats: RunningStats, observations: jax.Array) -> RunningStats:
    """Absorbs a batch [B, *obs_shape] into the running statistics."""
    observations = observations.astype(jnp.float32)
    batch_mean, batch_var = observations.mean(axis=0), observations.var(axis=0)
    batch_count = jnp.asarray(observations.shape[0], jnp.float32)
    delta = batch_mean - stats.mean
    total = stats.count + batch_count
    mean = stats.mean + delta * batch_count / total
    m2 = stats.var * stats.count + batch_var * batch_count + delta**2 * stats.count * batch_count / total
    return RunningStats(mean, m2 / total, total)


def normalize(stats: RunningStats, observations: jax.Array, clip: float) -> jax.Array:
    """(o - mean) / sqrt(var + 1e-8), clipped to [-clip, clip] (CleanRL's `gym.wrappers.NormalizeObservation` and
    `TransformObservation` clip, SB3's `VecNormalize`)."""
    scaled = (observations.astype(jnp.float32) - stats.mean) / jnp.sqrt(stats.var + 1e-8)
    return jnp.clip(scaled, -clip, clip)


def categorical_log_prob_and_entropy(logits: jax.Array, actions: jax.Array) -> tuple[jax.Array, jax.Array]:
    """log pi(a|s) and the entropy -sum_a pi(a|s) log pi(a|s) of a categorical policy over `logits` [B, |A|]
    (CleanRL `ppo.py`'s `Categorical(logits=...)`)."""
    log_probs = jax.nn.log_softmax(logits)
    log_prob = jnp.take_along_axis(log_probs, actions[:, None].astype(jnp.int32), axis=-1)[:, 0]
    entropy = -jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1)
    return log_prob, entropy


def gaussian_log_prob_and_entropy(mean_and_log_std: tuple[jax.Array, jax.Array],
                                  actions: jax.Array) -> tuple[jax.Array, jax.Array]:
    """log pi(a|s) and the entropy of a diagonal Gaussian, summed over action dims (CleanRL
    `ppo_continuous_action.py`'s `Normal(mean, std)`): log N(a; mu, sigma) = -(a - mu)^2 / (2 sigma^2) - log sigma
    - log(2 pi) / 2 per dim, entropy log sigma + (1 + log(2 pi)) / 2 per dim."""
    mean, log_std = mean_and_log_std
    log_prob = jnp.sum(-0.5 * jnp.square((actions - mean) * jnp.exp(-log_std)) - log_std - 0.5 * _LOG_2PI, axis=-1)
    entropy = jnp.sum(log_std + 0.5 * (1.0 + _LOG_2PI), axis=-1)
    return log_prob, entropy


class Minibatch(NamedTuple):
    """What the loss reads of each transition of a rollout, flattened over steps and envs: computed once per
    update with the pre-update params, then indexed per minibatch."""

    observations: jax.Array
    actions: jax.Array
    old_log_probs: jax.Array
    advantages: jax.Array
    returns: jax.Array
    old_values: jax.Array


def ppo_loss(log_probs: jax.Array, entropy: jax.Array, values: jax.Array, minibatch: Minibatch,
             config: ml_collections.ConfigDict) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The minibatch loss -L^CLIP + c1 L^VF - c2 S (Schulman et al. 2017, eq. 9, as a loss to minimise; CleanRL
    `ppo.py`), c1 = `vf_coef`, c2 = `ent_coef`, `clipped_losses` under `clip_coef`, `clip_value_loss` and
    `normalize_advantages`; and its metrics (the losses, the approximate KL (r - 1) - log r, the clip fraction)."""
    policy_loss, value_loss, ratio, log_ratio = clipped_losses(
        log_probs, minibatch.old_log_probs, minibatch.advantages, values, minibatch.old_values, minibatch.returns,
        config.clip_coef, config.clip_value_loss, config.normalize_advantages,
    )
    entropy = jnp.mean(entropy)
    loss = policy_loss - config.ent_coef * entropy + config.vf_coef * value_loss
    metrics = {
        "loss/policy": policy_loss,
        "loss/value": value_loss,
        "loss/entropy": entropy,
        "ppo/approx_kl": jnp.mean((ratio - 1.0) - log_ratio),
        "ppo/clip_fraction": jnp.mean((jnp.abs(ratio - 1.0) > config.clip_coef).astype(jnp.float32)),
    }
    return loss, metrics


def explained_variance(values: jax.Array, returns: jax.Array) -> jax.Array:
    """1 - Var(R - V) / Var(R) (+ 1e-8): how much of the returns' variance the pre-update values explain (CleanRL)."""
    return 1.0 - jnp.var(returns.reshape(-1) - values) / (jnp.var(returns) + 1e-8)


def rollout_size(config: ml_collections.ConfigDict) -> int:
    """Transitions per rollout: `num_envs` x `rollout_steps`."""
    return config.num_envs * config.rollout_steps


def total_updates(config: ml_collections.ConfigDict) -> int:
    """Gradient (minibatch) steps in a run: the runner collects ceil(steps / rollout size) rollouts."""
    rollouts = -(-config.steps // rollout_size(config))
    return max(1, rollouts * config.update_epochs * config.num_minibatches)


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError for a rollout PPO cannot run: a count below 1, or minibatches that do not divide it."""
    for name in ("num_envs", "rollout_steps", "num_minibatches", "update_epochs", "log_every"):
        if config[name] < 1:
            raise ConfigError(name, f"must be >= 1, got {config[name]}")
    if rollout_size(config) % config.num_minibatches:
        raise ConfigError("num_minibatches", f"{config.num_minibatches} does not divide the rollout of "
                                             f"{config.num_envs} x {config.rollout_steps} transitions")


def build_networks(config: ml_collections.ConfigDict,
                   env_spec: EnvSpec) -> tuple[sparse_network.SparseNetwork, sparse_network.SparseNetwork]:
    """The actor (categorical logits, or a `GaussianPolicy`) and the critic, each at its own sparsity, with CleanRL's
    `layer_init`: orthogonal hidden kernels (gain sqrt 2), output gain 0.01 (actor) and 1 (critic). Each takes Adam
    (linearly decayed with `anneal_learning_rate`) behind a clip of its own gradient norm, or none with
    `clip_grad_norm_jointly` (the update clips both networks' gradients together)."""
    updates = total_updates(config)

    def optimizer():
        learning_rate = (
            optax.linear_schedule(config.learning_rate, 0.0, updates) if config.anneal_learning_rate else config.learning_rate
        )
        adam = optax.adam(learning_rate, eps=config.adam_eps)
        return adam if config.clip_grad_norm_jointly else optax.chain(optax.clip_by_global_norm(config.max_grad_norm), adam)

    hidden_init = orthogonal(np.sqrt(2.0))
    actor_torso = network_module(config.network, env_spec.num_actions, hidden_kernel_init=hidden_init,
                                 output_kernel_init=orthogonal(0.01))
    actor = actor_torso if env_spec.discrete else GaussianPolicy(actor_torso, env_spec.num_actions, config.log_std_init)
    critic = network_module(config.network, 1, hidden_kernel_init=hidden_init, output_kernel_init=orthogonal(1.0))
    chosen_kernels = kernels(config.sparse)
    return (network_of(config, actor, optimizer(), updates, "actor", kernels=chosen_kernels),
            network_of(config, critic, optimizer(), updates, "critic", kernels=chosen_kernels))


def flat(batch_array: jax.Array) -> jax.Array:
    """[T, num_envs, ...] -> [T * num_envs, ...]."""
    return batch_array.reshape((-1, *batch_array.shape[2:]))


class PPOLosses(NamedTuple):
    """PPO's observation normalisation and loss over its networks: what `update` takes gradients of, and what
    GraMa measures (`measured_actor`, `measured_critic`: the loss of the whole rollout at the state, the loss the
    first minibatch step of an update would take, with the rollout as its minibatch)."""

    actor: sparse_network.SparseNetwork
    critic: sparse_network.SparseNetwork
    log_prob_and_entropy: Callable
    config: ml_collections.ConfigDict

    def normalized(self, state: PPOState, observations: jax.Array) -> jax.Array:
        if not self.config.normalize_observations:
            return observations
        return normalize(state.obs_stats, observations, self.config.observation_clip)

    def values(self, critic_params, observations: jax.Array, indices: dict | None = None,
               step: jax.Array | None = None) -> jax.Array:
        return sparse_network.apply(self.critic, critic_params, observations, indices=indices, step=step)[:, 0]

    def loss(self, actor_params, critic_params, minibatch: Minibatch, actor_indices: dict | None = None,
             critic_indices: dict | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
        """`ppo_loss` of the networks at these params; with their indices, on condensed kernels."""
        log_probs, entropy = self.log_prob_and_entropy(
            sparse_network.apply(self.actor, actor_params, minibatch.observations, indices=actor_indices),
            minibatch.actions)
        values = self.values(critic_params, minibatch.observations, critic_indices)
        return ppo_loss(log_probs, entropy, values, minibatch, self.config)

    def rollout(self, state: PPOState, batch: Rollout) -> Minibatch:
        """What the loss reads of every transition of a rollout (arrays [T, num_envs, ...]) under the state's
        params: old log-probs and values, GAE advantages and returns (Schulman et al. 2016)."""
        steps, envs = batch.reward.shape
        observations, actions = flat(self.normalized(state, batch.observation)), flat(batch.action)
        critic_indices = sparse_network.indices_of(state.critic)
        values = self.values(state.critic.params, observations, critic_indices, state.step)
        next_values = self.values(state.critic.params, flat(self.normalized(state, batch.next_observation)),
                                  critic_indices, state.step)
        old_log_probs, _ = self.log_prob_and_entropy(
            sparse_network.apply(self.actor, state.actor.params, observations,
                                 indices=sparse_network.indices_of(state.actor), step=state.step), actions)
        advantages, returns = gae(batch.reward, values.reshape(steps, envs), next_values.reshape(steps, envs),
                                  batch.terminated, batch.truncated, self.config.gamma, self.config.gae_lambda)
        return Minibatch(observations, actions, old_log_probs, advantages.reshape(-1), returns.reshape(-1), values)

    def measured_actor(self, actor_params, state: PPOState, batch: Rollout) -> jax.Array:
        return self.loss(actor_params, state.critic.params, self.rollout(state, batch))[0]

    def measured_critic(self, critic_params, state: PPOState, batch: Rollout) -> jax.Array:
        return self.loss(state.actor.params, critic_params, self.rollout(state, batch))[0]


def make(config: ml_collections.ConfigDict, env_spec: EnvSpec) -> Agent:
    """PPO's pure functions (docs/design.md contract 1) for `config` on an env like `env_spec`."""
    check_config(config)
    actor, critic = build_networks(config, env_spec)
    log_prob_and_entropy = categorical_log_prob_and_entropy if env_spec.discrete else gaussian_log_prob_and_entropy
    sample_observation = jnp.zeros((1, *env_spec.observation_shape), env_spec.observation_dtype)
    losses = PPOLosses(actor, critic, log_prob_and_entropy, config)
    networks = AgentNetworks([AgentNetwork(actor, "actor", loss=losses.measured_actor),
                              AgentNetwork(critic, "critic", loss=losses.measured_critic)],
                             inputs=lambda state, batch: [(flat(losses.normalized(state, batch.observation)),)] * 2,
                             redo=config.redo)

    def init(key: jax.Array) -> PPOState:
        actor_key, critic_key, rng = jax.random.split(key, 3)
        return PPOState(actor=sparse_network.init(actor, actor_key, sample_observation),
                        critic=sparse_network.init(critic, critic_key, sample_observation),
                        obs_stats=init_stats(env_spec.observation_shape if config.normalize_observations else ()), rng=rng, step=jnp.zeros((), jnp.int32), recycled=RecycleCounts.zero())

    def act(state: PPOState, observations: jax.Array, key: jax.Array, env_step: jax.Array, explore: bool) -> jax.Array:
        """Sampled actions (explore) or the greedy / mean action, for a batch of observations."""
        del env_step
        output = sparse_network.apply(actor, state.actor.params, losses.normalized(state, observations),
                                      indices=sparse_network.indices_of(state.actor), step=state.step)
        if env_spec.discrete:
            return jax.random.categorical(key, output) if explore else jnp.argmax(output, axis=-1)
        mean, log_std = output
        if explore:
            return mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape)
        return jnp.clip(mean, jnp.asarray(env_spec.action_low), jnp.asarray(env_spec.action_high))

    def update(state: PPOState, batch: Rollout, key: jax.Array) -> tuple[PPOState, dict[str, jax.Array]]:
        """The PPO update of one rollout (arrays [T, num_envs, ...]): epochs x minibatches."""
        steps, envs = batch.reward.shape
        data = losses.rollout(state, batch)

        def minibatch_step(carry, indices):
            state, key = carry
            key, actor_key, critic_key, redo_key = jax.random.split(key, 4)
            minibatch = jax.tree.map(lambda array: array[indices], data)
            (_, metrics), (actor_state, critic_state) = sparse_network.joint_gradient_step(
                (actor, critic), lambda params, kept: losses.loss(*params, minibatch, *kept), (state.actor, state.critic),
                state.step, (actor_key, critic_key), config.max_grad_norm if config.clip_grad_norm_jointly else None)
            state = state.replace(actor=actor_state, critic=critic_state, step=state.step + 1)
            return (networks.recycle_when_due(state, lambda _: batch, redo_key), key), metrics

        def epoch(carry, epoch_key):
            order = jax.random.permutation(epoch_key, steps * envs).reshape(config.num_minibatches, -1)
            return jax.lax.scan(minibatch_step, carry, order)

        key, epochs_key = jax.random.split(key)
        (state, _), metrics = jax.lax.scan(epoch, (state, key), jax.random.split(epochs_key, config.update_epochs))
        metrics = {name: jnp.mean(value) for name, value in metrics.items()}
        metrics["ppo/explained_variance"] = explained_variance(data.old_values, data.returns.reshape(steps, envs))
        if config.normalize_observations:
            state = state.replace(obs_stats=update_stats(state.obs_stats, flat(batch.observation)))
        return state, metrics

    return Agent(init=init, act=act, update=update, measure=networks.measure, recycle=networks.recycle)
