"""sparserl.bench: the table, its JSON, the goals, the step clock and the command's errors (no timed assertions)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparserl import bench


def tiny_row(settings):
    """A row like the real ones, on two tiny jitted functions."""
    small, large = jax.jit(lambda x: x + 1), jax.jit(lambda x: x @ x)
    vector, matrix = jnp.ones(3), jnp.ones((8, 8))
    ms = bench.interleaved_ms({"small": lambda: small(vector), "large": lambda: large(matrix)}, rounds=2, calls=2)
    return [bench.Row("tiny", "large vs small", ms["large"], ms["small"], "ms", ms["large"] / ms["small"],
                      "large / small", "<= 1e9"),
            bench.Row("tiny", "no baseline", 3.0, None, "s", None, "", "<= 3", goal_on="ours")]


def test_a_tiny_row_prints_a_table_and_writes_well_formed_json(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench, "ROWS", {"tiny": tiny_row})
    monkeypatch.setenv("SPARSERL_COMPILATION_CACHE", "0")
    path = tmp_path / "out.json"
    assert bench.main(["--quick", "--rows=tiny", f"--json={path}"]) == 0
    table = json.loads(path.read_text())
    assert table["quick"] is True and table["command"] == f"python -m sparserl.bench --quick --rows=tiny --json={path}"
    assert table["machine"]["platform"] == jax.devices()[0].platform
    first, second = table["rows"]
    assert first["name"] == "large vs small" and first["ratio"] == pytest.approx(first["ours"] / first["baseline"])
    assert first["holds"] is True
    assert second["baseline"] is None and second["ratio"] is None and second["holds"] is True
    output = capsys.readouterr().out
    assert "| tiny  | large vs small" in output and "<= 3 s" in output


@pytest.mark.parametrize("goal, goal_on, ratio, ours, holds", [
    ("<= 1.05", "ratio", 1.05, 9.0, True),
    ("<= 1.05", "ratio", 1.06, 0.0, False),
    (">= 3", "ratio", 2.99, 0.0, False),
    (">= 3", "ratio", 3.0, 0.0, True),
    ("<= 3", "ours", 100.0, 2.5, True),
    ("<= 3", "ours", 0.1, 3.5, False),
    ("", "ratio", 1.0, 1.0, None),
    (">= 2", "ratio", None, 1.0, None),
])
def test_a_row_holds_its_goal(goal, goal_on, ratio, ours, holds):
    row = bench.Row("g", "n", ours, 1.0, "s", ratio, "a / b", goal, goal_on)
    assert row.holds is holds


def test_peers_without_sbx_is_one_line_and_exit_status_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench, "peers_available", lambda: False)
    monkeypatch.setenv("SPARSERL_COMPILATION_CACHE", "0")
    path = tmp_path / "out.json"
    assert bench.main(["--peers", f"--json={path}"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: --peers needs sbx") and captured.err.count("\n") == 1
    assert captured.out == "" and not path.exists()


def test_an_unknown_row_is_one_line_and_exit_status_2(monkeypatch, capsys):
    monkeypatch.setenv("SPARSERL_COMPILATION_CACHE", "0")
    assert bench.main(["--rows=sparse_update,nope"]) == 2
    captured = capsys.readouterr()
    assert captured.err == "error: --rows: unknown row(s) nope; choose from " + ", ".join(bench.ROWS) + "\n"


def test_steady_rate_is_env_steps_over_time_from_the_given_fraction():
    clock = bench.StepClock()
    clock.steps, clock.times = [4, 8, 12, 16, 20], [0.0, 1.0, 1.5, 2.0, 4.0]
    assert clock.steady_rate(from_fraction=0.4) == pytest.approx((20 - 12) / (4.0 - 1.5))
    assert clock.steady_rate(from_fraction=0.0) == pytest.approx((20 - 4) / 4.0)


def test_override_flags_are_what_sparserl_train_parses():
    flags = bench.override_flags({"network.hidden_sizes": (256, 256), "learning_rate": 1e-4, "checkpoint_replay": False})
    assert flags == ["--config.network.hidden_sizes=256,256", "--config.learning_rate=0.0001",
                     "--config.checkpoint_replay=false"]


def test_agent_config_applies_the_family_preset_then_the_overrides():
    config = bench.agent_config("dqn", "ALE/Pong-v5", {"replay_capacity": 1000, "sparse.sparsity": 0.9})
    assert config.env == "ALE/Pong-v5" and config.network.kind == "cnn" and config.train_every == 4
    assert config.replay_capacity == 1000 and config.sparse.method == "rigl"
    assert bench.agent_config("dqn", "CartPole-v1", {}).sparse.method == "dense"


def test_the_clock_counts_every_training_env_step_of_every_seed():
    config = bench.agent_config("dqn", "CartPole-v1", {
        "steps": 120, "num_seeds": 2, "learning_starts": 50, "log_every": 60, "eval_every": 120, "eval_episodes": 1,
        "checkpoint_every": 10**9, "network.hidden_sizes": (16,), "batch_size": 8})
    clock = bench.StepClock()
    bench.train_in_process(config, clock)
    assert clock.steps == list(range(2, 2 * 120 + 1, 2))  # eval episodes after the last step are not counted
    assert np.all(np.diff(clock.times) >= 0)


def test_the_condensed_rows_run_dqn_at_graessers_protocol_on_constant_fan_in_masks():
    from sparserl.agents import dqn
    from sparserl import envs

    config = bench.condensed_dqn_config("condensed", {})
    assert tuple(config.network.hidden_sizes) == (512, 512) and config.batch_size == 128 and config.train_every == 1
    assert (config.sparse.method, config.sparse.sparsity, config.sparse.structure) == ("static", 0.9, "fan_in")
    config.network.hidden_sizes = (64, 64)
    agent = dqn.make(config, envs.env_spec("CartPole-v1"))
    state = agent.init(jax.random.key(0))
    assert state.online.indices  # ERK keeps some layers dense: those have no indices
    for layer, node in state.online.indices.items():
        kept = np.sum(state.online.opt_state.masks[layer]["kernel"], axis=0)
        np.testing.assert_array_equal(kept, node["indices"].shape[1])
