"""An agent's sparse networks, declared once, and what every agent does to all of them alike: `measure` and `recycle`.

An agent lists its networks as (network, TrainState field) pairs, with the field of a target network that ReDo's
`redo.reset_target` rewrites, and says what each network reads from a batch:

    networks = AgentNetworks(
        (AgentNetwork(actor, "actor"), AgentNetwork(critic, "critic", target_field="target_critic_params")),
        inputs=lambda state, batch: ((batch.observation,), (batch.observation, batch.action)),
        redo=config.redo,
    )

and takes the Agent contract's `measure`, `recycle` and `plan` from it (docs/design.md contract 1), and ReDo's call
after each gradient step (`recycle_when_due`, `recycle_from_replay`). No agent writes them again (contract 4).
`network_of` builds each network from the agent's config.
"""

import dataclasses
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from sparserl import dormancy, remedies, sparse_network
from sparserl.configs.base import network_sparsity, sparsity_config


def network_of(config: ml_collections.ConfigDict, module: nn.Module, optimizer: optax.GradientTransformation,
               total_updates: int, name: str = "", kernels: str = "masked") -> sparse_network.SparseNetwork:
    """`module` as the sparse network `name` of an agent with `config`: at `sparse.<name>_sparsity` when the agent
    has several networks and it is set, else `sparse.sparsity`, with the method's schedule over `total_updates`
    gradient steps, `optimizer` inside the sparse wrapper and `sparse.sparse_init_rescale`."""
    sparsity = network_sparsity(config.sparse, name) if name else config.sparse.sparsity
    return sparse_network.make_network(module, optimizer, sparsity_config(config.sparse, total_updates, sparsity), name,
                                       sparse_init_rescale=config.sparse.sparse_init_rescale, kernels=kernels)


class UpdatePlan(NamedTuple):
    """The Agent contract's `plan` of DQN and SAC: what the host knows of the updates of one call before tracing
    it, each a Python bool, or None where the program decides (a `lax.cond`).

    `recycle`: whether ReDo falls on them (`dormancy.plan_of`). `topology`: per member, in order, whether the
    update updates that network's topology (`sparse_network.topology_step_on_host`; one update per call, else
    None). `target_masks`: whether a target network still holds the online masks (DQN; None elsewhere)."""

    recycle: bool | None
    topology: tuple[bool | None, ...]
    target_masks: bool | None = None


class AgentNetwork(NamedTuple):
    """One network of an agent: its definition, the TrainState field holding its `NetworkState`, the field
    holding its target network's params (None: it has none), and `loss(params, state, batch)`, the agent's loss of
    this network at `params` on a batch, whose gradient GraMa measures (None: no GraMa metrics)."""

    network: sparse_network.SparseNetwork
    field: str
    target_field: str | None = None
    loss: Callable[[Any, Any, Any], jax.Array] | None = None


@dataclasses.dataclass(frozen=True, eq=False)
class AgentNetworks:
    """An agent's networks (`members`, in metric order), what each reads from a batch, and the `redo` config block.

    `inputs(state, batch)` gives one tuple of inputs per member, in order: what `measure` scores the networks
    on, and ReDo too. Compared and hashed by identity: an agent's own.
    """

    members: Sequence[AgentNetwork]
    inputs: Callable[[Any, Any], Sequence[tuple]]
    redo: ml_collections.ConfigDict

    def __post_init__(self):
        if self.redo.enabled:
            for member in self.members:
                remedies.check(self.redo, member.network.module.chains(), member.loss is not None, member.network.name)

    @property
    def schedule(self) -> dormancy.RecycleSchedule | None:
        """When the remedy runs (`remedies.schedule_of`); None when none does."""
        return remedies.schedule_of(self.redo)

    def measure(self, state: Any, batch: Any) -> dict[str, jax.Array]:
        """Every network's sparsity, dormant fractions, GraMa inactive fractions (the gradient of its `loss` on
        `batch`), srank and weight magnitude (`sparse_network.metrics`), then `recycle/...` (contract 6)."""
        metrics = {}
        for member, inputs in zip(self.members, self.inputs(state, batch)):
            network_state = getattr(state, member.field)
            grads = None if member.loss is None else jax.grad(member.loss)(network_state.params, state, batch)
            metrics.update(sparse_network.metrics(member.network, network_state, *inputs, grads=grads))
        return {**metrics, **dormancy.recycled_metrics(self.schedule, state)}

    def recycle(self, state: Any, batch: Any, key: jax.Array) -> tuple[Any, dormancy.RecycleCounts]:
        """The remedy `redo.remedy` (`sparserl.remedies`; ReDo, Sokar et al. 2023, Algorithm 1, by default) on every
        network -> (state, what it changed in all of them).

        Each network is scored (ReDo, ReGraMa) on its inputs, with its own key (`key` itself for an agent's only
        network, else `split(key, len(members))` in order); ReGraMa takes the gradient of the network's `loss` on
        `batch`. With `redo.reset_target`, a network's target takes the online values of every entry the remedy
        rewrote (`dormancy.follow_online`); without it the targets stay as they are (Dopamine `labs/redo` recycles
        the online networks only).
        """
        keys = [key] if len(self.members) == 1 else jax.random.split(key, len(self.members))
        fields, before, after, results = {}, [], [], []
        for member, inputs, member_key in zip(self.members, self.inputs(state, batch), keys):
            network_state = getattr(state, member.field)
            gradients = None if member.loss is None else (lambda: jax.grad(member.loss)(network_state.params, state, batch))
            online, result = remedies.apply(self.redo, member.network, network_state, member_key, inputs, gradients)
            fields[member.field] = online
            if member.target_field and self.redo.reset_target:
                target = getattr(state, member.target_field)
                fields[member.target_field] = dormancy.follow_online(target, online.params, result.touched)
            before.append(network_state.params)
            after.append(online.params)
            results.append(result)
        return state.replace(**fields), remedies.counts_of(before, after, results)

    def recycle_when_due(self, state: Any, batch: Callable[[jax.Array], Any], key: jax.Array,
                         plan: bool | None = None) -> Any:
        """`dormancy.recycle_when_due` with this agent's schedule and `recycle`: what an update calls after each
        gradient step; `batch(key)` gives the batch the remedy scores on, `plan` is `self.plan(...).recycle` if known."""
        return dormancy.recycle_when_due(self.schedule, state, self.recycle, batch, key, plan)

    def recycle_from_replay(self, state: Any, sample: Callable | None, update_key: jax.Array,
                            plan: UpdatePlan | None) -> Any:
        """An off-policy update's ReDo: when due, on `redo.batch_size` transitions `sample(key, n)` draws from the
        replay, with a key folded from the update's (`dormancy.replay_batch`, `dormancy.redo_key`)."""
        return self.recycle_when_due(state, dormancy.replay_batch(sample, self.redo.batch_size),
                                     dormancy.redo_key(update_key), None if plan is None else plan.recycle)

    def plan(self, first_update: int, count: int) -> UpdatePlan:
        """The Agent contract's `plan` (`UpdatePlan`): ReDo's (`dormancy.plan_of`) and, for one update, whether it
        updates each network's topology (gradient step first_update - 1: `state.step` before the update)."""
        def topology(network):
            due = [sparse_network.topology_step_on_host(network, step)
                   for step in range(first_update - 1, first_update - 1 + count)]
            return due[0] if count == 1 else (False if not any(due) else None)

        return UpdatePlan(dormancy.plan_of(self.schedule, first_update, count),
                          tuple(topology(member.network) for member in self.members))

    def topology_step(self, plan: UpdatePlan | None, field: str) -> bool | None:
        """The plan's knowledge of whether the update updates the topology of the network in `field` (None:
        unknown, the program decides)."""
        if plan is None:
            return None
        return plan.topology[[member.field for member in self.members].index(field)]
