"""sparserl.cli: the flag a config field is set by, a library error as the usage line, one line and exit status 2."""

import types

import ml_collections
import pytest

from sparserl import cli, train
from sparserl.errors import ConfigError


@pytest.mark.parametrize("field, flag", [
    ("sparse.sparsity", "--sparsity"),
    ("sparse.actor_sparsity", "--actor_sparsity"),
    ("sparse.structure", "--structure"),
    ("sparse.method", "--method"),
    ("redo.enabled", "--redo"),
    ("redo.tau", "--redo_tau"),
    ("num_seeds", "--num_seeds"),
    ("agent", "--agent"),
    ("env", "--env"),
    ("network.kind", "--config.network.kind"),
    ("sparse.kernels", "--config.sparse.kernels"),
    ("log_every", "--config.log_every"),
])
def test_a_field_maps_to_the_flag_that_sets_it(field, flag):
    assert cli.flag_of(field) == flag


def test_a_config_error_is_the_usage_line_naming_the_flag():
    kind = cli.usage_error(ConfigError("network.kind", "unknown kind 'rnn'; choose one of mlp, cnn"))
    structure = cli.usage_error(ConfigError("sparse.structure", "unknown structure 'nm:5:4'; choose unstructured"))
    assert isinstance(kind, cli.UsageError)
    assert str(kind) == "--config.network.kind: unknown kind 'rnn'; choose one of mlp, cnn"
    assert str(structure) == "--structure: unknown structure 'nm:5:4'; choose unstructured"
    assert str(cli.usage_error(ConfigError("steps", "must be >= 1, got 0\nsecond line"))) == "--steps: must be >= 1, got 0"


def test_a_value_error_that_names_its_flag_is_its_text():
    assert str(cli.usage_error(ValueError("--env: unknown environment 'x'\nmore"))) == "--env: unknown environment 'x'"


def test_largest_sparsity_of_a_config_and_of_a_config_json():
    sparse = ml_collections.ConfigDict(dict(sparsity=0.5, actor_sparsity=0.8, critic_sparsity=None))
    assert cli.largest_sparsity(sparse) == 0.8
    assert cli.largest_sparsity({"sparsity": 0.9}) == 0.9  # a config.json of an agent with one network
    assert cli.largest_sparsity({"sparsity": 0.0, "actor_sparsity": None}) == 0.0


def test_bad_input_is_reported_in_one_line_with_status_2(capsys):
    assert cli.report_usage("--seeds: must be >= 1, got 0\nignored") == 2
    assert capsys.readouterr().err == "error: --seeds: must be >= 1, got 0\n"


def test_the_parser_reports_bad_arguments_in_one_line_and_exits_2(capsys):
    parser = cli.OneLineParser()
    parser.add_argument("--seeds", type=int)
    with pytest.raises(SystemExit) as exited:
        parser.parse_args(["--seeds=two"])
    assert exited.value.code == 2
    assert capsys.readouterr().err == "error: argument --seeds: invalid int value: 'two'\n"


def test_a_config_error_from_the_library_ends_train_with_the_usage_line_exit_2_and_nothing_written(
        tmp_path, capsys, monkeypatch):
    def make(config, env_spec):
        raise ConfigError("network.kind", "unknown kind 'rnn'; choose one of mlp, cnn")

    monkeypatch.setattr(train, "agent_module", lambda name: types.SimpleNamespace(make=make, LOOP="off_policy"))
    with pytest.raises(SystemExit) as exited:
        train._parse_flags(["sparserl.train", f"--workdir={tmp_path / 'work'}"])
    assert exited.value.code == 2
    assert capsys.readouterr().err == "error: --config.network.kind: unknown kind 'rnn'; choose one of mlp, cnn\n"
    assert list(tmp_path.iterdir()) == []
