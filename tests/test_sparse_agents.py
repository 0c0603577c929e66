"""prune, SRigL, SR-STE and mask decay through every agent (in-process, tiny networks), and ReDo under structured masks."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparserl.configs import dqn as dqn_config, ppo as ppo_config, sac as sac_config
from sparserl.agents import dqn, ppo, sac
from sparserl import envs
from sparserl.experiments.bench import agent_programs
from sparserl.sparse.structure import FAN_IN, NM, column_counts, group_counts, parse

AGENTS = {"dqn": (dqn, dqn_config, "gymnax:CartPole-v1"), "sac": (sac, sac_config, "gymnax:Pendulum-v1"),
          "ppo": (ppo, ppo_config, "gymnax:CartPole-v1")}
STRUCTURES = {"prune": "unstructured", "srigl": "fan_in", "srste": "nm:2:4", "mask_decay": "nm:2:4"}
DENSE_EARLY = ("prune", "mask_decay")  # masks all-True until the window's end


@functools.lru_cache(maxsize=None)
def _env_spec(env_id):
    return envs.env_spec(env_id)


def _config(agent: str, method: str, redo_tau: float = 0.1):
    """A tiny run: 2x16 networks, 200 gradient updates, topology changes every 20 (SR-STE, mask decay: every
    step; prune, mask decay: 40 -> 100)."""
    config = AGENTS[agent][1].get_config()
    config.network.hidden_sizes = (16, 16)
    config.sparse.method, config.sparse.structure = method, STRUCTURES[method]
    config.sparse.sparsity = 0.5 if STRUCTURES[method] == "nm:2:4" else 0.75
    config.redo.tau = redo_tau
    block = config.sparse[method]
    block.update_period, block.start_fraction, block.end_fraction = (20 if method in ("prune", "srigl") else 1), 0.2, 0.5
    if agent == "ppo":
        config.num_envs, config.rollout_steps, config.num_minibatches, config.update_epochs = 2, 16, 2, 1
        config.steps = 200 * 16  # 100 rollouts of 2 minibatch updates
    else:
        config.steps, config.learning_starts, config.batch_size = 300, 100, 16
    return config


def _structure_holds(masks, structure: str, reached: bool = True) -> int:
    """Asserts every sparse kernel (some entry False) keeps its structure; returns how many there are."""
    parsed = parse(structure)
    sparse_kernels = 0
    for mask in jax.tree.leaves(masks):
        if mask.ndim < 2 or bool(jnp.all(mask)):
            continue
        sparse_kernels += 1
        if parsed.kind == FAN_IN:
            assert len(set(np.asarray(column_counts(mask)).tolist()) - {0}) == 1
        elif parsed.kind == NM:
            assert set(np.asarray(group_counts(parsed, mask)).tolist()) == {parsed.n}
    return sparse_kernels


@pytest.mark.parametrize("agent", ["dqn", "sac", "ppo"])
@pytest.mark.parametrize("method", ["prune", "srigl", "srste", "mask_decay"])
def test_method_runs_through_the_agent(agent, method):
    """200 gradient updates on random data: finite losses, the structure after every window, masks that moved."""
    module, _, env_id = AGENTS[agent]
    spec = _env_spec(env_id)
    config = _config(agent, method)
    instance = module.make(config, spec)
    if agent == "ppo":
        batch = jax.tree.map(lambda x: jnp.asarray(x[0]), agent_programs.random_rollout(spec, config.rollout_steps, config.num_envs, 0))
        updates, per_call = 100, 2
    else:
        batch = jax.tree.map(lambda x: jnp.asarray(x[0]), agent_programs.random_transitions(spec, config.batch_size, 0))
        updates, per_call = 200, 1

    @jax.jit
    def train(state, key):
        def one(state, key):
            return instance.update(state, batch, key)
        return jax.lax.scan(one, state, jax.random.split(key, updates // 4))

    state = instance.init(jax.random.key(0))
    masks = [jax.tree.map(jnp.copy, _masks(state))]
    for window in range(4):
        state, metrics = train(state, jax.random.key(window + 1))
        assert all(bool(jnp.all(jnp.isfinite(value))) for value in jax.tree.leaves(metrics))
        assert int(state.step) == (window + 1) * updates // 4 * per_call
        assert _structure_holds(_masks(state), STRUCTURES[method]) > 0 or method in DENSE_EARLY and window == 0
        masks.append(_masks(state))
    changed = sum(int(jnp.sum(a != b)) for a, b in zip(jax.tree.leaves(masks[0]), jax.tree.leaves(masks[-1])))
    assert changed > 0
    measured = instance.measure(state, batch if agent != "ppo" else batch)
    totals = [float(value) for name, value in measured.items() if name.startswith("sparsity/") and name.endswith("/total")]
    # prune reaches its target at t1 (40% of the run: exactly the per-layer ERK sparsities, about 0.75 in total);
    # mask decay its N:M masks (0.5) at the window's end.
    assert totals and all(0.3 < total < 0.8 for total in totals), measured


def _masks(state):
    networks = [state.online] if hasattr(state, "online") else [state.actor, state.critic]
    return [network.opt_state.masks for network in networks]


@pytest.mark.parametrize("method", ["srigl", "srste"])
def test_redo_resets_dormant_neurons_but_not_the_structure(method):
    """A forced recycle (tau so large that every hidden neuron is dormant) rewrites weights, never masks."""
    spec = _env_spec("gymnax:CartPole-v1")
    instance = dqn.make(_config("dqn", method, redo_tau=1e9), spec)
    state = instance.init(jax.random.key(0))
    batch = jax.tree.map(lambda x: jnp.asarray(x[0]), agent_programs.random_transitions(spec, 16, 0))
    recycled, count = jax.jit(instance.recycle)(state, batch, jax.random.key(1))
    assert int(count.neurons) == 32  # both hidden layers of 16
    jax.tree.map(np.testing.assert_array_equal, recycled.online.opt_state.masks, state.online.opt_state.masks)
    # The method's own state survives (SR-STE's dense weights: their pruned entries are untouched).
    assert jax.tree.structure(recycled.online.opt_state) == jax.tree.structure(state.online.opt_state)
    jax.tree.map(lambda new, old, mask: np.testing.assert_array_equal(np.where(mask, 0.0, new), np.where(mask, 0.0, old)),
                 recycled.online.opt_state.topology, state.online.opt_state.topology,
                 state.online.opt_state.masks if method == "srste" else ())
    assert _structure_holds(recycled.online.opt_state.masks, STRUCTURES[method]) == 3
    before, after = state.online.params["dense_1"]["kernel"], recycled.online.params["dense_1"]["kernel"]
    assert not bool(jnp.all(before == after))
    assert not bool(jnp.any(jnp.where(recycled.online.opt_state.masks["dense_1"]["kernel"], 0.0, after)))


