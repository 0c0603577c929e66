"""sparserl.bench (`sparserl.experiments.bench`): the table, its JSON, the goals, the steady rate a run's metrics
give, the runs the rows build through `sparserl.train`, and the command's errors (no timed assertions)."""

import json
import os
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparserl import envs
from sparserl.agent_contract import agent_module
from sparserl.experiments.bench import agent_programs, cli, compiled, condensed, condensed_agents, timing, training, workloads
from sparserl.experiments.bench.table import Row
from sparserl.reporting import MetricsWriter, read_csv


def tiny_row(settings):
    """A row like the real ones, on two tiny jitted functions."""
    small, large = jax.jit(lambda x: x + 1), jax.jit(lambda x: x @ x)
    vector, matrix = jnp.ones(3), jnp.ones((8, 8))
    ms = timing.interleaved_ms({"small": lambda: small(vector), "large": lambda: large(matrix)}, rounds=2, calls=2)
    return [Row("tiny", "large vs small", ms["large"], ms["small"], "ms", ms["large"] / ms["small"],
                "large / small", "<= 1e9"),
            Row("tiny", "no baseline", 3.0, None, "s", None, "", "<= 3", goal_on="ours")]


def test_a_tiny_row_prints_a_table_and_writes_well_formed_json(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "ROWS", ("tiny",))
    monkeypatch.setitem(sys.modules, f"{cli.__package__}.tiny", types.SimpleNamespace(rows=tiny_row))
    monkeypatch.setenv("SPARSERL_COMPILATION_CACHE", "0")
    path = tmp_path / "out.json"
    assert cli.main(["--quick", "--rows=tiny", f"--json={path}"]) == 0
    table = json.loads(path.read_text())
    assert table["quick"] is True and table["command"] == f"python -m sparserl.bench --quick --rows=tiny --json={path}"
    assert table["machine"]["platform"] == jax.devices()[0].platform
    first, second = table["rows"]
    assert first["name"] == "large vs small" and first["ratio"] == pytest.approx(first["ours"] / first["baseline"])
    assert first["holds"] is True
    assert second["baseline"] is None and second["ratio"] is None and second["holds"] is True
    output = capsys.readouterr().out
    assert "| tiny  | large vs small" in output and "<= 3 s" in output


def test_every_row_is_a_module_with_a_rows_function():
    for name in cli.ROWS:
        assert callable(cli.row_function(name)), name


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
    row = Row("g", "n", ours, 1.0, "s", ratio, "a / b", goal, goal_on)
    assert row.holds is holds


def test_peers_without_sbx_is_one_line_and_exit_status_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "peers_available", lambda: False)
    monkeypatch.setenv("SPARSERL_COMPILATION_CACHE", "0")
    path = tmp_path / "out.json"
    assert cli.main(["--peers", f"--json={path}"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: --peers needs sbx") and captured.err.count("\n") == 1
    assert captured.out == "" and not path.exists()


def test_an_unknown_row_is_one_line_and_exit_status_2(monkeypatch, capsys):
    monkeypatch.setenv("SPARSERL_COMPILATION_CACHE", "0")
    assert cli.main(["--rows=sparse_update,nope"]) == 2
    captured = capsys.readouterr()
    assert captured.err == "error: --rows: unknown row(s) nope; choose from " + ", ".join(cli.ROWS) + "\n"


def test_steady_rate_is_the_median_sps_of_the_later_rows_summed_over_seeds(tmp_path):
    sps = {20: 1.0, 40: 4.0, 60: 2.0, 80: 3.0, 100: 100.0}  # the last row is left out where others are left
    for seed in (0, 1):
        writer = MetricsWriter(tmp_path / f"seed{seed}", seed)
        for step, rate in sps.items():
            writer.write(step, {"sps": rate})
        writer.close()
    assert timing.steady_rate(str(tmp_path), from_fraction=0.4) == pytest.approx(2 * np.median([2.0, 3.0]))
    assert timing.steady_rate(str(tmp_path), from_fraction=0.0) == pytest.approx(2 * np.median([1.0, 4.0, 2.0, 3.0]))
    assert timing.steady_rate(str(tmp_path), from_fraction=0.9) == pytest.approx(2 * 100.0)  # only the last is left


def test_override_flags_are_what_sparserl_train_parses():
    flags = training.override_flags({"network.hidden_sizes": (256, 256), "learning_rate": 1e-4, "checkpoint_replay": False})
    assert flags == ["--config.network.hidden_sizes=256,256", "--config.learning_rate=0.0001",
                     "--config.checkpoint_replay=false"]


def test_train_config_applies_the_family_preset_then_the_overrides():
    config = training.train_config("dqn", "ALE/Pong-v5", {"replay_capacity": 1000, "sparse.sparsity": 0.9})
    assert config.env == "ALE/Pong-v5" and config.network.kind == "cnn" and config.train_every == 4
    assert config.replay_capacity == 1000 and config.sparse.method == "rigl"
    assert training.train_config("dqn", "CartPole-v1", {}).sparse.method == "dense"


def test_a_quiet_run_in_process_writes_a_metrics_row_per_log_of_every_seed_and_gives_its_steady_rate(tmp_path, capfd):
    overrides = {**training.quiet_run(120, rows=2), "num_seeds": 2, "learning_starts": 50,
                 "network.hidden_sizes": (16,), "batch_size": 8}
    prepared = training.prepare("dqn", "CartPole-v1", overrides, str(tmp_path))
    training.train_quietly(prepared)
    assert capfd.readouterr().out == ""
    for seed in (0, 1):
        rows = read_csv(os.path.join(prepared.run_dirs[0], f"seed{seed}", "metrics.csv"))
        assert [row["step"] for row in rows] == [60, 120] and all(row["sps"] > 0 for row in rows)
    assert timing.steady_rate(prepared.run_dirs[0], from_fraction=0.0) == pytest.approx(2 * rows[0]["sps"])


def test_the_startup_row_times_a_child_run_to_its_metrics_row(tmp_path):
    workload = workloads.Workload("dqn", "CartPole-v1", {"network.hidden_sizes": (16,), "learning_starts": 10}, 0, 0,
                                  "DQN", {})
    run_dir, started, wall = workloads.run_ours(workload, 1, str(tmp_path), cache_dir=str(tmp_path / "cache"))
    metrics = os.path.join(run_dir, "seed0", "metrics.csv")
    assert [row["step"] for row in read_csv(metrics)] == [1]
    assert 0 < os.stat(metrics).st_mtime - started < wall


def test_the_roofline_program_runs_without_learning():
    agent_name, overrides = compiled.ROOFLINE_WORKLOADS["PPO CartPole (PureJaxRL settings)"]
    assert compiled.roofline_steps_per_second(agent_name, {**overrides, "network.hidden_sizes": (8,)}, False, 5_120) > 0


def test_the_condensed_rows_run_dqn_at_graessers_protocol_on_constant_fan_in_masks():
    config = condensed.dqn_config("condensed", {})
    assert tuple(config.network.hidden_sizes) == (512, 512) and config.batch_size == 128 and config.train_every == 1
    assert (config.sparse.method, config.sparse.sparsity, config.sparse.structure) == ("static", 0.9, "fan_in")
    config.network.hidden_sizes = (64, 64)
    agent = agent_module("dqn").make(config, envs.env_spec("CartPole-v1"))
    state = agent.init(jax.random.key(0))
    assert state.online.indices  # ERK keeps some layers dense: those have no indices
    for layer, node in state.online.indices.items():
        kept = np.sum(state.online.opt_state.masks[layer]["kernel"], axis=0)
        np.testing.assert_array_equal(kept, node["indices"].shape[1])


def test_sbx_peer_times_every_env_step_of_its_wrapped_env():
    sbx_peer = pytest.importorskip("sparserl.experiments.bench.sbx_peer", reason="sbx is not installed")
    env = sbx_peer.TimedSteps(envs.make_env("CartPole-v1"), exit_at_first_step=False)
    env.reset(seed=0)
    for _ in range(6):
        env.step(env.action_space.sample())
    assert len(env.times) == 6 and env.first_step_wall_time is not None and env.steady_rate() > 0


def test_the_condensed_agents_rows_run_their_workloads():
    """SAC 2x256 at batch 256 and the scaling sides (MinAtar, 1x dense against 4x 95% static fan_in), as the rows
    name them; the update call that donates its state can be called again (it keeps the state it returns)."""
    config = training.train_config("sac", "gymnax:Pendulum-v1", condensed_agents.fan_in_overrides("masked"))
    assert tuple(config.network.hidden_sizes) == (256, 256) and config.batch_size == 256
    assert (config.sparse.method, config.sparse.sparsity, config.sparse.structure) == ("static", 0.9, "fan_in")
    sparse_side = training.train_config("dqn", "gymnax:Breakout-MinAtar", condensed_agents.SCALING_SIDES["4x 95% static"])
    assert sparse_side.network.kind == "cnn" and sparse_side.network.width_multiplier == 4.0
    assert (sparse_side.sparse.sparsity, sparse_side.sparse.structure) == (0.95, "fan_in")
    prune_side = training.train_config("dqn", "gymnax:Breakout-MinAtar", condensed_agents.PRUNE_SIDES["4x 95% prune"])
    assert (prune_side.sparse.method, prune_side.sparse.sparsity, prune_side.sparse.kernels) == ("prune", 0.95, "native")
    config = condensed.dqn_config("masked", {"network.hidden_sizes": (8,), "batch_size": 4})
    call = agent_programs.donated_update_call(*agent_programs.make_agent(config), config)
    assert [float(call()["loss/td"][0]) >= 0 for _ in range(3)] == [True] * 3  # one seed
