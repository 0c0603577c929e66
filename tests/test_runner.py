"""sparserl.runner: seed axes and the frozen-network watch (the loops themselves run end to end in test_train,
test_resume and the agents' tests)."""

import jax
import jax.numpy as jnp
import numpy as np

from agents import dqn
from configs import dqn as dqn_config
from sparserl import envs, runner
from sparserl.logging import read_csv
from tests.conftest import run_train


def test_frozen_watch_flags_exactly_unchanged_networks_per_seed(capsys):
    config = dqn_config.get_config()
    config.network.hidden_sizes = (8,)
    agent = dqn.make(config, envs.env_spec("CartPole-v1"))
    state = runner.init_states(agent, [0, 1])
    watch = runner.FrozenNetworkWatch(state)

    # No gradient step in the window (before learning starts): nothing to judge.
    assert np.isnan(watch.check(state, [0, 1], (0, 100))["warnings/frozen/online"]).all()

    # One gradient step that moved a single parameter of seed 1 by one float step: seed 0 is frozen.
    params = state.online.params
    kernel = params["output"]["kernel"]
    moved = kernel.at[1, 0, 0].set(jnp.nextafter(kernel[1, 0, 0], jnp.float32(1.0)))
    params = {**params, "output": {**params["output"], "kernel": moved}}
    state = state.replace(online=state.online.replace(params=params), step=state.step + 1)
    metrics = watch.check(state, [0, 1], (100, 200))
    np.testing.assert_array_equal(metrics["warnings/frozen/online"], [1.0, 0.0])
    assert capsys.readouterr().out.strip() == (
        "warning: the online network of seed(s) 0 got no update at all from step 100 to 200 (no path from input to "
        "output? a zero learning rate?); see warnings/frozen/online")

    # Still frozen in the next window: the metric says so again, the console only once.
    state = state.replace(step=state.step + 1)
    np.testing.assert_array_equal(watch.check(state, [0, 1], (200, 300))["warnings/frozen/online"], [1.0, 1.0])
    assert capsys.readouterr().out == ""


def test_network_params_finds_every_network_of_a_state():
    state = runner.init_states(dqn.make(dqn_config.get_config(), envs.env_spec("CartPole-v1")), [0])
    assert list(runner.network_params(state)) == ["online"]  # target params are not a trained network
    assert jax.tree.structure(runner.network_params(state)["online"]) == jax.tree.structure(state.online.params)


def test_a_run_with_a_zero_learning_rate_is_reported_frozen(tmp_path):
    result = run_train("--agent=dqn", "--steps=300", "--config.learning_starts=50", "--config.log_every=100",
                       "--eval_every=300", "--config.eval_episodes=1", "--config.network.hidden_sizes=16,16",
                       "--config.learning_rate=0", f"--workdir={tmp_path}", "--run_name=run")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("warning: the online network of seed(s) 0 got no update at all") == 1
    rows = read_csv(tmp_path / "run" / "seed0" / "metrics.csv")
    assert [row["warnings/frozen/online"] for row in rows] == [1.0, 1.0, 1.0]
