"""Cost of dormancy scoring + ReDo recycling against one DQN update, on the Nature CNN (Atari preset).

    python -m experiments.bench_redo --iterations=30

Times, in one run on the same machine: one jitted DQN update (batch 32, Dopamine
Atari), one jitted ReDo call (score on a batch of 256 + recycle, Sokar et al.
2023) and one jitted dormancy measurement (batch 256). Reports medians and the
ratios to the update; with ReDo every `period` updates the amortised overhead is
ratio / period.
"""

import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

from agents import dqn
from configs import dqn as dqn_config
from sparserl.envs import EnvSpec
from sparserl.replay import Transition

flags.DEFINE_integer("iterations", 30, "Timed calls per function (after one compile call).")
flags.DEFINE_float("sparsity", 0.0, "Sparsity of the Q-network (RigL, ERK).")
FLAGS = flags.FLAGS

ATARI_SPEC = EnvSpec("ALE/Pong-v5", "atari", (84, 84, 4), np.dtype(np.uint8), True, 6, None, None, 27_000)


def _batch(key, size):
    keys = jax.random.split(key, 4)
    frames = lambda k: jax.random.randint(k, (size, 84, 84, 4), 0, 256).astype(jnp.uint8)  # noqa: E731
    return Transition(frames(keys[0]), jax.random.randint(keys[1], (size,), 0, 6), jax.random.normal(keys[2], (size,)),
                      frames(keys[3]), jnp.zeros((size,), bool))


def _median_ms(function, *args) -> float:
    jax.block_until_ready(function(*args))
    times = []
    for _ in range(FLAGS.iterations):
        start = time.perf_counter()
        jax.block_until_ready(function(*args))
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def main(_):
    config = dqn_config.get_config()
    config.update_from_flattened_dict(dqn_config.PRESETS["atari"])
    config.sparse.sparsity = FLAGS.sparsity
    config.sparse.method = "rigl" if FLAGS.sparsity > 0 else "dense"
    config.redo.enabled = True
    agent = dqn.make(config, ATARI_SPEC)
    state = agent.init(jax.random.key(0))
    update_ms = _median_ms(jax.jit(agent.update), state, _batch(jax.random.key(1), 32), jax.random.key(2))
    redo_batch = _batch(jax.random.key(3), 256)
    recycle_ms = _median_ms(jax.jit(agent.recycle), state, redo_batch, jax.random.key(4))
    measure_ms = _median_ms(jax.jit(agent.measure), state, redo_batch)
    print(f"Nature CNN DQN, sparsity {FLAGS.sparsity:g}, {jax.devices()[0].platform}, median of {FLAGS.iterations}")
    print(f"{'call':<34}{'ms':>10}{'x update':>10}")
    for name, ms in (("DQN update (batch 32)", update_ms), ("ReDo score + recycle (batch 256)", recycle_ms),
                     ("dormancy metrics (batch 256)", measure_ms)):
        print(f"{name:<34}{ms:>10.2f}{ms / update_ms:>10.2f}")
    print(f"ReDo every {config.redo.period} updates adds {100 * recycle_ms / update_ms / config.redo.period:.3f}% to training time")


if __name__ == "__main__":
    app.run(main)
