"""Graesser et al. 2022, "The State of Sparse Training in Deep Reinforcement Learning", in one command.

    python -m sparserl.experiments.sparse_training_study --agent=dqn --out=studies/sparse_dqn        # --scale=small
    python -m sparserl.experiments.sparse_training_study --agent=sac --scale=paper --launcher=ray --out=studies/sparse_sac

The grid: methods {dense, static, set, rigl, prune} x sparsities {0.5, 0.8,
0.9, 0.95, 0.99} x seeds for one agent and env, the dense network once, and
(when dense is in the grid) a parameter-matched dense network per sparsity:
hidden widths scaled by `network.width_multiplier` to the widest dense network
with no more parameters than the sparse one keeps (`experiments.parameters`).
Each run directory holds its seeds side by side (vmapped). The study directory
gets plan.json, runs/, logs/, the aggregate's tables and plots, and summary.md.

Processes: on gymnax envs (the smoke and small scales) one per sparse method,
its sparsity levels x seeds trained as one compiled program (`sparserl.train
--sparsity=0.5,0.8,...`, each level still in a run directory of its own);
on host-loop envs (the paper scale: ALE, MuJoCo), where that program cannot
run, one per (method, level). The dense network is one more process, and
every parameter-matched dense network one of its own: their widths differ, so
their parameters have different shapes and cannot share one vmapped program.
The small-scale grid is 10 processes (4 sparse methods, dense, 5 matched) for
its 26 run directories.

Scales: `smoke` (the tests: tiny networks, gymnax envs, a few hundred steps);
`small` (the default: gymnax classic control through the compiled loop;
DQN keeps Graesser et al.'s classic-control protocol, the one setting with a
small published baseline, Acrobot-v1); `paper` (Graesser et al.'s Atari DQN
and MuJoCo SAC/PPO lengths, for a GPU or a cluster).
"""

from __future__ import annotations

import sys

from sparserl.cli import UsageError
from sparserl.experiments import study

METHODS = ("dense", "static", "set", "rigl", "prune")
SPARSITIES = (0.5, 0.8, 0.9, 0.95, 0.99)

SCALES = {
    "smoke": study.SMOKE,
    "small": {
        # Graesser et al.'s classic-control protocol (configs/dqn.py: one update per env step, batch 128, their
        # schedules as fractions of the run) at what fits 20 minutes of 2 CPU cores for the whole grid (26 runs x 3
        # seeds): a 2x128 MLP instead of 2x512 (16x fewer hidden-layer multiply-adds) and 30k steps instead of 100k,
        # evaluated every 2000 steps as in their gin. CPU time measured in docs/studies.md.
        "dqn": study.Scale("gymnax:Acrobot-v1", 30_000, 3, ("--config.network.hidden_sizes=128,128", "--eval_every=2000")),
        "sac": study.Scale("gymnax:Pendulum-v1", 20_000, 3),
        "ppo": study.Scale("gymnax:Acrobot-v1", 200_000, 3),
    },
    "paper": {
        # Issue 12's paper settings: Atari DQN for 10M frames (2.5M agent steps at frame skip 4) with the Dopamine
        # settings of configs/dqn.py; MuJoCo for 1M steps. Seeds: 5 (check against the paper before comparing).
        "dqn": study.Scale("ALE/Pong-v5", 2_500_000, 5),
        "sac": study.Scale("HalfCheetah-v5", 1_000_000, 5),
        "ppo": study.Scale("HalfCheetah-v5", 1_000_000, 5),
    },
}

# Graesser et al. 2022's DQN on Acrobot-v1 (classic-control gym protocol), final returns as issue 12 gives them.
PUBLISHED_ACROBOT = "dense about -67; prune about -66 up to 97% sparsity; static, SET and RigL between -68 and -80 up to 95%"


def build(argv):
    """The study from its command line: (arguments, plan, specs, summarize), as `study.main` runs it."""
    parser = study.parser(__doc__.splitlines()[0], ("dqn", "sac", "ppo"))
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {', '.join(METHODS)}")
    parser.add_argument("--sparsities", default=",".join(map(str, SPARSITIES)), help="comma-separated, each in (0, 1)")
    parser.add_argument("--no_param_matched", action="store_true", help="leave out the parameter-matched dense runs")
    arguments, overrides = study.parse(parser, argv, grid_fields=("network.width_multiplier",))
    methods = [method for method in arguments.methods.split(",") if method]
    unknown = [method for method in methods if method not in METHODS]
    if unknown or not methods:
        raise UsageError(f"--methods: unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}" if unknown
                         else f"--methods: give at least one of {', '.join(METHODS)}")
    sparsities = study.parse_floats(arguments.sparsities, "--sparsities")
    if not all(0.0 < sparsity < 1.0 for sparsity in sparsities):
        raise UsageError(f"--sparsities: each must be in (0, 1), got {arguments.sparsities}")
    from sparserl.train_config import repeated_level

    twice = repeated_level(sparsities)
    if twice is not None:
        raise UsageError(f"--sparsities: {twice} is listed twice; give each sparsity once")
    if not sparsities and set(methods) - {"dense"}:
        raise UsageError("--sparsities: give at least one sparsity for the sparse methods")

    scale = SCALES[arguments.scale][arguments.agent]
    env, steps, seeds = arguments.env or scale.env, arguments.steps or scale.steps, arguments.seeds or scale.seeds
    common = [f"--agent={arguments.agent}", f"--env={env}", f"--steps={steps}", f"--num_seeds={seeds}", "--seed=0",
              *scale.flags, *overrides]
    specs, matched = [], {}

    def add(flags, suffix=""):
        specs.append(study.run_spec([*common, *flags], seeds, suffix))

    from sparserl import envs

    if "dense" in methods:
        add(["--method=dense", "--sparsity=0"])
    # A method's levels x seeds as one compiled program where the env is JAX-native; a process per level elsewhere.
    level_lists = ([",".join(f"{sparsity:g}" for sparsity in sparsities)] if env.startswith(envs.GYMNAX_PREFIX)
                   else [f"{sparsity:g}" for sparsity in sparsities])
    for method in methods:
        for levels in level_lists if method != "dense" else ():
            add([f"--method={method}", f"--sparsity={levels}"])
    if "dense" in methods and not arguments.no_param_matched:
        from sparserl.experiments import parameters

        for sparsity in sparsities:
            (sparse_config,) = study.resolve_configs([*common, "--method=static", f"--sparsity={sparsity:g}"])
            multiplier, dense_count, sparse_count = parameters.matched_width_multiplier(
                sparse_config, envs.env_spec(sparse_config.env))
            add(["--method=dense", "--sparsity=0", f"--config.network.width_multiplier={multiplier!r}"],
                suffix=f"_matched-{sparsity:g}")
            matched[specs[-1].name] = dict(sparsity=sparsity, width_multiplier=multiplier,
                                           dense_parameters=dense_count, sparse_parameters=sparse_count)
    plan = dict(study="sparse_training", command=" ".join(["python -m sparserl.experiments.sparse_training_study", *argv]),
                agent=arguments.agent, env=env, scale=arguments.scale, steps=steps, seeds=seeds, methods=methods,
                sparsities=sparsities, param_matched=matched)
    return arguments, plan, specs, summarize


def summarize(plan: dict, result: dict) -> str:
    """summary.md: the IQM table and, in numbers, how each finding of Graesser et al. shows here (or does not)."""
    table = result["table"]
    dense = [e for e in table if e["method"] == "dense" and e["width_multiplier"] == 1.0]
    by_method = {method: {e["sparsity"]: e for e in table if e["method"] == method}
                 for method in METHODS if method != "dense"}
    # Parameter-matched dense runs by the sparsity they were matched to (plan.json; the plot places them at the
    # fraction of parameters they remove, which differs a little because biases are never masked).
    matched = {plan["param_matched"][e["run"]]["sparsity"]: e for e in table if e["run"] in plan["param_matched"]}
    sparsities = sorted({s for cells in by_method.values() for s in cells} | set(matched))
    lines = [study.header("Sparse training study (Graesser et al. 2022)", plan, result),
             "## IQM of the final return\n",
             "| method | " + " | ".join(f"{s:g}" for s in sparsities) + " |",
             "|---|" + "---|" * len(sparsities)]
    if dense:
        lines.append(f"| dense (all sparsities) | {study.interval(dense[0])} |" + " |" * (len(sparsities) - 1))
    for method, cells in by_method.items():
        if cells:
            lines.append(f"| {method} | " + " | ".join(study.interval(cells[s]) if s in cells else "" for s in sparsities) + " |")
    if matched:
        lines.append("| dense, parameter-matched | " + " | ".join(
            study.interval(matched[s]) if s in matched else "" for s in sparsities) + " |")
    lines.append("\n## Findings, in numbers\n")
    if dense:
        reference = dense[0]
        for method, cells in by_method.items():
            levels = sorted(cells)
            holding = [s for s in levels if study.overlaps(cells[s], reference)]
            first_drop = next((s for s in levels if not study.overlaps(cells[s], reference)), None)
            text = (f"CIs overlap the dense CI at {', '.join(f'{s:g}' for s in holding) or 'no sparsity'}"
                    + (f"; first apart at {first_drop:g} ({study.interval(cells[first_drop])})" if first_drop else ""))
            if levels:
                lines.append(f"- Sparse vs dense {study.interval(reference)}: {method}: {text}.")
    for method in ("rigl", "set"):
        shared = sorted(set(by_method[method]) & set(by_method["static"]))
        if shared:
            diffs = ", ".join(
                f"{s:g}: {by_method[method][s]['iqm'] - by_method['static'][s]['iqm']:+.4g}"
                f"{'' if study.overlaps(by_method[method][s], by_method['static'][s]) else ' (CIs apart)'}"
                for s in shared)
            lines.append(f"- {method} minus static, IQM difference per sparsity: {diffs}.")
    best = []
    for s in sparsities:
        candidates = [(cells[s]["iqm"], method) for method, cells in by_method.items() if s in cells]
        if candidates:
            best.append(f"{s:g}: {max(candidates)[1]}")
    if best:
        lines.append(f"- Best sparse method by IQM per sparsity: {', '.join(best)}.")
    for s, entry in sorted(matched.items()):
        candidates = [(cells[s]["iqm"], method) for method, cells in by_method.items() if s in cells]
        if candidates:
            iqm, method = max(candidates)
            lines.append(f"- Same parameter count as sparsity {s:g} (width x{entry['width_multiplier']:.4g}): dense "
                         f"{study.interval(entry)} vs {method} {iqm:.4g}.")
    if plan["agent"] == "dqn" and plan["env"].removeprefix("gymnax:") == "Acrobot-v1":
        lines.append(f"- Published (Graesser et al. 2022, DQN on Acrobot-v1, gym protocol): {PUBLISHED_ACROBOT}.")
    lines.append("\nPlots: `return_vs_sparsity.png`, `return_vs_step.png`, `dormant_vs_step.png`, "
                 "`performance_profiles.png`.\n")
    return "\n".join(lines)


def main(argv=None) -> int:
    """The study's command line: exit status 0, 1 when a run failed, 2 on bad input (`study.main`)."""
    return study.main(build, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
