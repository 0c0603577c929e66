"""Condensed kernels: indices, forward and backward against masked dense, vmap, mask changes, a DQN run."""

import io
import math
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sparserl.agents import dqn
from sparserl.configs import dqn as dqn_config
from sparserl import checkpoint, envs, loop, networks, runner, sparse_network
from sparserl.reporting import MetricsWriter, ProgressPrinter, read_csv
from sparserl.errors import ConfigError
from sparserl.sparse import SparsityConfig, condensed, condensed_native, srigl, structure
from sparserl.sparse.config import Window
from sparserl.sparse.topology import DropAndGrowSettings, get_topology


def fan_in_mask(key: jax.Array, shape: tuple[int, int], sparsity: float) -> jax.Array:
    """A random [in, out] mask keeping exactly `condensed.fan_in(in, sparsity)` inputs in every column."""
    return structure.random_mask(condensed.CONSTANT_FAN_IN, key, shape, sparsity)


def test_fan_in_is_the_kept_count_per_column():
    assert condensed.fan_in(512, 0.9) == 52 and condensed.fan_in(4, 0.9) == 1 and condensed.fan_in(10, 0.5) == 5
    mask = fan_in_mask(jax.random.key(0), (512, 7), 0.9)
    np.testing.assert_array_equal(np.sum(mask, axis=0), [52] * 7)


def test_indices_are_the_kept_rows_of_each_column_in_order():
    mask = np.array([[1, 0, 1], [0, 1, 1], [1, 1, 0], [0, 0, 0]], bool)  # [in=4, out=3], two inputs per column
    np.testing.assert_array_equal(structure.fan_in_indices(jnp.asarray(mask), 2), [[0, 2], [1, 2], [0, 1]])
    assert structure.fan_in_indices(jnp.asarray(mask), 2).dtype == jnp.int32


def _layer(key, batch, in_features, out_features, sparsity):
    mask_key, kernel_key, x_key = jax.random.split(key, 3)
    mask = fan_in_mask(mask_key, (in_features, out_features), sparsity)
    kernel = jnp.where(mask, jax.random.normal(kernel_key, mask.shape), 0.0)
    x = jax.random.normal(x_key, (batch, in_features))
    return x, kernel, mask, structure.fan_in_indices(mask, condensed.fan_in(in_features, sparsity))


# Batches below and from condensed.ROW_MIN_BATCH: scalar gathers and row gathers.
@pytest.mark.parametrize("batch, in_features, out_features", [(1, 64, 32), (16, 64, 32), (5, 4, 16), (3, 64, 2), (20, 4, 16),
                                                              (17, 64, 2)])
def test_forward_equals_the_masked_dense_matmul_and_a_plain_python_sum(batch, in_features, out_features):
    x, kernel, mask, indices = _layer(jax.random.key(1), batch, in_features, out_features, 0.9)
    y = condensed.dense(x, kernel, indices)
    np.testing.assert_allclose(y, x @ kernel, rtol=1e-5, atol=1e-5)
    x_np, kernel_np, indices_np = map(np.asarray, (x, kernel, indices))
    expected = [[sum(x_np[b, i] * kernel_np[i, o] for i in indices_np[o]) for o in range(out_features)] for b in range(batch)]
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch", [8, 24])  # scalar gathers and row gathers forward
def test_gradients_equal_masked_dense_also_off_the_mask(batch):
    x, kernel, mask, indices = _layer(jax.random.key(2), batch, 64, 32, 0.9)
    target = jax.random.normal(jax.random.key(3), (batch, 32))

    def loss(forward):
        return lambda x, kernel: jnp.sum(jnp.tanh(forward(x, kernel)) * target)

    condensed_grads = jax.grad(loss(lambda x, w: condensed.dense(x, w, indices)), argnums=(0, 1))(x, kernel)
    dense_grads = jax.grad(loss(lambda x, w: x @ w), argnums=(0, 1))(x, kernel)
    np.testing.assert_allclose(condensed_grads[0], dense_grads[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(condensed_grads[1], dense_grads[1], rtol=1e-5, atol=1e-5)
    assert float(jnp.max(jnp.abs(jnp.where(mask, 0.0, condensed_grads[1])))) > 0  # RigL grows from these


def test_vmap_over_seeds_equals_each_seed_alone():
    layers = [_layer(jax.random.key(seed), 4, 32, 16, 0.75) for seed in range(3)]
    x, kernel, _, indices = (jnp.stack(parts) for parts in zip(*layers))
    batched = jax.jit(jax.vmap(condensed.dense))(x, kernel, indices)
    for seed in range(3):
        np.testing.assert_allclose(batched[seed], condensed.dense(x[seed], kernel[seed], indices[seed]), rtol=1e-6)
    grads = jax.vmap(jax.grad(lambda x, w, i: jnp.sum(condensed.dense(x, w, i) ** 2), argnums=1))(x, kernel, indices)
    np.testing.assert_allclose(grads[1], jax.grad(lambda w: jnp.sum((x[1] @ w) ** 2))(kernel[1]), rtol=1e-5, atol=1e-5)


def test_auto_runs_condensed_only_under_the_measured_bound():
    params = {"dense_0": {"kernel": jnp.zeros((512, 512))}, "output": {"kernel": jnp.zeros((512, 2))}}
    indices = {"dense_0": {"indices": jnp.zeros((512, 52), jnp.int32)}, "output": {"indices": jnp.zeros((2, 52), jnp.int32)}}
    assert condensed.select(indices, params, 1, "auto") == {"output": indices["output"]}  # 2 * 52 gathered vs 512 * 52
    assert condensed.select(indices, params, 16, "auto") == {"output": indices["output"]}  # 16 * 2 * 52 = 1664
    assert condensed.select(indices, params, 32, "auto") == {}  # 32 * 2 * 52 > AUTO_MAX_GATHERED
    assert condensed.select(indices, params, 128, "condensed") is indices
    assert condensed.select(indices, params, 1, "masked") == {}


def _network(kernels_name: str):
    """An 80%-sparse RigL MLP on constant fan-in masks whose topology changes every 2 steps."""
    config = SparsityConfig(method="rigl", sparsity=0.8, distribution="uniform", structure="fan_in",
                            settings=DropAndGrowSettings(update_period=2, update_start=0, update_end=100, drop_fraction=0.5))
    return sparse_network.make_network(networks.MLP((24, 24), 3), optax.adam(1e-2), config, kernels=kernels_name)


def test_indices_follow_the_masks_at_init_and_after_a_topology_update():
    network = _network("condensed")
    x = jax.random.normal(jax.random.key(0), (6, 5))
    state = sparse_network.init(network, jax.random.key(1), x)

    def assert_consistent(state):
        for layer in ("dense_0", "dense_1", "output"):
            mask = state.opt_state.masks[layer]["kernel"]
            np.testing.assert_array_equal(state.indices[layer]["indices"],
                                          structure.fan_in_indices(mask, condensed.fan_in(mask.shape[0], 0.8)))
        np.testing.assert_allclose(sparse_network.apply(network, state.params, x, indices=state.indices),
                                   sparse_network.apply(network, state.params, x), rtol=1e-5, atol=1e-5)

    assert_consistent(state)
    grads = jax.tree.map(jnp.ones_like, state.params)
    apply_gradients = jax.jit(lambda state, step: sparse_network.apply_gradients(network, state, grads, step, jax.random.key(2)))
    same = apply_gradients(state, jnp.int32(1))  # not a topology step
    np.testing.assert_array_equal(same.indices["dense_1"]["indices"], state.indices["dense_1"]["indices"])
    changed = apply_gradients(same, jnp.int32(2))  # a topology step: new masks, new indices
    assert not np.array_equal(changed.opt_state.masks["dense_1"]["kernel"], state.opt_state.masks["dense_1"]["kernel"])
    assert_consistent(changed)


# Per method, a DQN run whose masks change during the run (the indices must follow): RigL's topology updates
# every 100 updates; prune from dense to 90% (k: 32 -> 4 on 32 inputs, ladder (4, 8)) every 20 updates in the
# first half of the 300; SRigL's updates every 50 with ablation.
_DQN_METHODS = {
    "rigl": {"sparse.sparsity": 0.75, "sparse.rigl.update_period": 100},
    "prune": {"sparse.sparsity": 0.9, "sparse.prune.update_period": 20, "sparse.prune.start_fraction": 0.0,
              "sparse.prune.end_fraction": 0.5},
    "srigl": {"sparse.sparsity": 0.9, "sparse.srigl.update_period": 50, "sparse.srigl.ablation_threshold": 0.9},
}


def _dqn_run(kernels_name: str, workdir, method: str = "rigl") -> list[dict]:
    config = dqn_config.get_config()
    config.update_from_flattened_dict({
        "steps": 400, "learning_starts": 100, "log_every": 100, "eval_every": 400, "eval_episodes": 2,
        "checkpoint_every": 10**9, "batch_size": 16, "network.hidden_sizes": (32, 32), "target_update_period": 50,
        "sparse.method": method, "sparse.distribution": "uniform", "sparse.kernels": kernels_name,
        "sparse.structure": "fan_in", **_DQN_METHODS[method]})
    env_spec = envs.env_spec(config.env)
    agent = dqn.make(config, env_spec)
    writer = MetricsWriter(str(workdir), 0)
    run = loop.Run([0], [writer], ProgressPrinter("test", config.steps, stream=io.StringIO()),
                     checkpoint.Checkpointer([str(workdir)], 1))
    try:
        runner.run_off_policy(agent, config, env_spec, run)
    finally:
        writer.close()
    return read_csv(str(workdir / "metrics.csv")) + read_csv(str(workdir / "eval.csv"))


NEEDS_GXX = pytest.mark.skipif(shutil.which("g++") is None, reason="native kernels are built with g++, not on PATH")


def _assert_same_rows(masked, condensed_rows):
    assert len(masked) == len(condensed_rows) >= 4
    for masked_row, condensed_row in zip(masked, condensed_rows):
        for name, value in masked_row.items():
            if name == "sps" or math.isnan(value):
                continue
            assert float(condensed_row[name]) == pytest.approx(float(value), rel=1e-4, abs=1e-5), name


@pytest.mark.slow
@NEEDS_GXX
def test_a_dqn_run_with_native_kernels_matches_masked(tmp_path):
    """400 steps of 75% RigL (fan_in) DQN: topology updates every 100 updates, a target copy every 50, so the
    target runs both with the online indices and masked (`dqn.target_q_values`). XLA's `condensed` kernels share
    this code; their products are checked against masked above."""
    _assert_same_rows(_dqn_run("masked", tmp_path / "masked"), _dqn_run("native", tmp_path / "native"))


@pytest.mark.slow
@NEEDS_GXX
@pytest.mark.parametrize("method", ["prune", "srigl"])
def test_a_dqn_run_of_a_changing_fan_in_with_native_kernels_matches_masked(method, tmp_path):
    """400 steps (300 updates) with native kernels equal the masked run, target copies every 50: prune's layers
    run masked, then at capacities 8 and 4 as the fan-in shrinks (steps 20-150); SRigL's hidden layers run as
    slots with offsets, training their kept values, through topology updates every 50 that ablate (gamma_sal 0.9:
    fewer than 3 of k = 4 salient)."""
    _assert_same_rows(_dqn_run("masked", tmp_path / "masked", method), _dqn_run("native", tmp_path / "native", method))


def test_a_network_with_unknown_kernels_is_refused():
    with pytest.raises(ConfigError, match="unknown kernels 'fast'") as error:
        sparse_network.make_network(networks.MLP((4,), 2), optax.adam(1e-3), SparsityConfig(), kernels="fast")
    assert error.value.field == "sparse.kernels"


def test_a_pruned_layers_ladder_doubles_from_the_final_fan_in_up_to_a_quarter_of_the_dense_one():
    assert condensed.MAX_CONDENSED_DENSITY == 0.25
    assert condensed.ladder(512, 52) == (52, 104, 128)  # 90%: 52 * 2 = 104, then floor(0.25 * 512) = 128
    assert condensed.ladder(16, 2) == (2, 4)
    assert condensed.ladder(10, 5) == (5,)  # the final fan-in always has its capacity, even above a quarter
    assert [int(condensed.bucket(jnp.int32(kept), (2, 4))) for kept in (16, 8, 5, 4, 3, 2, 1)] == [2, 2, 2, 1, 1, 0, 0]


def _prune_network(kernels_name: str):
    """One fan_in layer [16, 2] pruned to 87.5% (k = 2) over steps 0-4, every step."""
    config = SparsityConfig(method="prune", sparsity=0.875, distribution="uniform", structure="fan_in",
                            settings=Window(update_period=1, update_start=0, update_end=4))
    return sparse_network.make_network(networks.MLP((), 2), optax.adam(1e-2), config, kernels=kernels_name)


def test_prune_indices_and_buckets_follow_the_cubic_schedule_by_hand():
    """s_t = 0.875 (1 - (1 - t/4)^3): 0, 0.5059, 0.7656, 0.8613, 0.875 at t = 0..4, so k_t = 16 - floor(16 s_t) =
    16, 8, 4, 3, 2; step t runs on the masks of step t - 1, at ladder (2, 4): masked (bucket 2) through step 2,
    capacity 4 at steps 3 and 4 (step 4 with one padding position), capacity 2 from step 5 on."""
    network = _prune_network("condensed")
    prune = get_topology("prune")
    sparsity_at = jax.jit(lambda step: prune.sparsity_at(step, 0.875, network.optimizer.config))
    kept = [int(condensed.fan_in(16, sparsity_at(jnp.int32(step)))[0]) for step in range(7)]
    assert kept == [16, 16, 8, 4, 3, 2, 2]
    assert [int(condensed.bucket(jnp.int32(k), (2, 4))) for k in kept] == [2, 2, 2, 1, 1, 0, 0]

    x = jax.random.normal(jax.random.key(0), (16, 16))
    state = sparse_network.init(network, jax.random.key(1), x)
    assert state.indices["output"]["indices"].shape == (2, 4)  # the ladder's largest capacity
    magnitudes = jnp.stack([jnp.arange(1.0, 17.0), jnp.arange(16.0, 0.0, -1.0)], axis=1)  # column 0 rises, 1 falls
    state = state.replace(params={"output": {"kernel": magnitudes, "bias": jnp.zeros(2)}})
    zero_grads = jax.tree.map(jnp.zeros_like, state.params)  # Adam moves nothing: only the masks change
    apply_gradients = jax.jit(lambda state, step: sparse_network.apply_gradients(network, state, zero_grads, step,
                                                                                 jax.random.key(2)))
    apply = jax.jit(lambda state, step: sparse_network.apply(network, state.params, x, indices=state.indices, step=step))
    expected_indices = {1: [[8, 9, 10, 11], [0, 1, 2, 3]],  # k = 8 > 4: the first 4 kept (unused: masked)
                        2: [[12, 13, 14, 15], [0, 1, 2, 3]],  # k = 4: exactly the kept inputs
                        3: [[13, 14, 15, 0], [0, 1, 2, 3]],  # k = 3: one padding position each
                        4: [[14, 15, 0, 1], [0, 1, 2, 3]]}  # k = 2 (capacity 2 reads the first two)
    for step in range(5):
        state = apply_gradients(state, jnp.int32(step))
        np.testing.assert_array_equal(np.sum(state.opt_state.masks["output"]["kernel"], axis=0), [kept[step + 1]] * 2)
        if step in expected_indices:
            indices = np.asarray(state.indices["output"]["indices"])
            np.testing.assert_array_equal(indices, expected_indices[step])
            kernel = np.asarray(state.params["output"]["kernel"])
            padding = [kernel[i, o] for o in range(2) for i in indices[o, kept[step + 1]:]]
            assert padding == [0.0] * len(padding)  # padding positions point at pruned (zero) weights
        np.testing.assert_allclose(apply(state, jnp.int32(step + 1)), x @ state.params["output"]["kernel"],
                                   rtol=1e-5, atol=1e-5)


@NEEDS_GXX
def test_srigl_slots_after_an_ablation_step_by_hand():
    """A [4, 3] layer at k = 2 (budget 6), drop fraction 0.5: n_prune = 3. Salient: the 3 largest |w| (5, 4 in
    neuron 0, 3 in neuron 2) and the 3 largest |grad| (inputs 2, 3 of neuron 0, input 1 of neuron 2), so the
    counts are 4, 0, 2 and neuron 1 is ablated (threshold max(1, floor(0.3 * 2)) = 1). A = 2 survivors keep
    k' = min(4, 6 // 2) = 3: neuron 0 keeps 0, 1 and grows 2; neuron 2 keeps 0 (2 and 0.1, 0.2 dropped) and grows
    1, then 2 (a tie at 0, the first position). Slots (`variable_fan_in`, 3 x 2 read flat): neuron 0 in slots 0-2,
    neuron 1 in none, neuron 2 in slots 3-5, so offsets 0, 3, 3, 6. Then a budget of 8 (k = 4 over 2 neurons, 3 of
    them kept in all) leaves slots 3-7 to no neuron, pointing at input 0."""
    mask = jnp.array([[1, 0, 1], [1, 0, 0], [0, 1, 0], [0, 1, 1]], bool)
    weights = jnp.array([[5.0, 0, 3.0], [4.0, 0, 0], [0, 0.1, 0], [0, 0.2, 2.0]])
    grads = jnp.array([[0, 0, 0], [0, 0, 0.8], [1.0, 0, 0], [0.9, 0, 0]])
    ablated = srigl.ablated_neurons(weights, mask, grads, 0.5, 2, 0.3)
    np.testing.assert_array_equal(ablated, [False, True, False])
    new_mask = srigl.srigl_mask(weights, mask, grads, 0.5, 2, ablated)
    np.testing.assert_array_equal(new_mask, [[1, 0, 1], [1, 0, 1], [1, 0, 1], [0, 0, 0]])
    slots = condensed.variable_fan_in(new_mask, 2)
    np.testing.assert_array_equal(slots["indices"], [[0, 1], [2, 0], [1, 2]])
    np.testing.assert_array_equal(slots["offsets"], [0, 3, 3, 6])
    spare = condensed.variable_fan_in(jnp.array([[1, 0], [0, 0], [1, 1], [0, 0]], bool), 4)
    np.testing.assert_array_equal(spare["indices"], [[0, 2, 2, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(spare["offsets"], [0, 2, 3])
    kernel = jnp.where(new_mask, jnp.arange(1.0, 13.0).reshape(4, 3), 0.0)
    x = jax.random.normal(jax.random.key(0), (16, 4))
    loss = lambda product: lambda x, kernel: jnp.sum(jnp.tanh(product(x, kernel)) * jnp.arange(3.0))
    by_slots = lambda x, kernel: condensed_native.dense(x, kernel, slots["indices"], slots["offsets"])
    np.testing.assert_allclose(by_slots(x, kernel), x @ kernel, rtol=1e-5, atol=1e-5)
    (dx, dkernel), (masked_dx, masked_dkernel) = (jax.grad(loss(product), argnums=(0, 1))(x, kernel)
                                                  for product in (by_slots, jnp.matmul))
    np.testing.assert_allclose(dx, masked_dx, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dkernel, jnp.where(new_mask, masked_dkernel, 0.0), rtol=1e-5, atol=1e-5)
