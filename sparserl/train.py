"""Train a sparse agent: `python -m sparserl.train --agent=dqn --sparsity=0.9`.

flags -> config -> run directory -> runner (docs/design.md section 2). The config is
built in this order, later steps winning: the agent's `configs/<agent>.py`
(or `--config=path.py`) with a preset applied, the flags given on the
command line, then `--config.<field>=value` overrides (parsed by
ml_collections' `config_flags`, typed by the config's fields). The preset is
the one of the env's family, or the one named after a colon:
`--config=configs/dqn.py:atari`. Every input is checked before anything is
written (`prepare`); a mistake ends with one line naming the flag and exit
status 2 (docs/design.md contract 7).

`--sparsity=0.5,0.8,0.9` (a list) is a sweep: every level x seed trains as one
compiled program (`compiled_runner.run_sweep`, gymnax envs). Each level gets
the config and the run directory that level run alone gets (its own
`config.json` per seed directory, `default_run_name`), so each level's
directory reads, resumes and aggregates as a run of its own (contract 1).
"""

import contextlib
import dataclasses
import functools
import importlib.util
import json
import os
import re
import sys
from types import ModuleType
from typing import Any, Callable, Sequence

from absl import app, flags
from absl import logging as absl_logging
import ml_collections
from ml_collections import config_flags

from sparserl.agent_contract import AGENTS, Agent, agent_module, config_module
from sparserl.configs.base import MEMBER_LOOPS
from sparserl.sparse import structure as structure_lib
from sparserl.sparse.distributions import DISTRIBUTIONS
from sparserl.sparse.topology import TOPOLOGIES


class SparsityLevels(flags.ArgumentParser):
    """`--sparsity`: one level, or a comma-separated list of levels (a sweep), as a tuple of floats."""

    def parse(self, argument: str) -> tuple[float, ...]:
        return tuple(float(part) for part in argument.split(","))  # absl reports a ValueError as `flag --sparsity=...: ...`

    def flag_type(self) -> str:
        return "comma-separated list of floats"


flags.DEFINE_string("agent", "dqn", f"Agent: {', '.join(AGENTS)} (default: the --config file's, else dqn).")
flags.DEFINE_string("env", None, "Environment id (default: the agent config's env, e.g. CartPole-v1 for dqn).")
flags.DEFINE(SparsityLevels(), "sparsity", "0",
             "Fraction of zero weights in [0, 1); 0 trains a dense agent. A comma-separated list of levels in (0, 1) "
             "(0.5,0.8,0.9) trains every level x seed as one compiled program (a sweep; gymnax:<id> envs only): each level "
             "writes the run directory, named and configured, that it gets alone.",
             serializer=flags.ListSerializer(","))
flags.DEFINE_float("actor_sparsity", None, "Actor sparsity (sac, ppo); default --sparsity.")
flags.DEFINE_float("critic_sparsity", None, "Critic sparsity (sac, ppo); default --sparsity.")
flags.DEFINE_string("method", None, f"Sparse training method: {', '.join(TOPOLOGIES)} (default rigl when sparsity > 0).")
flags.DEFINE_string("structure", None, f"Mask structure: {structure_lib.ALLOWED} (fan_in: every neuron keeps the same "
                    "number of inputs; nm: N of every M inputs, the sparsity fixed at 1 - N/M). Kept by every method.")
flags.DEFINE_string("distribution", None, f"Per-layer sparsity distribution: {', '.join(DISTRIBUTIONS)}.")
flags.DEFINE_bool("redo", None, "Recycle dormant neurons with ReDo (Sokar et al. 2023).")
flags.DEFINE_float("redo_tau", None, "ReDo dormancy threshold tau (>= 0).")
flags.DEFINE_integer("redo_period", None, "Gradient steps between ReDo recycling (>= 1).")
flags.DEFINE_integer("seed", None, "First seed; seeds are seed, seed + 1, ...")
flags.DEFINE_integer("num_seeds", None, "Seeds trained side by side in one process (vmapped).")
flags.DEFINE_integer("steps", None, "Environment steps per seed.")
flags.DEFINE_integer("eval_every", None, "Environment steps between evaluations.")
flags.DEFINE_integer("checkpoint_every", None, "Environment steps between checkpoints (one is also written at the end).")
flags.DEFINE_string("workdir", "runs", "Directory that holds run directories.")
flags.DEFINE_string("run_name", None, "Run directory name (default: built from agent, env, method, sparsity, redo). "
                    "Not with a --sparsity list, whose levels take their default names.")
flags.DEFINE_string(
    "config", None,
    "A configs/<agent>.py-style file with get_config(), optionally with a preset after a colon "
    "(configs/dqn.py:atari; default: the preset of the env's family); override any field with --config.<field>=value.",
)

FLAGS = flags.FLAGS

# flag name -> config field it sets when given on the command line
FLAG_FIELDS = {
    "sparsity": "sparse.sparsity",
    "actor_sparsity": "sparse.actor_sparsity",
    "critic_sparsity": "sparse.critic_sparsity",
    "method": "sparse.method",
    "distribution": "sparse.distribution",
    "structure": "sparse.structure",
    "redo": "redo.enabled",
    "redo_tau": "redo.tau",
    "redo_period": "redo.period",
    "seed": "seed",
    "num_seeds": "num_seeds",
    "steps": "steps",
    "eval_every": "eval_every",
    "checkpoint_every": "checkpoint_every",
}

# Config fields a --config.<field> override may not change: the preset was chosen from them.
_FLAG_ONLY_FIELDS = ("agent", "env")


class UsageError(Exception):
    """A user mistake: reported as one line, exit status 2, nothing written."""


def configs_from_arguments(argv: list[str]) -> list[ml_collections.ConfigDict]:
    """The validated config of every level `python -m sparserl.train ARGV[1:]` trains, in `--sparsity` order: one,
    or a sweep's levels (each `compiled_runner.with_sparsity` of one config). Parses `FLAGS` on the way.

    Raises UsageError for any bad input.
    """
    FLAGS.unparse_flags()
    try:
        unparsed = FLAGS(argv, known_only=True)  # leaves the --config.<field> overrides (and unknown flags) for later
    except flags.Error as error:
        raise UsageError(_flag_error(error)) from None
    config = _preset_config()
    levels = FLAGS.sparsity
    for flag_name, field in FLAG_FIELDS.items():
        if FLAGS[flag_name].present:
            value = levels[0] if flag_name == "sparsity" else FLAGS[flag_name].value  # a sweep's levels: set below
            _set(config, field, value, f"--{flag_name}")
    overridden = _apply_overrides(config, unparsed)
    if len(levels) == 1:
        configs = [config]
    else:
        from sparserl.compiled_runner import with_sparsity

        check_sweep(config, levels, overridden)
        configs = [with_sparsity(config, level) for level in levels]
    for level_config in configs:
        sparse = level_config.sparse
        resolve_structure_sparsity(sparse)
        if not FLAGS["method"].present and "sparse.method" not in overridden and max(sparsities(sparse)) == 0.0:
            sparse.method = "dense"
        validate(level_config)
    return configs


def config_from_arguments(argv: list[str]) -> ml_collections.ConfigDict:
    """The validated config of a run of one level (`configs_from_arguments`); a `--sparsity` list is bad input here."""
    configs = configs_from_arguments(argv)
    if len(configs) > 1:
        raise UsageError("--sparsity: give one level here, not a list")
    return configs[0]


def _preset_config() -> ml_collections.ConfigDict:
    """The agent config (`--config`, else configs/<--agent>.py) with its preset and env, and every field it lacks
    taken from the agent's defaults."""
    path, colon, preset = (FLAGS.config or "").partition(":")
    if FLAGS.config is None:
        if FLAGS.agent not in AGENTS:
            raise UsageError(f"--agent: unknown agent {FLAGS.agent!r}; choose one of {', '.join(AGENTS)}")
        module, source = config_module(FLAGS.agent), f"configs/{FLAGS.agent}.py"
    else:
        module, source = _load_config_file(path), path
    presets = getattr(module, "PRESETS", None)
    if presets is not None:
        if colon and preset not in presets:
            raise UsageError(f"--config: {source} has no preset {preset!r}; choose one of {', '.join(presets)}")
        if not colon:  # the preset of the env's family
            env_id = FLAGS.env or _get_config(module, source).get("env")
            preset = _family(env_id, source)
            if preset not in presets:
                raise UsageError(f"--env: {source} has no preset for {preset} envs such as {env_id!r}; "
                                 f"choose an env of one of {', '.join(presets)}")
        config = _get_config(module, source, preset)
    else:
        config = _get_config(module, source, *([preset] if colon else []))
    agent = config.get("agent")
    if FLAGS["agent"].present and FLAGS.agent != agent:
        raise UsageError(f"--agent: {source} configures agent {agent!r}; drop --agent or pass another --config")
    if agent not in AGENTS:
        raise UsageError(f"--config: {source} sets agent {agent!r}; choose one of {', '.join(AGENTS)}")
    config = _with_defaults(config, config_module(agent).get_config(), source)
    if FLAGS.env:
        if colon and presets is not None and _family(FLAGS.env, source) != preset:
            raise UsageError(f"--env: {FLAGS.env!r} is a {_family(FLAGS.env, source)} env, not one for the "
                             f"{preset} preset of {source}")
        config.env = FLAGS.env
    _family(config.env, source)
    return config


def _load_config_file(path: str) -> ModuleType:
    if not os.path.isfile(path):
        raise UsageError(f"--config: no such file {path!r}")
    try:
        spec = importlib.util.spec_from_file_location("sparserl_user_config", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except Exception as error:  # a broken user file: report it in one line
        raise UsageError(_one_line(f"--config: cannot load {path!r}: {type(error).__name__}: {error}")) from None
    if not callable(getattr(module, "get_config", None)):
        raise UsageError(f"--config: {path!r} has no get_config()")
    return module


def _get_config(module: ModuleType, source: str, *args: str) -> ml_collections.ConfigDict:
    if FLAGS.config is None:  # one of ours: a failure is a bug, with its traceback
        return module.get_config(*args)
    try:
        config = module.get_config(*args)
    except Exception as error:  # a broken user file: report it in one line
        raise UsageError(_one_line(f"--config: {source}: get_config({', '.join(map(repr, args))}) failed: "
                                   f"{type(error).__name__}: {error}")) from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise UsageError(f"--config: {source}: get_config() returned a {type(config).__name__}, not a ConfigDict")
    return config


def _family(env_id: str | None, source: str) -> str:
    from sparserl import envs

    if env_id is None:
        raise UsageError(f"--env: {source} sets no env; pass --env")
    try:
        return envs.preset_family(env_id)  # a gymnax port takes its Gymnasium counterpart's preset
    except envs.UnknownEnvError as error:
        raise UsageError(str(error)) from None


def _with_defaults(config: ml_collections.ConfigDict, defaults: ml_collections.ConfigDict, source: str):
    """`config` on top of the agent's defaults: a config file written before a field existed still runs."""
    fields, default_fields = _fields(config), _fields(defaults)
    unknown = sorted(set(fields) - set(default_fields))
    if unknown:
        raise UsageError(f"--config: {source} sets {', '.join(unknown)}, which the {config.agent} config does not have")
    try:
        defaults.update_from_flattened_dict(fields)
    except (TypeError, ValueError) as error:
        raise UsageError(_one_line(f"--config: {source}: {error}")) from None
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


def _set(config: ml_collections.ConfigDict, field: str, value: Any, source: str) -> None:
    try:
        config.update_from_flattened_dict({field: value})
    except KeyError:
        raise UsageError(f"{source}: not a setting of --agent={config.agent} (its config has no field {field})") from None
    except TypeError as error:
        raise UsageError(_one_line(f"{source}: {error}")) from None


def _apply_overrides(config: ml_collections.ConfigDict, arguments: list[str]) -> dict[str, Any]:
    """Applies the `--config.<field>=value` arguments with ml_collections' config_flags; returns what they set.

    Any other argument left after the flags is bad input.
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
        raise UsageError(_flag_error(error)) from None
    if len(positional) > 1:
        raise UsageError(f"unexpected arguments: {' '.join(positional[1:])}")
    return values["config"].override_values


def _check_field(config: ml_collections.ConfigDict, field: str) -> None:
    if field in _FLAG_ONLY_FIELDS:
        raise UsageError(f"--config.{field}: set it with --{field}")
    node, path = config, []
    for part in field.split("."):
        if not isinstance(node, ml_collections.ConfigDict):
            raise UsageError(f"--config.{field}: {'.'.join(path)} is a value, not a block of fields")
        if part not in node:
            raise UsageError(f"--config.{field}: the {config.agent} config has no such field; "
                             f"choose one of {', '.join(node)}")
        node, path = node[part], path + [part]


def _flag_error(error: flags.Error) -> str:
    """absl's message in our form: `--flag: reason`."""
    if isinstance(error, flags.UnrecognizedFlagError):
        return f"--{error.flagname}: unknown flag; see --helpfull"
    message = str(error).splitlines()[0]
    match = re.fullmatch(r"flag (--[\w.]+)=.*?: (.*)", message)
    return f"{match.group(1)}: {match.group(2)}" if match else message


def _one_line(message: str) -> str:
    return message.splitlines()[0]


def sparsities(sparse: ml_collections.ConfigDict) -> list[float]:
    """`sparse.sparsity` and the per-network sparsities that are set."""
    return [sparse.sparsity] + [sparse[name] for name in ("actor_sparsity", "critic_sparsity") if sparse.get(name) is not None]


def _field_value(config: ml_collections.ConfigDict, field: str) -> Any:
    for part in field.split("."):
        config = config[part]
    return config


def _flag_of(field: str) -> str:
    """The command-line flag that sets a config field."""
    flag_names = {field_name: flag_name for flag_name, field_name in FLAG_FIELDS.items()}
    return f"--{flag_names[field]}" if field in flag_names else f"--config.{field}"


def resolve_structure_sparsity(sparse: ml_collections.ConfigDict) -> None:
    """The structure the method trains (srigl: fan_in) and the sparsity an N:M structure fixes at 1 - N/M:
    sets them, or rejects a structure the method cannot train and a different sparsity given."""
    text = sparse.structure
    try:
        if sparse.method in TOPOLOGIES:
            text = sparse.structure = TOPOLOGIES[sparse.method].structure_for(text)
        fixed = structure_lib.parse(text).fixed_sparsity
    except ValueError as error:
        raise UsageError(str(error)) from None
    if fixed is None:
        return
    for name in ("sparsity", "actor_sparsity", "critic_sparsity"):
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
    for name in ("sparsity", "actor_sparsity", "critic_sparsity"):
        value = sparse.get(name)
        if value is not None:
            _check_in_unit_interval(name, value)
    if sparse.method != "dense" and max(sparsities(sparse)) == 0.0:
        raise UsageError(f"--sparsity: --method={sparse.method} needs a sparsity in (0, 1)")
    if sparse.method == "dense" and max(sparsities(sparse)) > 0.0:
        sparse_methods = [name for name in TOPOLOGIES if name != "dense"]
        raise UsageError(f"--method: dense cannot train at a sparsity > 0; choose one of {', '.join(sparse_methods)}")
    if config.member_loop not in MEMBER_LOOPS:
        raise UsageError(f"--config.member_loop: unknown member loop {config.member_loop!r}; "
                         f"choose one of {', '.join(MEMBER_LOOPS)}")
    for field, minimum in (("num_seeds", 1), ("steps", 1), ("eval_every", 1), ("log_every", 1), ("checkpoint_every", 1),
                           ("seed", 0), ("redo.tau", 0.0), ("redo.period", 1)):
        value = _field_value(config, field)
        if value < minimum:
            raise UsageError(f"{_flag_of(field)}: must be >= {minimum:g}, got {value:g}")
    for name in ("hidden_sizes", "conv_features", "kernel_sizes", "strides", "dense_sizes"):
        sizes = config.network.get(name)
        if sizes is not None and not (isinstance(sizes, (tuple, list)) and sizes and all(
                isinstance(size, int) and not isinstance(size, bool) and size >= 1 for size in sizes)):
            raise UsageError(f"--config.network.{name}: {sizes!r} is not a list of positive integers such as 64,64")


def _check_in_unit_interval(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise UsageError(f"--{name}: {value} is outside [0, 1)")


# Kernels that need one concrete sparsity level (`sparserl.configs.base.kernels`): their indices are built from it.
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
        sparse_methods = [name for name in TOPOLOGIES if name != "dense"]
        raise UsageError(f"--sparsity: a list of levels needs a sparse method, not --method=dense; choose one of "
                         f"{', '.join(sparse_methods)}")
    per_network = [name for name in ("actor_sparsity", "critic_sparsity") if sparse.get(name) is not None]
    if per_network:
        raise UsageError(f"--sparsity: a list of levels sets every network's sparsity; leave out --{per_network[0]}")
    if envs.env_family(config.env) != "gymnax":
        raise UsageError(f"--sparsity: a list of levels trains as one compiled program, which needs a JAX-native env "
                         f"(--env=gymnax:<id>, e.g. gymnax:CartPole-v1); {config.env} runs on the host loop, so give "
                         "one level per run")
    try:
        fixed = structure_lib.parse(sparse.structure).fixed_sparsity
    except ValueError as error:
        raise UsageError(str(error)) from None
    if fixed is not None:
        raise UsageError(f"--sparsity: --structure={sparse.structure} fixes the sparsity at 1 - N/M = {fixed:g}, so "
                         "there are no levels to list; give one --sparsity or none")
    kernels = sparse.get("kernels", "masked")
    if kernels in _CONCRETE_LEVEL_KERNELS:
        raise UsageError(f"--sparsity: a list of levels trains with the level traced, where "
                         f"--config.sparse.kernels={kernels} cannot run (it needs one concrete level); choose masked or "
                         "auto (auto runs masked kernels in a sweep)")


def repeated_level(levels: Sequence[float]) -> str | None:
    """The first level listed twice, as run directory names write levels (`{level:g}`), or None."""
    names = [f"{level:g}" for level in levels]
    return next((name for index, name in enumerate(names) if name in names[:index]), None)


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A run, or a sweep of sparsity levels, with every input checked, before anything is written.

    Per level, in `--sparsity` order (a run has one): its config, its run directory and its agent, made concretely
    (a run trains it; a sweep makes each level's agent again inside its program, the level traced).
    """

    configs: tuple[ml_collections.ConfigDict, ...]
    run_dirs: tuple[str, ...]
    agents: tuple[Agent, ...]
    seeds: list[int]
    make_agent: Callable[[ml_collections.ConfigDict], Agent]  # `make(config, env_spec)` of agents/<agent>.py
    loop: str  # the runner loop the agent trains with (`LOOP` of agents/<agent>.py)
    env_spec: Any


def prepare(argv: list[str]) -> Prepared:
    """Every check `python -m sparserl.train ARGV[1:]` makes before it writes anything; raises UsageError."""
    return prepare_run(configs_from_arguments(argv), FLAGS.workdir, FLAGS.run_name)


def prepare_run(configs: Sequence[ml_collections.ConfigDict], workdir: str, run_name: str | None) -> Prepared:
    """The run directories and the agents of validated level configs (`configs_from_arguments`); raises UsageError."""
    from sparserl import envs

    check_workdir(workdir)
    if run_name is not None and len(configs) > 1:
        raise UsageError(f"--run_name: a --sparsity list writes each level's run directory under the name it gets "
                         f"alone ({default_run_name(configs[0])}, ...); leave --run_name out and choose the place "
                         "with --workdir")
    if run_name is not None and (not re.fullmatch(r"[A-Za-z0-9._-]+", run_name) or run_name in (".", "..")):
        raise UsageError(f"--run_name: {run_name!r} may only hold letters, digits, '.', '_' and '-'")
    run_dirs = [os.path.join(workdir, run_name or default_run_name(config)) for config in configs]
    config = configs[0]  # the levels differ in their sparsity only
    seeds = list(range(config.seed, config.seed + config.num_seeds))
    for level_config, run_dir in zip(configs, run_dirs):
        check_existing_run(run_dir, level_config, seeds, "a new --run_name" if len(configs) == 1 else "a new --workdir")
    module = agent_module(config.agent)
    env_spec = envs.env_spec(config.env)
    make_agent = functools.partial(module.make, env_spec=env_spec)
    try:
        agents = [make_agent(level_config) for level_config in configs]
    except ValueError as error:
        raise UsageError(str(error)) from None
    return Prepared(tuple(configs), tuple(run_dirs), tuple(agents), seeds, make_agent, module.LOOP, env_spec)


def default_run_name(config: ml_collections.ConfigDict, levels: Sequence[float] = ()) -> str:
    """The run directory name of a config (contract 5): agent, env, method, structure, sparsity and ReDo, e.g.
    `dqn_gymnax-CartPole-v1_rigl_0.9`. With `levels`, they replace the sparsity, joined by '-': a sweep's name
    (`dqn_gymnax-CartPole-v1_rigl_0.5-0.9`; its levels' run directories take their own names)."""
    sparse = config.sparse
    sparsity = max(sparse.sparsity, sparse.get("actor_sparsity") or 0.0, sparse.get("critic_sparsity") or 0.0)
    sparsity_text = "-".join(f"{level:g}" for level in levels) if levels else f"{sparsity:g}"
    structure = "" if sparse.structure == "unstructured" else f"_{sparse.structure}"
    name = f"{config.agent}_{config.env}_{sparse.method}{structure}_{sparsity_text}" + ("_redo" if config.redo.enabled else "")
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name)


def check_workdir(workdir: str) -> None:
    """The nearest existing ancestor of the workdir must be a writable directory."""
    path = os.path.abspath(workdir)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    if not os.path.isdir(path) or not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"--workdir: {workdir!r} is not writable")


def seed_config(config: ml_collections.ConfigDict, seed: int) -> dict:
    """The config.json of one seed directory: the resolved config with that seed."""
    resolved = config.to_dict()
    resolved["seed"] = seed
    resolved["num_seeds"] = 1
    return json.loads(json.dumps(resolved, default=list))


def check_existing_run(run_dir: str, config: ml_collections.ConfigDict, seeds: list[int],
                       elsewhere: str = "a new --run_name") -> None:
    """Refuses to mix a new config into a run directory that holds another one; the message suggests `elsewhere`."""
    for seed in seeds:
        path = os.path.join(run_dir, f"seed{seed}", "config.json")
        if not os.path.exists(path):
            continue
        with open(path) as file:
            saved = json.load(file)
        wanted = seed_config(config, seed)
        differing = sorted(_differences(saved, wanted))
        if differing:
            raise UsageError(
                f"--run_name: {run_dir} holds a run with another config ({', '.join(differing[:3])} differ); "
                f"pass {elsewhere} or delete that directory to start fresh"
            )


def _differences(saved: dict, wanted: dict, prefix: str = "") -> list[str]:
    fields = []
    for key in sorted(set(saved) | set(wanted)):
        left, right = saved.get(key), wanted.get(key)
        if isinstance(left, dict) and isinstance(right, dict):
            fields += _differences(left, right, f"{prefix}{key}.")
        elif left != right:
            fields.append(f"{prefix}{key}")
    return fields


def _parse_flags(argv: list[str]) -> Prepared:
    """app.run's flags parser: the checked run goes to `main`."""
    try:
        return prepare(argv)
    except UsageError as error:
        _usage_exit(str(error))


def _usage_exit(message: str) -> None:
    print(f"error: {message.splitlines()[0]}", file=sys.stderr)
    sys.exit(2)


def main(prepared: Prepared) -> None:
    absl_logging.set_verbosity(absl_logging.WARNING)  # keep library INFO lines (XLA backends, MuJoCo GL) off the console

    from sparserl import run_lock

    try:
        locks, notes = _lock_run_dirs(prepared.run_dirs)
    except run_lock.RunLocked as error:
        _usage_exit(f"--run_name: {error}; wait for it to finish or pass another --run_name" if len(prepared.run_dirs) == 1
                    else f"--sparsity: {error}; wait for it to finish or leave that level out of the list")
    try:
        for note in notes:
            print(f"note: {note}", flush=True)
        _train(prepared)
    finally:
        for lock in locks:
            lock.release()


def _lock_run_dirs(run_dirs: Sequence[str]) -> tuple[list, list[str]]:
    """One `run_lock.RunLock` per run directory, taken in sorted order, and the notes of locks taken over.

    In a fixed order, two sweeps that share levels never refuse each other both: the one that takes the first
    shared directory goes on. On a directory in use, the locks taken are released, the directories that locking
    created are removed (nothing written), and `run_lock.RunLocked` is raised.
    """
    from sparserl import run_lock

    locks, notes, created = [], [], []
    try:
        for run_dir in sorted(run_dirs):
            if not os.path.isdir(run_dir):
                created.append(run_dir)
            lock = run_lock.RunLock(run_dir)
            note = lock.acquire()
            locks.append(lock)
            notes += [note] if note else []
    except run_lock.RunLocked:
        for lock in locks:
            lock.release()
        for run_dir in created:
            with contextlib.suppress(OSError):  # not empty: another process started in it meanwhile
                os.rmdir(run_dir)
        raise
    return locks, notes


def _train(prepared: Prepared) -> None:
    """Writes the run directories and runs the loop (a sweep: `compiled_runner.run_sweep`); exits 1 on divergence
    or when no checkpoint reads back."""
    configs, run_dirs, seeds, env_spec = prepared.configs, prepared.run_dirs, prepared.seeds, prepared.env_spec
    config = configs[0]  # the levels differ in their sparsity only
    # Imported only now: the runners, checkpointing and logging load for a run that starts.
    from sparserl import checkpoint, compilation_cache, compiled_runner, loop, preemption, run_guard, runner
    from sparserl.reporting import MetricsWriter, ProgressPrinter, atomic_write_text

    compilation_cache.enable()
    # Every member's seed directory, level-major (level 0's seeds, then level 1's...), as `run_sweep` takes them: one
    # checkpointer over all of them resumes every level from their latest common checkpoint.
    members = [(level_config, seed, os.path.join(run_dir, f"seed{seed}"))
               for level_config, run_dir in zip(configs, run_dirs) for seed in seeds]
    seed_dirs = [seed_dir for _, _, seed_dir in members]
    checkpointer = checkpoint.Checkpointer(seed_dirs, config.checkpoints_to_keep)
    try:
        resume_step = checkpointer.load_latest(warn=lambda line: print(line, flush=True)) if all(
            map(os.path.isdir, seed_dirs)) else None
    except checkpoint.NoReadableCheckpoint as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        sys.exit(1)
    writers = []
    for level_config, seed, seed_dir in members:
        os.makedirs(seed_dir, exist_ok=True)
        atomic_write_text(os.path.join(seed_dir, "config.json"),
                          json.dumps(seed_config(level_config, seed), indent=2, sort_keys=True))
        writers.append(MetricsWriter(seed_dir, seed, resume_step=resume_step))
    print(describe(configs, run_dirs), flush=True)
    if resume_step is not None:
        print(f"resuming from the checkpoint of step {resume_step:,}", flush=True)
    stop_requests = preemption.StopRequests()
    stop_requests.install()
    run = loop.Run(
        seeds=[seed for _, seed, _ in members],
        writers=writers,
        progress=ProgressPrinter(f"{config.agent} {config.env}", config.steps),
        checkpointer=checkpointer,
        stop_requests=stop_requests,
        resume_step=resume_step,
        groups={f"sparsity {level_config.sparse.sparsity:g}": [index for index, member in enumerate(members)
                                                              if member[0] is level_config]
                for level_config in configs} if len(configs) > 1 else {},
    )
    try:
        if len(configs) > 1:
            levels = [level_config.sparse.sparsity for level_config in configs]
            compiled_runner.run_sweep(prepared.make_agent, prepared.loop, config, env_spec, levels, run)
        else:
            loops = compiled_runner.LOOPS if env_spec.family == "gymnax" else runner.LOOPS  # JAX-native envs: one program
            loops[prepared.loop](prepared.agents[0], config, env_spec, run)
    except run_guard.TrainingDiverged as error:
        last = checkpoint.latest_common_step(seed_dirs)
        kept = f"the last good checkpoint is step {last:,}" if last is not None else "no checkpoint was written"
        print(f"error: training diverged at {error}; stopped, {kept}", file=sys.stderr, flush=True)
        sys.exit(1)
    except checkpoint.CheckpointMismatch as error:
        print(f"error: --run_name: {error}; it was written by another version of this run's state, so train under "
              "a new --run_name", file=sys.stderr, flush=True)
        sys.exit(2)
    except preemption.Stopped as stopped:
        print(f"stopped at step {stopped.step:,}; rerun the same command to resume", flush=True)
        sys.exit(stopped.exit_status)
    finally:
        for writer in writers:
            writer.close()
    print(f"done: {', '.join(run_dirs)}", flush=True)


def describe(configs: Sequence[ml_collections.ConfigDict], run_dirs: Sequence[str]) -> str:
    """A short summary of the resolved config of a run, or of a sweep's levels, for the console (the whole config is
    in each seed directory's config.json)."""
    config = configs[0]
    sparse = config.sparse
    sparsity = f"sparsity={','.join(f'{level_config.sparse.sparsity:g}' for level_config in configs)}"
    for network in ("actor", "critic"):
        if sparse.get(f"{network}_sparsity") is not None:
            sparsity += f" {network}={sparse[f'{network}_sparsity']:g}"
    redo = f"redo tau={config.redo.tau:g} every {config.redo.period}" if config.redo.enabled else "no redo"
    places = f"run dir {run_dirs[0]}" if len(run_dirs) == 1 else f"{len(run_dirs)} run dirs {', '.join(run_dirs)}"
    return (
        f"{config.agent} on {config.env} | {sparse.method} {sparse.structure} {sparse.distribution} {sparsity} | {redo} | "
        f"{config.steps:,} steps x {config.num_seeds} seed(s) from seed {config.seed} | {places}"
    )


def entry_point() -> None:
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    entry_point()
