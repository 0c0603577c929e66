"""Train a sparse agent: `python -m sparserl.train --agent=dqn --sparsity=0.9`.

flags -> config -> run directory -> runner (docs/design.md section 2). The config is
built in this order, later steps winning: the agent's `configs/<agent>.py`
(or `--config=path.py`) with a preset applied, the flags given on the
command line, then `--config.<field>=value` overrides (parsed by
ml_collections' `config_flags`, typed by the config's fields). The preset is
the one of the env's family, or the one named after a colon:
`--config=configs/dqn.py:atari`. Every input is checked before anything is
written (`prepare`); a mistake ends with one line naming the flag and exit
status 2 (docs/design.md contract 7). How a config is resolved and checked:
`sparserl.train_config`; the command-line layer every entry point shares: `sparserl.cli`.

`--sparsity=0.5,0.8,0.9` (a list) is a sweep: every level x seed trains as one
compiled program (`compiled_runner.run_sweep`, gymnax envs). Each level gets
the config and the run directory that level run alone gets (its own
`config.json` per seed directory, `default_run_name`), so each level's
directory reads, resumes and aggregates as a run of its own (contract 1).
"""

import contextlib
import dataclasses
import functools
import json
import os
import re
import sys
from typing import Any, Callable, Sequence

from absl import app, flags
from absl import logging as absl_logging
import ml_collections

from sparserl.agent_contract import AGENTS, Agent, agent_module
from sparserl.configs.base import REMEDIES, remedy_period
from sparserl.cli import FLAG_FIELDS, UsageError, largest_sparsity, report_usage, usage_error
from sparserl.sparse import structure as structure_lib
from sparserl.sparse.distributions import DISTRIBUTIONS
from sparserl.sparse.topology import TOPOLOGIES
from sparserl.train_config import (apply_overrides, apply_recycle, check_sweep, flag_error_message, preset_config,
                                   remedy_text, resolve_structure_sparsity, set_field, validate)


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
flags.DEFINE_bool("redo", None, "Recycle dormant neurons with ReDo (Sokar et al. 2023); --recycle=redo.")
flags.DEFINE_string("recycle", None, f"A remedy for lost plasticity, run every --redo_period gradient steps: none, "
                    f"{', '.join(REMEDIES)} (sparserl/remedies.py).")
flags.DEFINE_float("redo_tau", None, "ReDo dormancy threshold tau (>= 0).")
flags.DEFINE_integer("redo_period", None, "Gradient steps between remedies (>= 1; default: the remedy's, "
                     "redo and regrama 1000, shrink_perturb and reset 20000).")
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


def configs_from_arguments(argv: list[str]) -> list[ml_collections.ConfigDict]:
    """The validated config of every level `python -m sparserl.train ARGV[1:]` trains, in `--sparsity` order: one,
    or a sweep's levels (each `compiled_runner.with_sparsity` of one config). Parses `FLAGS` on the way.

    Raises UsageError for any bad input.
    """
    FLAGS.unparse_flags()
    try:
        unparsed = FLAGS(argv, known_only=True)  # leaves the --config.<field> overrides (and unknown flags) for later
    except flags.Error as error:
        raise UsageError(flag_error_message(error)) from None
    config = preset_config(FLAGS.config, FLAGS.agent, FLAGS["agent"].present, FLAGS.env)
    levels = FLAGS.sparsity
    for flag_name, field in FLAG_FIELDS.items():
        if FLAGS[flag_name].present:
            value = levels[0] if flag_name == "sparsity" else FLAGS[flag_name].value  # a sweep's levels: set below
            set_field(config, field, value, f"--{flag_name}")
    if FLAGS["recycle"].present:
        apply_recycle(config, FLAGS.recycle, FLAGS["redo"].present)
    overridden = apply_overrides(config, unparsed)
    if len(levels) == 1:
        configs = [config]
    else:
        from sparserl.compiled_runner import with_sparsity

        check_sweep(config, levels, overridden)
        configs = [with_sparsity(config, level) for level in levels]
    for level_config in configs:
        sparse = level_config.sparse
        resolve_structure_sparsity(sparse)
        if not FLAGS["method"].present and "sparse.method" not in overridden and largest_sparsity(sparse) == 0.0:
            sparse.method = "dense"
        validate(level_config)
        level_config.redo.period = remedy_period(level_config.redo)
    return configs


def config_from_arguments(argv: list[str]) -> ml_collections.ConfigDict:
    """The validated config of a run of one level (`configs_from_arguments`); a `--sparsity` list is bad input here."""
    configs = configs_from_arguments(argv)
    if len(configs) > 1:
        raise UsageError("--sparsity: give one level here, not a list")
    return configs[0]


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
        raise usage_error(error) from None
    return Prepared(tuple(configs), tuple(run_dirs), tuple(agents), seeds, make_agent, module.LOOP, env_spec)


def default_run_name(config: ml_collections.ConfigDict, levels: Sequence[float] = ()) -> str:
    """The run directory name of a config (contract 5): agent, env, method, structure, sparsity and ReDo, e.g.
    `dqn_gymnax-CartPole-v1_rigl_0.9`. With `levels`, they replace the sparsity, joined by '-': a sweep's name
    (`dqn_gymnax-CartPole-v1_rigl_0.5-0.9`; its levels' run directories take their own names)."""
    sparse = config.sparse
    sparsity_text = "-".join(f"{level:g}" for level in levels) if levels else f"{largest_sparsity(sparse):g}"
    structure = "" if sparse.structure == "unstructured" else f"_{sparse.structure}"
    name = f"{config.agent}_{config.env}_{sparse.method}{structure}_{sparsity_text}" + (f"_{config.redo.remedy}" if config.redo.enabled else "")
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
    """The dotted names of the fields whose values differ between two config.json dicts."""
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
        sys.exit(report_usage(str(error)))


def main(prepared: Prepared) -> None:
    """Trains a prepared run or sweep (`prepare`) under the locks of its run directories; a directory that another
    process holds is bad input."""
    absl_logging.set_verbosity(absl_logging.WARNING)  # keep library INFO lines (XLA backends, MuJoCo GL) off the console

    from sparserl import run_lock

    try:
        locks, notes = _lock_run_dirs(prepared.run_dirs)
    except run_lock.RunLocked as error:
        sys.exit(report_usage(f"--run_name: {error}; wait for it to finish or pass another --run_name"
                              if len(prepared.run_dirs) == 1
                              else f"--sparsity: {error}; wait for it to finish or leave that level out of the list"))
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
    redo = f"{remedy_text(config.redo)} every {config.redo.period}" if config.redo.enabled else "no remedy"
    places = f"run dir {run_dirs[0]}" if len(run_dirs) == 1 else f"{len(run_dirs)} run dirs {', '.join(run_dirs)}"
    return (
        f"{config.agent} on {config.env} | {sparse.method} {sparse.structure} {sparse.distribution} {sparsity} | {redo} | "
        f"{config.steps:,} steps x {config.num_seeds} seed(s) from seed {config.seed} | {places}"
    )


def entry_point() -> None:
    """`python -m sparserl.train`: absl parses the flags (`_parse_flags`) and runs `main`."""
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    entry_point()
