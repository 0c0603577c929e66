"""sparserl.train_config: a command's config from its preset or file and overrides, and its checks, each mistake one
line naming the flag. Through the whole command line (flags included): tests/test_train.py, tests/test_bad_input.py."""

from absl import flags
import pytest

from sparserl import train_config
from sparserl.agent_contract import config_module
from sparserl.cli import UsageError
from sparserl.configs import dqn as dqn_config
from sparserl.errors import ConfigError

CONFIGS = config_module("dqn").__file__.rsplit("/", 1)[0]


def test_the_preset_is_the_env_family_s_unless_one_is_named():
    minatar = train_config.preset_config(None, "dqn", False, "MinAtar/Breakout-v1")
    assert minatar.to_dict() == {**dqn_config.get_config("minatar").to_dict(), "env": "MinAtar/Breakout-v1"}
    atari = train_config.preset_config(f"{CONFIGS}/dqn.py:atari", "dqn", False, None)
    assert atari.to_dict() == dqn_config.get_config("atari").to_dict()
    with pytest.raises(AttributeError):  # locked: flags and overrides change fields, never add them
        atari.no_such_field = 1


def test_a_config_file_s_agent_wins_over_the_default_of_agent_not_over_agent_given():
    assert train_config.preset_config(f"{CONFIGS}/sac.py", "dqn", False, None).agent == "sac"
    with pytest.raises(UsageError, match=rf"^--agent: {CONFIGS}/sac.py configures agent 'sac'; drop --agent or pass "
                                         r"another --config$"):
        train_config.preset_config(f"{CONFIGS}/sac.py", "dqn", True, None)


def test_overrides_set_typed_fields_and_anything_else_is_bad_input():
    config = train_config.preset_config(None, "dqn", False, None)
    assert train_config.apply_overrides(config, ["prog", "--config.batch_size=8", "--config.network.hidden_sizes=4,4"]) \
        == {"batch_size": 8, "network.hidden_sizes": (4, 4)}
    assert (config.batch_size, tuple(config.network.hidden_sizes)) == (8, (4, 4))
    with pytest.raises(UsageError, match=r"^unexpected arguments: stray$"):
        train_config.apply_overrides(config, ["prog", "stray"])
    with pytest.raises(UsageError, match=r"^--config.agent: set it with --agent$"):
        train_config.apply_overrides(config, ["prog", "--config.agent=sac"])
    with pytest.raises(UsageError, match=r"^--actor_sparsity: not a setting of --agent=dqn \(its config has no field "
                                         r"sparse.actor_sparsity\)$"):
        train_config.set_field(config, "sparse.actor_sparsity", 0.5, "--actor_sparsity")


def test_absl_s_errors_read_flag_colon_reason():
    values = flags.FlagValues()
    flags.DEFINE_integer("num_seeds", None, "seeds", flag_values=values)
    messages = []
    for argument in ("--num_seeds=two", "--frobnicate=1"):
        with pytest.raises(flags.Error) as raised:
            values(["prog", argument])
        messages.append(train_config.flag_error_message(raised.value))
    assert messages == ["--num_seeds: invalid literal for int() with base 10: 'two'",
                        "--frobnicate: unknown flag; see --helpfull"]


def test_validate_names_the_flag_of_the_field():
    config = dqn_config.get_config()
    config.sparse.method, config.redo.tau = "dense", -1.0
    with pytest.raises(UsageError, match=r"^--redo_tau: must be >= 0, got -1$"):
        train_config.validate(config)
    config.redo.tau, config.log_every = 0.1, 0
    with pytest.raises(UsageError, match=r"^--config.log_every: must be >= 1, got 0$"):
        train_config.validate(config)


def test_a_config_error_of_the_structure_names_the_structure_flag(monkeypatch):
    def parse(text):
        raise ConfigError("sparse.structure", f"unknown structure {text!r}; choose unstructured, fan_in or nm:N:M")

    monkeypatch.setattr(train_config.structure_lib, "parse", parse)
    sparse = dqn_config.get_config().sparse
    sparse.structure = "diagonal"
    with pytest.raises(UsageError) as raised:
        train_config.resolve_structure_sparsity(sparse)
    assert str(raised.value) == "--structure: unknown structure 'diagonal'; choose unstructured, fan_in or nm:N:M"


def test_a_level_listed_twice_is_found_as_run_directory_names_write_it():
    assert train_config.repeated_level([0.9, 0.5, 0.9000001]) == "0.9"
    assert train_config.repeated_level([0.5, 0.9]) is None
