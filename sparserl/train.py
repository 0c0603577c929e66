"""Train a sparse agent: `python -m sparserl.train --agent=dqn --sparsity=0.9`.

flags -> config -> run directory -> runner (DESIGN section 2). The config is
built in this order, later steps winning: the agent's `configs/<agent>.py`
(or `--config=path.py`), the preset of the env's family, the flags given on
the command line, then `--config.<field>=value` overrides. Every input is
validated before anything is written; a mistake ends with one line naming the
flag and exit status 2 (DESIGN contract 7).
"""

import importlib
import importlib.util
import json
import os
import re
import sys
from typing import Any

from absl import app, flags
from absl import logging as absl_logging
import ml_collections


AGENTS = ("dqn", "sac", "ppo")
_METHODS = ("dense", "static", "set", "rigl", "prune")
_DISTRIBUTIONS = ("erk", "uniform")

flags.DEFINE_string("agent", "dqn", f"Agent: {', '.join(AGENTS)}.")
flags.DEFINE_string("env", None, "Environment id (default: the agent config's env, e.g. CartPole-v1 for dqn).")
flags.DEFINE_float("sparsity", 0.0, "Fraction of zero weights in [0, 1); 0 trains a dense agent.")
flags.DEFINE_float("actor_sparsity", None, "Actor sparsity (sac, ppo); default --sparsity.")
flags.DEFINE_float("critic_sparsity", None, "Critic sparsity (sac, ppo); default --sparsity.")
flags.DEFINE_string("method", None, f"Sparse training method: {', '.join(_METHODS)} (default rigl when sparsity > 0).")
flags.DEFINE_string("distribution", None, f"Per-layer sparsity distribution: {', '.join(_DISTRIBUTIONS)}.")
flags.DEFINE_bool("redo", None, "Recycle dormant neurons with ReDo (Sokar et al. 2023).")
flags.DEFINE_float("redo_tau", None, "ReDo dormancy threshold tau (>= 0).")
flags.DEFINE_integer("redo_period", None, "Gradient steps between ReDo recycling (>= 1).")
flags.DEFINE_integer("seed", None, "First seed; seeds are seed, seed + 1, ...")
flags.DEFINE_integer("num_seeds", None, "Seeds trained side by side in one process (vmapped).")
flags.DEFINE_integer("steps", None, "Environment steps per seed.")
flags.DEFINE_integer("eval_every", None, "Environment steps between evaluations.")
flags.DEFINE_integer("checkpoint_every", None, "Environment steps between checkpoints (one is also written at the end).")
flags.DEFINE_string("workdir", "runs", "Directory that holds run directories.")
flags.DEFINE_string("run_name", None, "Run directory name (default: built from agent, env, method, sparsity, redo).")
flags.DEFINE_string("config", None, "A configs/<agent>.py-style file with get_config(); fields can be overridden with --config.<field>=value.")

FLAGS = flags.FLAGS
_CONFIG_OVERRIDES: dict[str, str] = {}  # the --config.<field>=value arguments, split off before absl parses argv

# flag name -> config field it sets when given on the command line
_FLAG_FIELDS = {
    "sparsity": "sparse.sparsity",
    "actor_sparsity": "sparse.actor_sparsity",
    "critic_sparsity": "sparse.critic_sparsity",
    "method": "sparse.method",
    "distribution": "sparse.distribution",
    "redo": "redo.enabled",
    "redo_tau": "redo.tau",
    "redo_period": "redo.period",
    "seed": "seed",
    "num_seeds": "num_seeds",
    "steps": "steps",
    "eval_every": "eval_every",
    "checkpoint_every": "checkpoint_every",
}


class UsageError(Exception):
    """A user mistake: reported as one line, exit status 2, nothing written."""


def split_config_overrides(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """Separates `--config.<field>=value` arguments (ours) from absl flags."""
    remaining, overrides = [], {}
    for argument in argv:
        match = re.fullmatch(r"--config\.([A-Za-z0-9_.]+)=(.*)", argument)
        if match:
            overrides[match.group(1)] = match.group(2)
        elif argument.startswith("--config."):
            raise UsageError(f"{argument}: write config overrides as --config.<field>=value")
        else:
            remaining.append(argument)
    return remaining, overrides


def load_config_module(agent: str, path: str | None):
    if path is None:
        return importlib.import_module(f"configs.{agent}")
    if not os.path.isfile(path):
        raise UsageError(f"--config: no such file {path!r}")
    try:
        spec = importlib.util.spec_from_file_location("sparserl_user_config", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.get_config()
    except Exception as error:  # a broken user file: report it in one line
        raise UsageError(f"--config: cannot load {path!r}: {type(error).__name__}: {error}".splitlines()[0]) from None
    return module


def _parse_value(field: str, text: str, field_type: type, current: Any) -> Any:
    """Parses an override string into the declared type of the field it replaces."""
    try:
        if field_type is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(text)
            return text.lower() in ("true", "1")
        if field_type in (int, float):
            return field_type(text)
        if field_type in (tuple, list):
            item_type = type(current[0]) if current else int
            return tuple(item_type(part) for part in text.strip("()[] ").split(",") if part)
        return text
    except ValueError:
        raise UsageError(f"--config.{field}: {text!r} is not a valid {field_type.__name__}") from None


def _set_field(config: ml_collections.ConfigDict, field: str, value: Any, source: str) -> None:
    parent, _, name = field.rpartition(".")
    node = config
    for part in filter(None, parent.split(".")):
        if part not in node:
            raise UsageError(f"{source}: the {config.agent} config has no field {field!r}")
        node = node[part]
    if name not in node:
        raise UsageError(f"{source}: the {config.agent} config has no field {field!r}")
    try:
        node[name] = value
    except TypeError as error:
        raise UsageError(f"{source}: {error}".splitlines()[0]) from None


def resolve_config(overrides: dict[str, str]) -> ml_collections.ConfigDict:
    """Agent config -> env-family preset -> command-line flags -> --config.<field> overrides, validated."""
    from sparserl import envs

    if FLAGS.agent not in AGENTS:
        raise UsageError(f"--agent: unknown agent {FLAGS.agent!r}; choose one of {', '.join(AGENTS)}")
    module = load_config_module(FLAGS.agent, FLAGS.config)
    config = module.get_config()
    env_id = FLAGS.env or overrides.get("env") or config.env
    try:
        family = envs.preset_family(env_id)  # a gymnax port takes its Gymnasium counterpart's preset
    except envs.UnknownEnvError as error:
        raise UsageError(str(error)) from None
    for field, value in getattr(module, "PRESETS", {}).get(family, {}).items():
        if field != "env":
            _set_field(config, field, value, f"--env={env_id}")
    config.env = env_id
    for flag_name, field in _FLAG_FIELDS.items():
        if FLAGS[flag_name].present:
            _set_field(config, field, FLAGS[flag_name].value, f"--{flag_name}")
    for field, text in overrides.items():
        parent, _, name = field.rpartition(".")
        node = config
        for part in filter(None, parent.split(".")):
            node = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
        if not isinstance(node, ml_collections.ConfigDict) or name not in node:
            raise UsageError(f"--config.{field}: the {config.agent} config has no such field")
        _set_field(config, field, _parse_value(field, text, node.get_type(name), node[name]), f"--config.{field}")
    if not FLAGS["method"].present and "sparse.method" not in overrides:
        sparse = config.sparse
        sparsities = [sparse.sparsity] + [sparse.get(name) or 0.0 for name in ("actor_sparsity", "critic_sparsity")]
        if max(sparsities) == 0.0:
            sparse.method = "dense"
    validate(config)
    return config


def validate(config: ml_collections.ConfigDict) -> None:
    sparse = config.sparse
    if sparse.method not in _METHODS:
        raise UsageError(f"--method: unknown method {sparse.method!r}; choose one of {', '.join(_METHODS)}")
    if sparse.distribution not in _DISTRIBUTIONS:
        raise UsageError(f"--distribution: unknown distribution {sparse.distribution!r}; choose one of {', '.join(_DISTRIBUTIONS)}")
    for name in ("sparsity", "actor_sparsity", "critic_sparsity"):
        value = sparse.get(name)
        if value is not None and not 0.0 <= value < 1.0:
            raise UsageError(f"--{name}: {value} is outside [0, 1)")
    if FLAGS.agent == "dqn" and (FLAGS["actor_sparsity"].present or FLAGS["critic_sparsity"].present):
        raise UsageError("--actor_sparsity/--critic_sparsity: only for --agent=sac or ppo; use --sparsity for dqn")
    if sparse.method != "dense" and max(sparse.sparsity, sparse.get("actor_sparsity") or 0.0, sparse.get("critic_sparsity") or 0.0) == 0.0:
        raise UsageError(f"--sparsity: --method={sparse.method} needs a sparsity in (0, 1)")
    if sparse.method == "dense" and sparse.sparsity > 0.0:
        raise UsageError("--method: dense cannot train at --sparsity > 0; choose static, set, rigl or prune")
    for name, minimum in (("num_seeds", 1), ("steps", 1), ("eval_every", 1), ("checkpoint_every", 1)):
        if config[name] < minimum:
            raise UsageError(f"--{name}: must be >= {minimum}, got {config[name]}")
    if config.redo.tau < 0.0:
        raise UsageError(f"--redo_tau: must be >= 0, got {config.redo.tau}")
    if config.redo.period < 1:
        raise UsageError(f"--redo_period: must be >= 1, got {config.redo.period}")
    if config.seed < 0:
        raise UsageError(f"--seed: must be >= 0, got {config.seed}")


def default_run_name(config: ml_collections.ConfigDict) -> str:
    sparse = config.sparse
    sparsity = max(sparse.sparsity, sparse.get("actor_sparsity") or 0.0, sparse.get("critic_sparsity") or 0.0)
    name = f"{config.agent}_{config.env}_{sparse.method}_{sparsity:g}" + ("_redo" if config.redo.enabled else "")
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


def check_existing_run(run_dir: str, config: ml_collections.ConfigDict, seeds: list[int]) -> None:
    """Refuses to mix a new config into a run directory that holds another one."""
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
                "pass a new --run_name or delete that directory to start fresh"
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


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        remaining, overrides = split_config_overrides(argv)
        _CONFIG_OVERRIDES.update(overrides)
        return FLAGS(remaining)
    except (flags.Error, UsageError) as error:
        _usage_exit(str(error))


def _usage_exit(message: str) -> None:
    print(f"error: {message.splitlines()[0]}", file=sys.stderr)
    sys.exit(2)


def main(argv: list[str]) -> None:
    absl_logging.set_verbosity(absl_logging.WARNING)  # keep library INFO lines (XLA backends, MuJoCo GL) off the console
    if len(argv) > 1:
        _usage_exit(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        config = resolve_config(_CONFIG_OVERRIDES)
        check_workdir(FLAGS.workdir)
        run_name = FLAGS.run_name or default_run_name(config)
        if not re.fullmatch(r"[A-Za-z0-9._-]+", run_name) or run_name in (".", ".."):
            raise UsageError(f"--run_name: {run_name!r} may only hold letters, digits, '.', '_' and '-'")
        run_dir = os.path.join(FLAGS.workdir, run_name)
        seeds = list(range(config.seed, config.seed + config.num_seeds))
        check_existing_run(run_dir, config, seeds)
        agent_module = importlib.import_module(f"agents.{config.agent}")
        from sparserl import envs

        env_spec = envs.env_spec(config.env)
        try:
            agent = agent_module.make(config, env_spec)
        except ValueError as error:
            raise UsageError(str(error)) from None
    except UsageError as error:
        _usage_exit(str(error))

    from sparserl import run_lock

    lock = run_lock.RunLock(run_dir)
    try:
        note = lock.acquire()
    except run_lock.RunLocked as error:
        _usage_exit(f"--run_name: {error}; wait for it to finish or pass another --run_name")
    try:
        if note:
            print(f"note: {note}", flush=True)
        _train(config, agent, agent_module.LOOP, env_spec, run_dir, seeds)
    finally:
        lock.release()


def _train(config, agent, loop: str, env_spec, run_dir: str, seeds: list[int]) -> None:
    """Writes the run directory and runs the loop; exits 1 on divergence or when no checkpoint reads back."""
    # Imported only now, so that a mistake is reported before JAX and the libraries load.
    from sparserl import checkpoint, compilation_cache, compiled_runner, preemption, run_guard, runner
    from sparserl.logging import MetricsWriter, ProgressPrinter, atomic_write_text

    compilation_cache.enable()
    seed_dirs = [os.path.join(run_dir, f"seed{seed}") for seed in seeds]
    checkpointer = checkpoint.Checkpointer(seed_dirs, config.checkpoints_to_keep)
    try:
        resume_step = checkpointer.load_latest(warn=lambda line: print(line, flush=True)) if all(
            map(os.path.isdir, seed_dirs)) else None
    except checkpoint.NoReadableCheckpoint as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        sys.exit(1)
    writers = []
    for seed, seed_dir in zip(seeds, seed_dirs):
        os.makedirs(seed_dir, exist_ok=True)
        atomic_write_text(os.path.join(seed_dir, "config.json"), json.dumps(seed_config(config, seed), indent=2, sort_keys=True))
        writers.append(MetricsWriter(seed_dir, seed, resume_step=resume_step))
    print(describe(config, run_dir), flush=True)
    if resume_step is not None:
        print(f"resuming from the checkpoint of step {resume_step:,}", flush=True)
    stop_requests = preemption.StopRequests()
    stop_requests.install()
    run = runner.Run(
        seeds=seeds,
        writers=writers,
        progress=ProgressPrinter(f"{config.agent} {config.env}", config.steps),
        checkpointer=checkpointer,
        stop_requests=stop_requests,
        resume_step=resume_step,
    )
    try:
        loops = compiled_runner.LOOPS if env_spec.family == "gymnax" else runner.LOOPS  # JAX-native envs: one program
        loops[loop](agent, config, env_spec, run)
    except run_guard.TrainingDiverged as error:
        last = checkpoint.latest_common_step(seed_dirs)
        kept = f"the last good checkpoint is step {last:,}" if last is not None else "no checkpoint was written"
        print(f"error: training diverged at {error}; stopped, {kept}", file=sys.stderr, flush=True)
        sys.exit(1)
    except preemption.Stopped as stopped:
        print(f"stopped at step {stopped.step:,}; rerun the same command to resume", flush=True)
        sys.exit(stopped.exit_status)
    finally:
        for writer in writers:
            writer.close()
    print(f"done: {run_dir}", flush=True)


def describe(config: ml_collections.ConfigDict, run_dir: str) -> str:
    """A short summary of the resolved config for the console (the whole config is in config.json)."""
    sparse = config.sparse
    sparsity = f"sparsity={sparse.sparsity:g}"
    for network in ("actor", "critic"):
        if sparse.get(f"{network}_sparsity") is not None:
            sparsity += f" {network}={sparse[f'{network}_sparsity']:g}"
    redo = f"redo tau={config.redo.tau:g} every {config.redo.period}" if config.redo.enabled else "no redo"
    return (
        f"{config.agent} on {config.env} | {sparse.method} {sparse.distribution} {sparsity} | {redo} | "
        f"{config.steps:,} steps x {config.num_seeds} seed(s) from seed {config.seed} | run dir {run_dir}"
    )


def entry_point() -> None:
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    entry_point()
