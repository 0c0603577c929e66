"""The config a `python -m sparserl.train` command trains: its preset or config file, the overrides, and the checks of
what it resolved to (docs/design.md contract 7).

`sparserl.train` defines the flags and applies them in this order, later steps winning: the agent's
`configs/<agent>.py` (or `--config=path.py`) with a preset applied (`preset_config`), the flags given, then the
`--config.<field>=value` overrides (`apply_overrides`, ml_collections' `config_flags`, typed by the config's fields).
`resolve_structure_sparsity`, `validate` and, for a `--sparsity` list, `check_sweep` then check the result. Every
mistake is a `sparserl.cli.UsageError` naming the flag.
"""

import importlib.util
import os
import re
from types import ModuleType
from typing import Any, Sequence

from absl import flags
import ml_collections
from ml_collections import config_flags

from sparserl.agent_contract import AGENTS, config_module
from sparserl.cli import FLAG_ONLY_FIELDS, SPARSITY_FIELDS, UsageError, flag_of, largest_sparsity, one_line, usage_error
from sparserl.configs.base import MEMBER_LOOPS, PADDED_SWEEP_METHODS, REMEDIES
from sparserl.sparse import structure as structure_lib
from sparserl.sparse.distributions import DISTRIBUTIONS
from sparserl.sparse.topology import TOPOLOGIES


def preset_config(config_file: str | None, agent: str, agent_given: bool, env: str | None) -> ml_collections.ConfigDict:
    """The agent config, locked, with its preset and env, and every field it lacks taken from the agent's defaults.

    `config_file` is `--config` (a path, optionally with a preset after a colon; None: configs/<agent>.py), `agent`
    `--agent` (`agent_given`: on the command line) and `env` `--env`. The preset is the one named after the colon,
    else the one of the env's family.
    """
    path, colon, preset = (config_file or "").partition(":")
    user_file = config_file is not None
    if not user_file:
        if agent not in AGENTS:
            raise UsageError(f"--agent: unknown agent {agent!r}; choose one of {', '.join(AGENTS)}")
        module, source = config_module(agent), f"configs/{agent}.py"
    else:
        module, source = _load_config_file(path), path
    presets = getattr(module, "PRESETS", None)
    if presets is not None:
        if colon and preset not in presets:
            raise UsageError(f"--config: {source} has no preset {preset!r}; choose one of {', '.join(presets)}")
        if not colon:  # the preset of the env's family
            env_id = env or _get_config(module, source, user_file).get("env")
            preset = _family(env_id, source)
            if preset not in presets:
                raise UsageError(f"--env: {source} has no preset for {preset} envs such as {env_id!r}; "
                                 f"choose an env of one of {', '.join(presets)}")
        config = _get_config(module, source, user_file, preset)
    else:
        config = _get_config(module, source, user_file, *([preset] if colon else []))
    configured = config.get("agent")
    if agent_given and agent != configured:
        raise UsageError(f"--agent: {source} configures agent {configured!r}; drop --agent or pass another --config")
    if configured not in AGENTS:
        raise UsageError(f"--config: {source} sets agent {configured!r}; choose one of {', '.join(AGENTS)}")
    config = _with_defaults(config, config_module(configured).get_config(), source)
    if env:
        if colon and presets is not None and _family(env, source) != preset:
            raise UsageError(f"--env: {env!r} is a {_family(env, source)} env, not one for the {preset} preset of {source}")
        config.env = env
    _family(config.env, source)
    return config


def _load_config_file(path: str) -> ModuleType:
    """The module of a `--config` file, which must define get_config()."""
    if not os.path.isfile(path):
        raise UsageError(f"--config: no such file {path!r}")
    try:
        spec = importlib.util.spec_from_file_location("sparserl_user_config", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except Exception as error:  # a broken user file: report it in one line
        raise UsageError(one_line(f"--config: cannot load {path!r}: {type(error).__name__}: {error}")) from None
    if not callable(getattr(module, "get_config", None)):
        raise UsageError(f"--config: {path!r} has no get_config()")
    return module


def _get_config(module: ModuleType, source: str, user_file: bool, *args: str) -> ml_collections.ConfigDict:
    """`module.get_config(*args)`; a user file's failure is bad input (one of ours is a bug, with its traceback)."""
    if not user_file:
        return module.get_config(*args)
    try:
        config = module.get_config(*args)
    except Exception as error:  # a broken user file: report it in one line
        raise UsageError(one_line(f"--config: {source}: get_config({', '.join(map(repr, args))}) failed: "
                                  f"{type(error).__name__}: {error}")) from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise UsageError(f"--config: {source}: get_config() returned a {type(config).__name__}, not a ConfigDict")
    return config


def _family(env_id: str | None, source: str) -> str:
    """The preset family of an env (`envs.preset_family`); `source` names the config file that set no env."""
    from sparserl import envs

    if env_id is None:
        raise UsageError(f"--env: {source} sets no env; pass --env")
    try:
        return envs.preset_family(env_id)  # a gymnax port takes its Gymnasium counterpart's preset
    except ValueError as error:
        raise usage_error(error) from None


def _with_defaults(config: ml_collections.ConfigDict, defaults: ml_collections.ConfigDict, source: str):
    """`config` on top of the agent's defaults: a config file written before a field existed still runs."""
    fields, default_fields = _fields(config), _fields(defaults)
    unknown = sorted(set(fields) - set(default_fields))
    if unknown:
        raise UsageError(f"--config: {source} sets {', '.join(unknown)}, which the {config.agent} config does not have")
    try:
        defaults.update_from_flattened_dict(fields)
    except (TypeError, ValueError) as error:
        raise UsageError(one_line(f"--config: {source}: {error}")) from None
    defaults.lock()  # flags and overrides may change fields, never add them
    return defaults


def _fields(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, Any]:
    """Every leaf field by its dotted name."""
    fields = {}
    for name, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            fields.update(_fields(value, f"{prefix}{name}."))
        else:
            fields[f"{prefix}{name}"] = value
    return fields


def set_field(config: ml_collections.ConfigDict, field: str, value: Any, flag: str) -> None:
    """Sets a config field (a dotted path) to the value `flag` gave."""
    try:
        config.update_from_flattened_dict({field: value})
    except KeyError:
        raise UsageError(f"{flag}: not a setting of --agent={config.agent} (its config has no field {field})") from None
    except TypeError as error:
        raise UsageError(one_line(f"{flag}: {error}")) from None


def apply_overrides(config: ml_collections.ConfigDict, arguments: list[str]) -> dict[str, Any]:
    """Applies the `--config.<field>=value` arguments with ml_collections' config_flags; returns what they set.

    `arguments` are the program's name and what the flags left; any argument but an override is bad input.
    """
    program, arguments = arguments[0], arguments[1:]
    for argument in arguments:
        match = re.match(r"--?(?:no)?config\.([^=]+)", argument)
        if match:
            _check_field(config, match.group(1))
    values = flags.FlagValues()
    config_flags.DEFINE_config_dict("config", config, flag_values=values, sys_argv=[program, *arguments])
    try:
        positional = values([program, *arguments])
    except flags.Error as error:
        raise UsageError(flag_error_message(error)) from None
    if len(positional) > 1:
        raise UsageError(f"unexpected arguments: {' '.join(positional[1:])}")
    return values["config"].override_values


def _check_field(config: ml_collections.ConfigDict, field: str) -> None:
    """A `--config.<field>` override must name a field of the config that a flag does not own."""
    if field in FLAG_ONLY_FIELDS:
        raise UsageError(f"--config.{field}: set it with {flag_of(field)}")
    node, path = config, []
    for part in field.split("."):
        if not isinstance(node, ml_collections.ConfigDict):
            raise UsageError(f"--config.{field}: {'.'.join(path)} is a value, not a block of fields")
        if part not in node:
            raise UsageError(f"--config.{field}: the {config.agent} config has no such field; "
                             f"choose one of {', '.join(node)}")
        node, path = node[part], path + [part]


def flag_error_message(error: flags.Error) -> str:
    """absl's message for a bad flag in our form: `--flag: reason`."""
    if isinstance(error, flags.UnrecognizedFlagError):
        return f"--{error.flagname}: unknown flag; see --helpfull"
    message = one_line(str(error))
    match = re.fullmatch(r"flag (--[\w.]+)=.*?: (.*)", message)
    return f"{match.group(1)}: {match.group(2)}" if match else message


def resolve_structure_sparsity(sparse: ml_collections.ConfigDict) -> None:
    """The structure the method trains (srigl: fan_in) and the sparsity an N:M structure fixes at 1 - N/M:
    sets them, or rejects a structure the method cannot train and a different sparsity given."""
    text = sparse.structure
    try:
        if sparse.method in TOPOLOGIES:
            text = sparse.structure = TOPOLOGIES[sparse.method].structure_for(text)
        fixed = structure_lib.parse(text).fixed_sparsity
    except ValueError as error:
        raise usage_error(error) from None
    if fixed is None:
        return
    for name in SPARSITY_FIELDS:
        value = sparse.get(name)
        if value and abs(value - fixed) > 1e-6:
            raise UsageError(f"--{name}: {value:g} conflicts with --structure={text}, "
                             f"which fixes the sparsity at 1 - N/M = {fixed:g}; leave --{name} out")
    sparse.sparsity = fixed


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises UsageError, naming the flag (or `--config.<field>`), for a config no agent can train."""
    if config.agent not in AGENTS:
        raise UsageError(f"--agent: unknown agent {config.agent!r}; choose one of {', '.join(AGENTS)}")
    sparse = config.sparse
    if sparse.method not in TOPOLOGIES:
        raise UsageError(f"--method: unknown method {sparse.method!r}; choose one of {', '.join(TOPOLOGIES)}")
    if sparse.distribution not in DISTRIBUTIONS:
        raise UsageError(f"--distribution: unknown distribution {sparse.distribution!r}; "
                         f"choose one of {', '.join(DISTRIBUTIONS)}")
    for name in SPARSITY_FIELDS:
        value = sparse.get(name)
        if value is not None:
            _check_in_unit_interval(name, value)
    if sparse.get("index_level") is not None:
        raise UsageError("--config.sparse.index_level: a sweep of levels sets it (its lowest level); leave it out")
    if sparse.method != "dense" and largest_sparsity(sparse) == 0.0:
        raise UsageError(f"--sparsity: --method={sparse.method} needs a sparsity in (0, 1)")
    if sparse.method == "dense" and largest_sparsity(sparse) > 0.0:
        raise UsageError(f"--method: dense cannot train at a sparsity > 0; choose one of {', '.join(_sparse_methods())}")
    if config.member_loop not in MEMBER_LOOPS:
        raise UsageError(f"--config.member_loop: unknown member loop {config.member_loop!r}; "
                         f"choose one of {', '.join(MEMBER_LOOPS)}")
    for field, minimum in (("num_seeds", 1), ("steps", 1), ("eval_every", 1), ("log_every", 1), ("checkpoint_every", 1),
                           ("seed", 0), ("redo.tau", 0.0), ("redo.period", 1), ("redo.perturb", 0.0),
                           ("redo.reset_layers", 1)):
        value = _field_value(config, field)
        if value is not None and value < minimum:
            raise UsageError(f"{flag_of(field)}: must be >= {minimum:g}, got {value:g}")
    if config.redo.remedy not in REMEDIES:
        raise UsageError(f"{flag_of('redo.remedy')}: unknown remedy {config.redo.remedy!r}; "
                         f"choose one of none, {', '.join(REMEDIES)}")
    if not 0.0 <= config.redo.shrink <= 1.0:
        raise UsageError(f"--config.redo.shrink: {config.redo.shrink:g} is outside [0, 1]")
    for name in ("hidden_sizes", "conv_features", "kernel_sizes", "strides", "dense_sizes"):
        sizes = config.network.get(name)
        if sizes is not None and not (isinstance(sizes, (tuple, list)) and sizes and all(
                isinstance(size, int) and not isinstance(size, bool) and size >= 1 for size in sizes)):
            raise UsageError(f"--config.network.{name}: {sizes!r} is not a list of positive integers such as 64,64")


def apply_recycle(config: ml_collections.ConfigDict, remedy: str, redo_given: bool) -> None:
    """`--recycle=<remedy>`: the remedy on (`redo.enabled`, `redo.remedy`), or off with `none`; not with `--redo`."""
    if redo_given:
        raise UsageError("--recycle: give --recycle or --redo, not both (--redo is --recycle=redo)")
    if remedy != "none" and remedy not in REMEDIES:
        raise UsageError(f"--recycle: unknown remedy {remedy!r}; choose one of none, {', '.join(REMEDIES)}")
    config.redo.enabled = remedy != "none"
    if config.redo.enabled:
        config.redo.remedy = remedy


def remedy_text(redo: ml_collections.ConfigDict) -> str:
    """The remedy of a `redo` block with its settings, for the console: `redo tau=0.1`, `shrink_perturb 0.8/0.2`."""
    if redo.remedy in ("redo", "regrama"):
        return f"{redo.remedy} tau={redo.tau:g}"
    if redo.remedy == "shrink_perturb":
        return f"shrink_perturb {redo.shrink:g}/{redo.perturb:g}"
    return f"reset last {redo.reset_layers}"


def _sparse_methods() -> list[str]:
    """Every method but dense."""
    return [name for name in TOPOLOGIES if name != "dense"]


def _check_in_unit_interval(name: str, value: float) -> None:
    """A sparsity (`name` its flag) must lie in [0, 1)."""
    if not 0.0 <= value < 1.0:
        raise UsageError(f"--{name}: {value} is outside [0, 1)")


def _field_value(config: ml_collections.ConfigDict, field: str) -> Any:
    """The value of a field given by its dotted path."""
    for part in field.split("."):
        config = config[part]
    return config


# Kernels whose indices hold one k per layer (`sparserl.configs.base.kernels`): in a sweep, only where every level's
# indices fit the lowest level's k.
_CONCRETE_LEVEL_KERNELS = ("condensed", "native")


def check_sweep(config: ml_collections.ConfigDict, levels: Sequence[float], overridden: dict[str, Any]) -> None:
    """Raises UsageError, naming `--sparsity`, for a list of levels that cannot train as one compiled program
    (`compiled_runner.run_sweep`: the level is a traced value, on a JAX-native env), or whose levels would share a
    run directory. Each level's config is then validated as a run of its own (`validate`)."""
    from sparserl import envs

    sparse = config.sparse
    if "sparse.sparsity" in overridden:
        raise UsageError("--sparsity: a list of levels sets sparse.sparsity; leave out --config.sparse.sparsity")
    for level in levels:
        _check_in_unit_interval("sparsity", level)
    if 0.0 in levels:
        raise UsageError("--sparsity: 0 cannot be a level of a list: a dense network is not a sparsity level of a "
                         "sparse method; give levels in (0, 1) and train the dense network as a run of its own")
    twice = repeated_level(levels)
    if twice is not None:
        raise UsageError(f"--sparsity: level {twice} is listed twice (levels are told apart to 6 significant digits); "
                         "give each level once")
    if sparse.method == "dense":
        raise UsageError(f"--sparsity: a list of levels needs a sparse method, not --method=dense; choose one of "
                         f"{', '.join(_sparse_methods())}")
    per_network = [name for name in SPARSITY_FIELDS[1:] if sparse.get(name) is not None]
    if per_network:
        raise UsageError(f"--sparsity: a list of levels sets every network's sparsity; leave out --{per_network[0]}")
    if envs.env_family(config.env) != "gymnax":
        raise UsageError(f"--sparsity: a list of levels trains as one compiled program, which needs a JAX-native env "
                         f"(--env=gymnax:<id>, e.g. gymnax:CartPole-v1); {config.env} runs on the host loop, so give "
                         "one level per run")
    try:
        fixed = structure_lib.parse(sparse.structure).fixed_sparsity
    except ValueError as error:
        raise usage_error(error) from None
    if fixed is not None:
        raise UsageError(f"--sparsity: --structure={sparse.structure} fixes the sparsity at 1 - N/M = {fixed:g}, so "
                         "there are no levels to list; give one --sparsity or none")
    kernels = sparse.get("kernels", "masked")
    padded = sparse.get("structure", "unstructured") == "fan_in" and sparse.method in PADDED_SWEEP_METHODS
    if kernels in _CONCRETE_LEVEL_KERNELS and not padded:
        raise UsageError(f"--sparsity: a list of levels trains with the level traced, where "
                         f"--config.sparse.kernels={kernels} runs only fan_in masks of {', '.join(PADDED_SWEEP_METHODS)} "
                         "(every level's indices in the lowest level's k slots per neuron); choose masked or auto (auto runs masked "
                         "kernels there)")


def repeated_level(levels: Sequence[float]) -> str | None:
    """The first level listed twice, as run directory names write levels (`{level:g}`), or None."""
    names = [f"{level:g}" for level in levels]
    return next((name for index, name in enumerate(names) if name in names[:index]), None)
