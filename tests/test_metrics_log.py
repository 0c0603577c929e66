"""sparserl.metrics_log: the frozen-network flags (host watch and in-program function), the rows and the warning."""

import io

import jax
import jax.numpy as jnp
import numpy as np

from sparserl.agents import dqn
from sparserl.configs import dqn as dqn_config
from sparserl import checkpoint, envs, loop, metrics_log
from sparserl.reporting import MetricsWriter, ProgressPrinter, read_csv


def _states():
    config = dqn_config.get_config()
    config.network.hidden_sizes = (8,)
    state = loop.init_states(dqn.make(config, envs.env_spec("CartPole-v1")), [0, 1])
    return state, loop.seed_axes(state)


def _moved_for_seed_1(state):
    """One gradient step that moved a single parameter of seed 1 by one float step (seed 0 unchanged)."""
    params = state.online.params
    kernel = params["output"]["kernel"]
    moved = kernel.at[1, 0, 0].set(jnp.nextafter(kernel[1, 0, 0], jnp.float32(1.0)))
    params = {**params, "output": {**params["output"], "kernel": moved}}
    return state.replace(online=state.online.replace(params=params), step=state.step + 1)


def test_frozen_watch_flags_exactly_unchanged_networks_per_seed():
    state, axes = _states()
    watch = metrics_log.FrozenNetworkWatch(state, axes)
    # No gradient step since the watch began (before learning starts): nothing to judge.
    assert np.isnan(watch.check(state)["warnings/frozen/online"]).all()
    state = _moved_for_seed_1(state)
    np.testing.assert_array_equal(watch.check(state)["warnings/frozen/online"], [1.0, 0.0])
    # A step that changed nothing: both frozen, judged against the state of the last check.
    state = state.replace(step=state.step + 1)
    np.testing.assert_array_equal(watch.check(state)["warnings/frozen/online"], [1.0, 1.0])


def test_frozen_flags_inside_a_program_equal_the_watch():
    state, axes = _states()
    moved = _moved_for_seed_1(state)
    flags = jax.jit(jax.vmap(metrics_log.frozen_flags, in_axes=(axes, axes)))(state, moved)
    np.testing.assert_array_equal(flags["warnings/frozen/online"], [1.0, 0.0])


def test_network_params_finds_every_network_of_a_state():
    state, _ = _states()
    assert list(metrics_log.network_params(state)) == ["online"]  # target params are not a trained network
    assert jax.tree.structure(metrics_log.network_params(state)["online"]) == jax.tree.structure(state.online.params)


def test_rows_and_the_frozen_warning_once_per_network(tmp_path, capsys):
    """A row per member with the given mean returns and sps; the console warns once per frozen network, naming the
    frozen members and the row's steps; an evaluation row per member."""
    writers = [MetricsWriter(tmp_path / f"seed{seed}", seed) for seed in (3, 4)]
    run = loop.Run([3, 4], writers, ProgressPrinter("test", 300, stream=io.StringIO()),
                   checkpoint.Checkpointer([str(tmp_path / "seed3"), str(tmp_path / "seed4")], 1))
    log = metrics_log.MetricsLog(run)
    frozen = {"warnings/frozen/online": np.asarray([1.0, 0.0], np.float32)}
    log.log(100, {"loss/td": np.asarray([0.5, 0.25])}, frozen, False, episode_returns=np.asarray([10.0, np.nan]), sps=7.0)
    assert capsys.readouterr().out.strip() == (
        "warning: the online network of seed(s) 3 got no update at all from step 0 to 100 (no path from input to "
        "output? a zero learning rate?); see warnings/frozen/online")
    log.log(200, {}, {"warnings/frozen/online": np.asarray([1.0, 1.0])}, False)
    assert capsys.readouterr().out == ""
    log.evaluate(200, lambda: np.asarray([1.5, 2.5]))
    for writer in writers:
        writer.close()
    rows = read_csv(tmp_path / "seed3" / "metrics.csv")
    assert [(row["step"], row["train/episode_return"], row["loss/td"], row["sps"]) for row in rows][0] == (100, 10.0, 0.5, 7.0)
    assert np.isnan(read_csv(tmp_path / "seed4" / "metrics.csv")[0]["train/episode_return"])
    assert [row["eval/episode_return"] for row in read_csv(tmp_path / "seed4" / "eval.csv")] == [2.5]
