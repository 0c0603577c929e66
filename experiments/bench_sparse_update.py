"""Step time of one jitted sparse training update: dense vs 90%-sparse RigL.

One update is forward + backward + `sparse_optimizer(...).apply_gradients`, with
RigL's topology step (a `lax.cond` inside the jitted update) taken every
`--update_period` updates. Networks:

- mlp: MLP 2x512 on CartPole-sized input (4 -> 2), batch 128;
- cnn: NatureCNN on 84x84x4 uint8 frames (18 actions), batch 32 (DQN Atari).

Every variant is compiled and warmed up first, then timed for `--iterations`
updates, each one synchronised with `block_until_ready`. The table gives the
median ms per update (all updates, topology steps included), the mean, and the
ratio rigl / dense of the medians. `dense` is the same wrapper with
`method='dense'` (what a dense agent runs); `adam` is plain optax without
the wrapper, for reference.

    python -m experiments.bench_sparse_update --iterations=200 --networks=mlp,cnn
"""

import argparse
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import optax

from sparserl.networks import MLP, NatureCNN
from sparserl.sparse import SparsityConfig, sparse_optimizer

NETWORKS = {
    # name: (module, input shape without batch, input dtype, batch size)
    "mlp": (lambda: MLP((512, 512), 2), (4,), jnp.float32, 128),
    "cnn": (lambda: NatureCNN(18), (84, 84, 4), jnp.uint8, 32),
}


def make_inputs(key, shape, dtype, batch):
    if dtype == jnp.uint8:
        return jax.random.randint(key, (batch, *shape), 0, 256).astype(jnp.uint8)
    return jax.random.normal(key, (batch, *shape), dtype)


def build(network, variant, update_period, learning_rate=6.25e-5):
    """Returns (jitted update, initial carry) for one network and variant."""
    make_net, shape, dtype, batch = NETWORKS[network]
    net = make_net()
    key_params, key_masks, key_x, key_y = jax.random.split(jax.random.key(0), 4)
    x = make_inputs(key_x, shape, dtype, batch)
    params = net.init(key_params, x)["params"]
    targets = jax.random.normal(key_y, (batch, net.apply({"params": params}, x).shape[-1]))

    def loss_fn(params):
        return jnp.mean((net.apply({"params": params}, x) - targets) ** 2)

    inner = optax.adam(learning_rate)
    if variant == "adam":
        state = inner.init(params)

        @jax.jit
        def update(step, params, state, key):
            del step, key
            grads = jax.grad(loss_fn)(params)
            updates, state = inner.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        return update, (params, state)

    if variant == "dense":
        config = SparsityConfig(method="dense")
    else:
        config = SparsityConfig(method="rigl", sparsity=0.9, update_period=update_period, update_start=0, update_end=10**9)
    opt = sparse_optimizer(inner, config)
    params, state = opt.init(key_masks, params)

    @jax.jit
    def update(step, params, state, key):
        grads = jax.grad(loss_fn)(params)
        return opt.apply_gradients(step, params, grads, state, key)

    return update, (params, state)


def time_updates(update, carry, iterations, warmup, update_period):
    params, state = carry
    key = jax.random.key(1)
    # Warm-up: compile, and run one topology-update step (step = update_period) among the rest.
    for step in range(1, warmup + 1):
        params, state = update(jnp.int32(update_period if step == 1 else step), params, state, key)
    jax.block_until_ready((params, state))
    times = []
    for step in range(1, iterations + 1):
        start = time.perf_counter()
        params, state = update(jnp.int32(step), params, state, key)
        jax.block_until_ready((params, state))
        times.append((time.perf_counter() - start) * 1e3)
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=200, help="timed updates per variant (default 200)")
    parser.add_argument("--networks", default="mlp,cnn", help="comma-separated subset of: " + ",".join(NETWORKS))
    parser.add_argument("--update_period", type=int, default=100, help="RigL topology update every this many updates (default 100)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed updates before timing (default 5)")
    args = parser.parse_args(argv)
    networks = [name.strip() for name in args.networks.split(",") if name.strip()]
    unknown = [name for name in networks if name not in NETWORKS]
    if unknown or not networks:
        parser.error(f"--networks: unknown {', '.join(unknown) or '(empty)'}; choose from {', '.join(NETWORKS)}")
    if args.iterations < 1 or args.update_period < 1 or args.warmup < 1:
        parser.error("--iterations, --update_period and --warmup must be >= 1")

    device = jax.devices()[0]
    print(f"device: {device.platform} ({device.device_kind}), jax {jax.__version__}, iterations {args.iterations}, "
          f"rigl update_period {args.update_period}")
    rows = []
    for network in networks:
        results = {}
        for variant in ("adam", "dense", "rigl"):
            update, carry = build(network, variant, args.update_period)
            times = time_updates(update, carry, args.iterations, args.warmup, args.update_period)
            results[variant] = (statistics.median(times), statistics.fmean(times))
        rows.append((network, results))

    header = f"{'network':<8} {'batch':>5} {'adam ms':>9} {'dense ms':>9} {'rigl-0.9 ms':>12} {'rigl/dense':>10} {'dense mean':>10} {'rigl mean':>10}"
    print(header)
    print("-" * len(header))
    for network, results in rows:
        adam, dense, rigl = results["adam"], results["dense"], results["rigl"]
        print(f"{network:<8} {NETWORKS[network][3]:>5} {adam[0]:>9.3f} {dense[0]:>9.3f} {rigl[0]:>12.3f} {rigl[0] / dense[0]:>10.2f} "
              f"{dense[1]:>10.3f} {rigl[1]:>10.3f}")
    print("(ms per update: median over the timed updates; 'mean' columns include RigL's topology steps amortised)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
