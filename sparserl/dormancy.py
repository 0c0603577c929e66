"""Dormant neurons and their recycling (ReDo), after Sokar et al. 2023, "The Dormant Neuron Phenomenon in Deep RL".

Scores (Sokar et al. 2023, eq. 1): for a hidden layer with post-activation
outputs h, neuron i scores s_i = E|h_i| / (1/H sum_k E|h_k|), the expectation
over the batch (and, for a conv layer, over spatial positions: one neuron per
channel). Neuron i is tau-dormant iff s_i <= tau.

ReDo (Sokar et al. 2023, Algorithm 1): every few gradient steps, each
tau-dormant neuron gets fresh incoming weights from its layer's initializer, a
zero bias and zero outgoing weights, and the optimizer moments of those entries
are zeroed. Under a sparse mask only active connections receive new values and
the mask never changes. Every agent's `update` runs it on schedule through
`recycle_when_due`, the one place that decides when ReDo runs and on which
batch; the runners know nothing of it. Everything here is pure, jittable and
vmappable over seeds (docs/design.md contract 1).
"""

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from sparserl.networks import POST_ACTIVATION
from sparserl.sparse import SparseOptState, zero_moments
from sparserl.sparse.distributions import leaf_name

DEFAULT_TAUS = (0.0, 0.025, 0.1)


def tau_name(tau: float) -> str:
    """How tau appears in metric names: 0 -> '0', 0.025 -> '0.025', 0.1 -> '0.1' (docs/design.md contract 6)."""
    return format(float(tau), "g")


def layer_scores(activations: Any) -> dict[str, jax.Array]:
    """Layer path -> per-neuron dormancy scores (Sokar et al. 2023, eq. 1).

    `activations` is the `ACTIVATIONS` collection of a forward pass. Dense
    outputs [batch, units] give one score per unit; conv outputs (NHWC) give one
    score per channel, averaged over batch and spatial positions. Scores have
    mean 1 per layer; a layer whose outputs are all zero scores 0 everywhere.
    """
    scores = {}
    for path, outputs in jax.tree_util.tree_flatten_with_path(activations)[0]:
        name = leaf_name(path)
        if not name.endswith(POST_ACTIVATION):
            continue
        layer = name[: -len(POST_ACTIVATION)].rstrip("/")
        scores[layer] = relative_to_layer_mean(jnp.abs(outputs).mean(axis=tuple(range(outputs.ndim - 1))))
    return scores


def relative_to_layer_mean(magnitudes: jax.Array) -> jax.Array:
    """Each neuron's magnitude divided by the mean over the layer's neurons (Sokar et al. 2023, eq. 1's
    normalisation); 0 everywhere when the layer mean is 0."""
    layer_mean = magnitudes.mean()
    safe_mean = jnp.where(layer_mean > 0, layer_mean, 1.0)
    return jnp.where(layer_mean > 0, magnitudes / safe_mean, 0.0)


def dormant_fractions(
    scores: dict[str, jax.Array], taus: Sequence[float] = DEFAULT_TAUS, network: str | None = None,
    kind: str = "dormant",
) -> dict[str, jax.Array]:
    """`<kind>/<tau>/[<network>/]<layer>` and `.../total`: fractions of neurons with score <= tau (`kind`
    'dormant' for these activation scores, 'grama' for `plasticity.gradient_scores`).

    The total is the dormant count over all scored neurons divided by their
    number, not the mean of the layer fractions.
    """
    network_prefix = f"{network}/" if network else ""
    metrics = {}
    for tau in taus:
        prefix = f"{kind}/{tau_name(tau)}/{network_prefix}"
        dormant_count = jnp.zeros((), jnp.int32)
        neuron_count = 0
        for layer, layer_score in scores.items():
            dormant = layer_score <= tau
            metrics[prefix + layer] = dormant.mean(dtype=jnp.float32)
            dormant_count += dormant.sum(dtype=jnp.int32)
            neuron_count += layer_score.size
        metrics[prefix + "total"] = dormant_count / jnp.float32(max(neuron_count, 1))
    return metrics


class RecycleResult(NamedTuple):
    params: Any
    opt_state: SparseOptState
    touched: Any  # bool pytree like params: True on every entry ReDo rewrote
    num_recycled: jax.Array  # int32 count of recycled neurons


def _neuron_flags(params: Any, scores: dict, chains: Sequence[Sequence[str]], tau: float):
    """Per layer: which of its output neurons are recycled (`incoming`) and which of its input rows belong to a
    recycled neuron of the previous layer (`outgoing`); plus the number of recycled neurons."""
    incoming, outgoing = {}, {}
    for chain in chains:
        for layer, next_layer in zip(chain[:-1], chain[1:]):
            dormant = scores[layer] <= tau
            incoming[layer] = dormant
            num_inputs = get_layer(params, next_layer)["kernel"].shape[-2]
            channels = dormant.shape[0]
            if num_inputs % channels:
                raise ValueError(f"{next_layer} has {num_inputs} inputs, not a multiple of the {channels} neurons of {layer}")
            # Dense after dense: one row per neuron. Conv after conv: input channel axis. Dense after a flattened
            # conv (HWC order): the rows whose flat index % C == c belong to channel c.
            rows = jnp.tile(dormant, num_inputs // channels)
            outgoing[next_layer] = outgoing.get(next_layer, False) | rows
    num_recycled = sum((flags.sum(dtype=jnp.int32) for flags in incoming.values()), jnp.zeros((), jnp.int32))
    return incoming, outgoing, num_recycled


def get_layer(tree: Any, layer: str) -> Any:
    """The subtree of a params-like tree at a layer path such as `q1/dense_0`."""
    for key in layer.split("/"):
        tree = tree[key]
    return tree


def recycle(
    params: Any,
    opt_state: SparseOptState,
    scores: dict,
    key: jax.Array,
    *,
    init_params: Callable[[jax.Array], Any],
    chains: Sequence[Sequence[str]],
    tau: float = 0.1,
) -> RecycleResult:
    """ReDo (Sokar et al. 2023, Algorithm 1) on every hidden neuron with score <= tau.

    A recycled neuron's incoming weights (its kernel column; a conv channel's
    kernel[..., c]) are taken from `init_params(key)`, a fresh init of the same
    network, where the mask is True; its bias becomes 0; its outgoing weights
    (rows of the next layer in its chain; conv: kernel[:, :, c, :]; conv then
    flatten + dense: the rows with flat index % C == c) become 0. Where an entry
    is both an outgoing weight of a recycled neuron and an incoming weight of
    another, it becomes 0. Adam's moments of exactly the touched entries are
    zeroed; the step count and the masks are unchanged. The last entry of every
    chain is the output layer: never recycled, only its rows can be zeroed.
    """
    masks = opt_state.masks
    incoming, outgoing, num_recycled = _neuron_flags(params, scores, chains, tau)
    fresh = init_params(key)

    def rewrite(path, weights, fresh_weights, mask):
        """(new weights, touched) of one leaf; every layer holds a `kernel` and a `bias`."""
        layer, leaf = leaf_name(path).rsplit("/", 1)
        column_flags = incoming.get(layer, jnp.zeros(weights.shape[-1:], bool))
        if leaf == "bias":
            touched = column_flags & mask
            return jnp.where(touched, jnp.zeros_like(weights), weights), touched
        row_flags = outgoing.get(layer, jnp.zeros(weights.shape[-2:-1], bool))[:, None]
        zeroed = row_flags & mask
        redrawn = column_flags & ~row_flags & mask
        new_weights = jnp.where(zeroed, jnp.zeros_like(weights), jnp.where(redrawn, fresh_weights, weights))
        return new_weights, zeroed | redrawn

    rewritten = jax.tree_util.tree_map_with_path(rewrite, params, fresh, masks)
    new_params, touched = jax.tree.transpose(jax.tree.structure(params), jax.tree.structure((0, 0)), rewritten)
    inner = zero_moments(opt_state.inner, params, touched)
    return RecycleResult(new_params, opt_state._replace(inner=inner), touched, num_recycled)


def follow_online(target_params: Any, online_params: Any, touched: Any) -> Any:
    """Target networks take the online values of every entry ReDo rewrote, and keep their own elsewhere."""
    return jax.tree.map(lambda target, online, reset: jnp.where(reset, online, target), target_params, online_params, touched)


class RecycleCounts(NamedTuple):
    """What the recycling has changed since the run started, per seed, logged as `recycle/<field>` (contract 6):
    `neurons` re-initialised (ReDo and ReGraMa: dormant ones; a reset: every unit of the reset layers), `weights`
    rewritten (kernel and bias entries), and `distance`, the sum over recycling steps of the L2 norm of the change
    to all online params (||theta_after - theta_before||_2)."""

    neurons: jax.Array
    weights: jax.Array
    distance: jax.Array

    @classmethod
    def zero(cls) -> "RecycleCounts":
        """Nothing recycled yet: a TrainState's `recycled` at init."""
        return cls(jnp.zeros((), jnp.int32), jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))


class RecycleSchedule(NamedTuple):
    """When ReDo runs: every `period` gradient steps within [start, end) (`end=None`: never stops), never at step 0."""

    period: int
    start: int = 0
    end: int | None = None

    def is_due(self, step) -> jax.Array | bool:
        """Whether ReDo runs after gradient step `step` (a Python int on the host: a Python bool)."""
        due = (step >= self.start) & ((step - self.start) % self.period == 0) & (step > 0)
        if self.end is not None:
            due &= step < self.end
        return due


def redo_key(update_key: jax.Array) -> jax.Array:
    """ReDo's key inside an update: folded from the update's key, so the update's own draws stay as they are."""
    return jax.random.fold_in(update_key, 0x7ED0)


def replay_batch(sample: Callable | None, batch_size: int) -> Callable[[jax.Array], Any]:
    """`batch(key)` for `recycle_when_due` in an off-policy update: `sample(key, batch_size)`, where `sample(key, n)`
    (handed to `update` by the runner) draws n transitions from the replay."""

    def batch(key):
        if sample is None:
            raise ValueError("ReDo samples its batch from the replay: call update(state, batch, key, sample)")
        return sample(key, batch_size)

    return batch


def plan_of(schedule: RecycleSchedule | None, first_update: int, count: int) -> bool | None:
    """What `recycle_when_due` may know before tracing, for `count` updates from update number `first_update`:
    False when none of them is due (the program leaves ReDo out), True when there is one update and it is due (the
    program recycles with no branch), None when one of several is (the program decides per update)."""
    due = [schedule is not None and schedule.is_due(step) for step in range(first_update, first_update + count)]
    if not any(due):
        return False
    return True if count == 1 else None


def recycle_when_due(schedule: RecycleSchedule | None, state: Any, recycle: Callable, batch: Callable, key: jax.Array,
                     plan: bool | None = None) -> Any:
    """ReDo on schedule: what every agent's `update` calls right after each gradient step.

    `state.step` counts the gradient steps taken, this one included. When
    `schedule.is_due(state.step)`, `recycle(state, batch(batch_key), recycle_key) -> (state, counts)` runs
    (`batch_key, recycle_key = split(key)`) and `state.recycled`, the agent's `RecycleCounts`, adds `counts` leaf by
    leaf; otherwise the state comes back unchanged. `batch(key)` gives the inputs that scores the neurons:
    off-policy agents sample `redo.batch_size` transitions from the replay inside the branch, so only a recycling
    step pays for it (Dopamine `labs/redo/recycled_dqn_agents.py` samples its `batch_size_statistics` = 256 from
    the replay when a recycle is due); PPO scores on its rollout (the current batch).

    `state.step` is shared by all seeds (the runners vmap it with in_axes None), so under vmap this `lax.cond`
    keeps a scalar predicate and stays a real branch; a per-seed predicate would turn it into a select that runs
    the recycle on every update. With ReDo off (`schedule` None) the program holds no branch at all.

    `plan` (`plan_of`, a Python value) lets a caller that knows the update numbers on the host (the off-policy host
    loop) compile the decision away: False leaves ReDo out, True recycles unconditionally, None decides by
    `lax.cond`. XLA on CPU runs an update that holds a `lax.cond` markedly slower even when the branch is not
    taken (`python -m sparserl.bench --rows dormancy_redo`), and convolutions inside it about 10x slower
    (`loop._branch`), so the host loop compiles one program per plan.
    """
    if schedule is None or plan is False:
        return state

    def run(state, key):
        batch_key, recycle_key = jax.random.split(key)
        state, counts = recycle(state, batch(batch_key), recycle_key)
        return state.replace(recycled=jax.tree.map(jnp.add, state.recycled, counts))

    if plan:
        return run(state, key)
    return jax.lax.cond(schedule.is_due(state.step), run, lambda state, key: state, state, key)


def recycled_metrics(schedule: RecycleSchedule | None, state: Any) -> dict[str, jax.Array]:
    """`recycle/neurons`, `recycle/weights`, `recycle/distance`: the agent's `RecycleCounts` (per seed); nothing when
    no remedy runs."""
    if schedule is None:
        return {}
    return {f"recycle/{field}": value for field, value in state.recycled._asdict().items()}
