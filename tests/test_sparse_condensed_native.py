"""Native condensed kernels (C++ custom calls): forward and backward against masked dense and plain Python, vmap,
the dense gradient on topology steps, the target network's masks, kept-value training (`sparse_network.kept_layers`:
the kept values' own product, gradient, gather and scatter, and gradient steps equal to dense-shaped ones), the
build and its errors."""

import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from sparserl import envs, networks, remedies, sparse_network
from sparserl.sparse import SparsityConfig, condensed, condensed_native, structure
from sparserl.sparse.srigl import SRigLSettings
from sparserl.sparse.topology import DropAndGrowSettings, Settings, Window

# The kernels are built with the machine's g++ (docs/performance.md: "Condensed kernels"); the two tests of what happens
# without one, or on another backend, run anyway.
needs_compiler = pytest.mark.skipif(shutil.which("g++") is None, reason="native kernels are built with g++, not on PATH")


def _layer(key, batch_shape, in_features, out_features, sparsity):
    mask_key, kernel_key, x_key = jax.random.split(key, 3)
    mask = structure.random_mask(condensed.CONSTANT_FAN_IN, mask_key, (in_features, out_features), sparsity)
    kernel = jnp.where(mask, jax.random.normal(kernel_key, mask.shape), 0.0)
    x = jax.random.normal(x_key, (*batch_shape, in_features))
    return x, kernel, mask, structure.fan_in_indices(mask, condensed.fan_in(in_features, sparsity))


# Batches inside one tile of 16 and across tiles with a partial last one; outputs in blocks of four with a
# remainder, and over more than one block of 64; a leading axis folded into the batch.
@needs_compiler
@pytest.mark.parametrize("batch_shape, in_features, out_features", [
    ((1,), 64, 32), ((16,), 64, 6), ((37,), 8, 130), ((2, 9), 64, 5)])
def test_forward_equals_the_masked_matmul_and_a_plain_python_sum(batch_shape, in_features, out_features):
    x, kernel, _, indices = _layer(jax.random.key(1), batch_shape, in_features, out_features, 0.75)
    y = jax.jit(condensed_native.dense)(x, kernel, indices)
    np.testing.assert_allclose(y, x @ kernel, rtol=1e-5, atol=1e-5)
    x_np, kernel_np, indices_np = np.asarray(x).reshape(-1, in_features), np.asarray(kernel), np.asarray(indices)
    expected = [[sum(row[i] * kernel_np[i, o] for i in indices_np[o]) for o in range(out_features)] for row in x_np]
    np.testing.assert_allclose(np.asarray(y).reshape(-1, out_features), expected, rtol=1e-5, atol=1e-5)


# Batch 130: 9 tiles, which a pool of two or more threads cuts into parts of 4 and 5 tiles (the backward pass's
# kernel gradient summed per part, then added); smaller batches take one task per tile.
PARTS_BATCH = 130


@needs_compiler
@pytest.mark.parametrize("batch", [3, 40, PARTS_BATCH])
def test_dx_is_the_masked_one_and_the_kernel_gradient_is_the_masked_one_on_the_mask_and_zero_off_it(batch):
    x, kernel, mask, indices = _layer(jax.random.key(2), (batch,), 64, 70, 0.9)
    target = jax.random.normal(jax.random.key(3), (batch, 70))
    masked_dx, masked_dkernel = jax.grad(lambda x, w: jnp.sum((x @ w - target) ** 2), argnums=(0, 1))(x, kernel)
    native = jax.jit(jax.grad(lambda x, w: jnp.sum((condensed_native.dense(x, w, indices) - target) ** 2), argnums=(0, 1)))
    dx, dkernel = native(x, kernel)
    np.testing.assert_allclose(dx, masked_dx, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dkernel, jnp.where(mask, masked_dkernel, 0.0), rtol=1e-4, atol=1e-4)
    assert np.all(np.asarray(dkernel)[~np.asarray(mask)] == 0.0)


@needs_compiler
def test_vmap_over_seeds_with_their_own_masks_equals_each_seed_alone():
    layers = [_layer(jax.random.key(seed), (20,), 32, 24, 0.75) for seed in range(3)]
    x, kernel, _, indices = (jnp.stack(parts) for parts in zip(*layers))
    loss = lambda x, w, i: jnp.sum(condensed_native.dense(x, w, i) ** 2)
    batched = jax.jit(jax.vmap(jax.value_and_grad(loss, argnums=(0, 1))))(x, kernel, indices)
    for seed in range(3):
        alone = jax.value_and_grad(loss, argnums=(0, 1))(x[seed], kernel[seed], indices[seed])
        for batched_leaf, alone_leaf in zip(jax.tree.leaves(batched), jax.tree.leaves(alone)):
            np.testing.assert_allclose(batched_leaf[seed], alone_leaf, rtol=1e-6, atol=1e-6)


@needs_compiler
def test_other_dtypes_are_refused():
    x, kernel, _, indices = _layer(jax.random.key(4), (16,), 8, 4, 0.5)
    with pytest.raises(TypeError, match="native condensed kernels take float32"):
        condensed_native.dense(x.astype(jnp.bfloat16), kernel, indices)


def _rigl_network(kernels):
    config = SparsityConfig(method="rigl", sparsity=0.75, distribution="uniform", structure="fan_in",
                            settings=DropAndGrowSettings(update_period=10, update_start=0, update_end=100, drop_fraction=0.3))
    return sparse_network.make_network(networks.MLP((32,), 3), optax.adam(1e-2), config, kernels=kernels)


@needs_compiler
@pytest.mark.parametrize("step, dense", [(10, True), (11, False)])  # RigL's topology steps are multiples of 10
def test_joint_value_and_grad_gives_the_dense_gradient_on_topology_steps_only(step, dense):
    network = _rigl_network("native")
    x = jax.random.normal(jax.random.key(5), (24, 6))
    state = sparse_network.init(network, jax.random.key(6), x)
    loss = lambda params, indices: (jnp.sum(sparse_network.apply(network, params, x, indices=indices) ** 2), 0.0)
    (_, _), (grads,) = jax.jit(lambda state, step: sparse_network.joint_value_and_grad(
        (network,), lambda params, indices: loss(params[0], indices[0]), (state,), step))(state, jnp.int32(step))
    (_, _), masked_grads = jax.value_and_grad(loss, has_aux=True)(state.params, {})
    mask = state.opt_state.masks["output"]["kernel"]
    expected = masked_grads["output"]["kernel"] if dense else jnp.where(mask, masked_grads["output"]["kernel"], 0.0)
    np.testing.assert_allclose(grads["output"]["kernel"], expected, rtol=1e-4, atol=1e-5)
    assert bool(np.any(np.asarray(grads["output"]["kernel"])[~np.asarray(mask)] != 0.0)) == dense


@needs_compiler
@pytest.mark.parametrize("batch_shape", [(1,), (37,), (2, 9), (2, PARTS_BATCH // 2)])
def test_the_kept_values_product_and_gradient_are_the_masked_ones_at_the_kept_connections(batch_shape):
    x, kernel, mask, indices = _layer(jax.random.key(11), batch_shape, 64, 70, 0.9)
    values = condensed_native.gather(kernel, indices)
    np.testing.assert_array_equal(values, np.asarray(kernel)[np.asarray(indices), np.arange(70)[:, None]])
    loss = lambda x, w: jnp.sum(jnp.sin(x @ w))
    (dx, dvalues) = jax.grad(lambda x, v: jnp.sum(jnp.sin(condensed_native.dense_kept(x, v, indices))),
                             argnums=(0, 1))(x, values)
    masked_dx, masked_dkernel = jax.grad(loss, argnums=(0, 1))(x, kernel)
    np.testing.assert_allclose(condensed_native.dense_kept(x, values, indices), x @ kernel, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, masked_dx, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dvalues, np.asarray(masked_dkernel)[np.asarray(indices), np.arange(70)[:, None]],
                               rtol=1e-4, atol=1e-5)


@needs_compiler
@pytest.mark.parametrize("batch", [40, PARTS_BATCH])
def test_values_that_are_not_differentiated_get_dx_alone_from_the_input_only_kernel(batch):
    """SAC's critics inside its actor loss: only dx flows through them. The backward pass is then the dx-only kernel
    (`BACKWARD_INPUT`), with the masked layer's dx, also vmapped; differentiating the values as well runs the
    kept-value kernel."""
    x, kernel, _, indices = _layer(jax.random.key(12), (batch,), 64, 70, 0.9)
    values = condensed_native.gather(kernel, indices)
    loss = lambda x, v: jnp.sum(jnp.sin(condensed_native.dense_kept(x, v, indices)))
    masked_dx = jax.grad(lambda x: jnp.sum(jnp.sin(x @ kernel)))(x)
    input_only = jax.jit(jax.grad(loss))
    program = input_only.lower(x, values).as_text()
    assert condensed_native.BACKWARD_INPUT in program and condensed_native.BACKWARD_KEPT not in program
    np.testing.assert_allclose(input_only(x, values), masked_dx, rtol=1e-4, atol=1e-5)
    vmapped = jax.jit(jax.vmap(jax.grad(loss)))(jnp.stack([x, 2 * x]), jnp.stack([values, values]))
    np.testing.assert_allclose(vmapped[1], jax.grad(lambda x: jnp.sum(jnp.sin(x @ kernel)))(2 * x), rtol=1e-4, atol=1e-5)
    both = jax.jit(jax.grad(loss, argnums=(0, 1)))
    program = both.lower(x, values).as_text()
    assert condensed_native.BACKWARD_KEPT in program and condensed_native.BACKWARD_INPUT not in program
    np.testing.assert_allclose(both(x, values)[0], masked_dx, rtol=1e-4, atol=1e-5)


@needs_compiler
def test_scatter_writes_the_kept_values_and_leaves_every_other_entry_also_vmapped():
    layers = [_layer(jax.random.key(seed), (4,), 40, 20, 0.75) for seed in range(2)]
    kernels, indices = jnp.stack([layer[1] for layer in layers]), jnp.stack([layer[3] for layer in layers])
    masks = np.stack([np.asarray(layer[2]) for layer in layers])
    new_values = jax.random.normal(jax.random.key(3), (2, 20, 10))
    background = jnp.full(kernels.shape, 7.0)
    written = jax.jit(jax.vmap(condensed_native.scatter), donate_argnums=0)(background, indices, new_values)
    for seed in range(2):
        expected = np.full((40, 20), 7.0, np.float32)
        expected[np.asarray(indices[seed]), np.arange(20)[:, None]] = np.asarray(new_values[seed])
        np.testing.assert_array_equal(written[seed], expected)
        assert np.all(np.asarray(written[seed])[~masks[seed]] == 7.0)
    np.testing.assert_array_equal(jax.vmap(condensed_native.gather)(kernels, indices),
                                  [np.asarray(kernels[seed])[np.asarray(indices[seed]), np.arange(20)[:, None]]
                                   for seed in range(2)])


def _ablated_layer(key, batch, in_features=48, out_features=70, k=6, ablated=(0, 3, 4, 5, 9, 40, 69)):
    """A layer as SRigL leaves it after an ablation: `ablated` neurons keep no input, the others k' = floor(out k / A)
    each (the budget out * k), the first active neuron one fewer, so that the counts differ beyond 0 and k'."""
    active = [o for o in range(out_features) if o not in ablated]
    k_active = out_features * k // len(active)
    mask_key, kernel_key, x_key = jax.random.split(key, 3)
    scores = np.asarray(jax.random.uniform(mask_key, (in_features, out_features)))
    counts = np.zeros(out_features, int)
    counts[active] = k_active
    counts[active[0]] -= 1
    mask = np.zeros((in_features, out_features), bool)
    for o in range(out_features):
        mask[np.argsort(scores[:, o])[:counts[o]], o] = True
    kernel = jnp.where(mask, jax.random.normal(kernel_key, mask.shape), 0.0)
    return jax.random.normal(x_key, (batch, in_features)), kernel, jnp.asarray(mask), k


@needs_compiler
@pytest.mark.parametrize("batch", [5, 37, PARTS_BATCH])
def test_variable_fan_in_within_the_budget_runs_every_kernel_as_the_masked_layer(batch):
    """SRigL's ablated layers (`condensed.variable_fan_in`): neurons of 0, k' - 1 and k' inputs in out * k slots.
    The product, dx, the dense-shaped and the kept-value kernel gradients, gather and scatter equal the masked
    layer's, also vmapped over two seeds; the slots of no neuron hold 0 and get gradient 0."""
    layers = [_ablated_layer(jax.random.key(seed), batch) for seed in (1, 2)]
    k = layers[0][3]
    x, kernel, mask = (jnp.stack([layer[part] for layer in layers]) for part in range(3))
    nodes = jax.vmap(lambda mask: condensed.variable_fan_in(mask, k))(mask)
    indices, offsets = nodes["indices"], nodes["offsets"]
    for seed in range(2):  # by hand: each neuron's kept inputs, ascending, in its slots; the rest unused
        flat, ends = np.asarray(indices[seed]).reshape(-1), np.asarray(offsets[seed])
        counts = np.asarray(mask[seed]).sum(axis=0)
        np.testing.assert_array_equal(ends, np.concatenate([[0], np.cumsum(counts)]))
        for o in range(70):
            np.testing.assert_array_equal(flat[ends[o]:ends[o + 1]], np.flatnonzero(np.asarray(mask[seed])[:, o]))
        assert ends[-1] < flat.size and np.all(flat[ends[-1]:] == 0)
    target = jax.random.normal(jax.random.key(3), (2, batch, 70))
    loss = lambda y, t: jnp.sum(jnp.sin(y) * t)
    masked = jax.vmap(jax.value_and_grad(lambda x, w, t: loss(x @ w, t), argnums=(0, 1)))(x, kernel, target)
    native = jax.jit(jax.vmap(jax.value_and_grad(
        lambda x, w, i, f, t: loss(condensed_native.dense(x, w, i, f), t), argnums=(0, 1))))(x, kernel, indices, offsets, target)
    values = jax.jit(jax.vmap(condensed_native.gather))(kernel, indices, offsets)
    kept = jax.jit(jax.vmap(jax.value_and_grad(
        lambda x, v, i, f, t: loss(condensed_native.dense_kept(x, v, i, f), t), argnums=(0, 1))))(x, values, indices, offsets, target)
    np.testing.assert_allclose(native[0], masked[0], rtol=1e-4)
    np.testing.assert_allclose(kept[0], masked[0], rtol=1e-4)
    np.testing.assert_allclose(native[1][0], masked[1][0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(kept[1][0], masked[1][0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(native[1][1], jnp.where(mask, masked[1][1], 0.0), rtol=1e-4, atol=1e-5)
    rewritten = jax.jit(jax.vmap(condensed_native.scatter))(jnp.zeros_like(kernel), indices, kept[1][1], offsets)
    np.testing.assert_allclose(rewritten, jnp.where(mask, masked[1][1], 0.0), rtol=1e-4, atol=1e-5)
    for seed in range(2):
        used = np.arange(indices[seed].size) < int(offsets[seed][-1])
        for slots in (values[seed], kept[1][1][seed]):
            assert np.all(np.asarray(slots).reshape(-1)[~used] == 0.0)
    np.testing.assert_array_equal(jax.jit(jax.vmap(condensed_native.scatter))(jnp.zeros_like(kernel), indices, values,
                                                                              offsets), kernel)


def _fan_in_network(method, kernels, sparsity=0.9, module=None):
    settings = {"static": Settings(), "prune": Window(update_period=10, update_start=0, update_end=100),
                "set": DropAndGrowSettings(update_period=10, update_start=0, update_end=100, drop_fraction=0.3),
                "rigl": DropAndGrowSettings(update_period=10, update_start=0, update_end=100, drop_fraction=0.3),
                "srigl": SRigLSettings(update_period=10, update_start=0, update_end=100, drop_fraction=0.3,
                                        ablation_threshold=0.9)}[method]  # gamma_sal 0.9: it ablates
    config = SparsityConfig(method=method, sparsity=sparsity, distribution="uniform", structure="fan_in",
                            settings=settings)
    return sparse_network.make_network(module or networks.MLP((64, 64), 3), optax.adamw(1e-2, weight_decay=0.1),
                                       config, kernels=kernels)


@needs_compiler
@pytest.mark.parametrize("method, kept", [
    ("static", {"dense_0", "dense_1", "output"}),
    ("rigl", {"dense_0", "dense_1", "output"}),
    ("prune", set()),  # its kept count changes: kept values gathered per phase, not stored (`kept_counts`)
    ("srigl", {"dense_0", "dense_1", "output"}),  # its hidden layers' slots with offsets too
])
def test_kept_layers_are_the_native_layers_of_one_k_per_neuron_up_to_a_quarter_dense(method, kept):
    x = jnp.ones((1, 40))
    state = sparse_network.init(_fan_in_network(method, "native"), jax.random.key(0), x)
    layers = sparse_network.kept_layers(_fan_in_network(method, "native"), state.params, state.indices)
    assert set(layers) == kept
    adam = state.opt_state.inner[0]
    for layer in kept:
        assert adam.mu[layer]["kernel"].shape == state.indices[layer]["indices"].shape  # moments stored [out, k]
    half_dense = _fan_in_network("static", "native", sparsity=0.5)
    assert sparse_network.kept_layers(half_dense, *(lambda s: (s.params, s.indices))(
        sparse_network.init(half_dense, jax.random.key(0), x))) == {}  # 50% dense: runs masked
    masked = _fan_in_network("static", "masked")
    assert sparse_network.kept_layers(masked, sparse_network.init(masked, jax.random.key(0), x).params, {}) == {}


@needs_compiler
@pytest.mark.parametrize("method", ["rigl", "srigl"])  # their steps between topology updates are static's
def test_kept_value_gradient_steps_equal_dense_shaped_ones_through_topology_updates_and_redo(method):
    """31 AdamW steps with a clipped gradient norm (topology updates at 10, 20, 30) and a ReDo step, native against
    masked, 2 seeds vmapped;
    then the network's outputs from its own state (`indices_of`: the kept values) at batch 1 and 48."""
    x = jax.random.normal(jax.random.key(5), (2, 48, 40))
    redo = ml_collections.ConfigDict(dict(enabled=True, remedy="redo", tau=0.5, period=None, shrink=0.8, perturb=0.2,
                                          reset_layers=1))

    def run(kernels):
        network = _fan_in_network(method, kernels)

        def train(x, key):
            state = sparse_network.init(network, key, x[:1])
            loss = lambda params, indices: (jnp.mean(jnp.sin(sparse_network.apply(network, params, x, indices=indices,
                                                                                    step=0)) ** 2), 0.0)
            def step_and_redo(state, step):  # clipped to a norm of 0.05, below the initial 0.41: it binds
                _, (state,) = sparse_network.joint_gradient_step(
                    (network,), lambda params, indices: loss(params[0], indices[0]), (state,), step,
                    (jax.random.fold_in(key, step),), max_grad_norm=0.05)
                return jax.lax.cond(step == 15, lambda: remedies.apply(redo, network, state, key, (x,), None)[0],
                                    lambda: state), None

            state, _ = jax.lax.scan(step_and_redo, state, jnp.arange(31))
            outputs = [sparse_network.apply(network, state.params, inputs, indices=sparse_network.indices_of(state),
                                            step=31) for inputs in (x[:1], x)]
            return state, sparse_network.dense_opt_state(network, state), outputs

        return jax.jit(jax.vmap(train))(x, jax.random.split(jax.random.key(6), 2))

    (native, native_opt_state, native_outputs), (masked, masked_opt_state, masked_outputs) = run("native"), run("masked")
    network = _fan_in_network(method, "native")
    first_seed = jax.tree.map(lambda leaf: leaf[0], native)
    assert sparse_network.kept_layers(network, first_seed.params, first_seed.indices)
    # The kept values the layers compute from are the kernels' values at the indices after every kind of step.
    gathered = sparse_network.kept_values(network, first_seed.params, first_seed.indices)
    assert first_seed.kept.keys() == gathered.keys()
    for layer, values in gathered.items():
        np.testing.assert_array_equal(first_seed.kept[layer], values, err_msg=layer)
    if method == "srigl":  # its updates ablated neurons: fan-ins of 0 and k' > k
        fan_ins = np.diff(np.asarray(native.indices["dense_1"]["offsets"]), axis=-1)
        assert np.any(fan_ins == 0) and np.any(fan_ins > native.indices["dense_1"]["indices"].shape[-1])
    for native_leaf, masked_leaf in zip(jax.tree.leaves((native.params, native_opt_state, native_outputs)),
                                        jax.tree.leaves((masked.params, masked_opt_state, masked_outputs))):
        np.testing.assert_allclose(native_leaf, masked_leaf, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("first, step, unchanged", [
    (0, 0, True),     # an empty interval
    (0, 10, True),    # steps 0..9: 0 is not an update step (schedules.is_periodic_step: never at step 0)
    (0, 11, False),   # ... 10 is
    (11, 20, True),   # 11..19
    (100, 150, True),  # past update_end
])
def test_masks_unchanged_is_no_topology_step_in_the_interval(first, step, unchanged):
    network = _rigl_network("native")
    assert bool(sparse_network.masks_unchanged(network, jnp.int32(first), jnp.int32(step), 50)) == unchanged


@needs_compiler
def test_the_library_is_cached_under_xdg_cache_home_and_built_without_leftovers(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = condensed_native.library_path()
    assert path.startswith(str(tmp_path / "sparserl" / "native")) and path == condensed_native.library_path()
    assert condensed_native.build() == path and os.path.getsize(path) > 0
    assert os.listdir(os.path.dirname(path)) == [os.path.basename(path)]  # no partial build left behind


def test_without_a_compiler_native_kernels_say_so(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(condensed_native, "_registered", False)
    monkeypatch.setattr(condensed_native.shutil, "which", lambda name: None)
    assert condensed_native.unavailable_reason() == "native kernels need a C++ compiler: g++ is not on PATH"


def test_on_another_backend_native_kernels_say_so(monkeypatch):
    monkeypatch.setattr(condensed_native.jax, "default_backend", lambda: "gpu")
    assert condensed_native.unavailable_reason() == "native kernels run on the CPU only (this process runs on gpu)"


@needs_compiler
@pytest.mark.parametrize("agent_name, env_id, method", [
    ("dqn", "CartPole-v1", "static"), ("dqn", "CartPole-v1", "prune"), ("dqn", "CartPole-v1", "srigl"),
    ("dqn", "gymnax:Breakout-MinAtar", "static"),
    ("sac", "Pendulum-v1", "rigl"), ("ppo", "Pendulum-v1", "set")])
def test_every_agent_and_constant_fan_in_method_runs_native_kernels_in_its_update(agent_name, env_id, method):
    """The update program holds native forward and backward calls (a method or agent that silently fell back to
    masked matmuls would hold none); prune in its final capacity (past its pruning window)."""
    from sparserl.agent_contract import agent_module
    from sparserl.experiments.bench import agent_programs, training

    config = training.train_config(agent_name, env_id, {
        "sparse.method": method, "sparse.sparsity": 0.9, "sparse.structure": "fan_in", "sparse.kernels": "native",
        "network.hidden_sizes": (64, 64), "steps": 10_000, **({"batch_size": 32} if agent_name != "ppo" else {}),
        **({"sparse.distribution": "uniform"} if env_id.endswith("MinAtar") else {})})  # ERK leaves the conv at 50%
    agent = agent_module(agent_name).make(config, envs.env_spec(env_id))
    spec = envs.env_spec(env_id)
    state = jax.eval_shape(agent.init, jax.random.key(0))
    batch = (agent_programs.random_rollout(spec, config.rollout_steps, config.num_envs, seed=0) if agent_name == "ppo"
             else agent_programs.random_transitions(spec, config.batch_size, seed=0))
    batch = jax.tree.map(lambda array: array[0], batch)
    program = jax.jit(agent.update).lower(state, batch, jax.random.key(1)).as_text()
    assert program.count(condensed_native.FORWARD) >= 2 and program.count(condensed_native.BACKWARD) >= 1
    if method in ("static", "prune", "srigl"):  # between topology updates the layers train their kept values
        assert program.count(condensed_native.BACKWARD_KEPT) >= 1
    if env_id.endswith("MinAtar"):  # the conv layer too (90%: 4 of 36 fan-in positions) beside the dense layer
        assert program.count(condensed_native.BACKWARD) >= 2
