"""The benchmark table: every row a ratio of two things timed side by side, on this machine.

    python -m sparserl.bench [--quick] [--peers] [--json PATH] [--rows NAME,...]

Rows (each a module of `sparserl.experiments.bench`, imported when it runs): sparse_update, dormancy_redo, seeds,
envs_per_seed, condensed, condensed_agents, condensed_gpu (a GPU only), kernel_gradient, compiled, startup, end_to_end. `--quick`
shortens every row; `--peers` also runs sbx (stable-baselines-jax) on the same settings; `--json PATH` writes the
table.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.util
import json
import os
import sys
import time
from typing import Callable

import jax

from sparserl import compilation_cache
from sparserl.experiments.bench.table import Row, Settings, format_table

PROGRAM = "python -m sparserl.bench"
ROWS = ("sparse_update", "dormancy_redo", "seeds", "envs_per_seed", "condensed", "condensed_agents", "condensed_gpu",
        "kernel_gradient", "compiled", "startup", "end_to_end")


def row_function(name: str) -> Callable[[Settings], list[Row]]:
    """`rows(settings)` of the row's module, imported now."""
    return importlib.import_module(f"{__package__}.{name}").rows


def describe_machine() -> dict:
    device = jax.devices()[0]
    return {"platform": device.platform, "device": device.device_kind, "devices": jax.device_count(),
            "cpus": os.cpu_count(), "jax": jax.__version__, "python": sys.version.split()[0]}


def peers_available() -> bool:
    return importlib.util.find_spec("sbx") is not None


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter rows")
    parser.add_argument("--peers", action="store_true",
                        help="also run sbx on the same settings (pip install sparserl[bench])")
    parser.add_argument("--json", metavar="PATH", help="write the table as JSON to PATH")
    parser.add_argument("--rows", default=",".join(ROWS),
                        help=f"comma-separated rows to run: {', '.join(ROWS)} (default all)")
    return parser.parse_args(argv)


def input_error(args: argparse.Namespace, names: list[str]) -> str | None:
    """The one-line error of bad input, or None."""
    unknown = [name for name in names if name not in ROWS]
    if unknown or not names:
        return f"error: --rows: unknown row(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(ROWS)}"
    if args.peers and not peers_available():
        return "error: --peers needs sbx (stable-baselines-jax), which is not installed: pip install 'sparserl[bench]'"
    if args.json and not os.access(os.path.dirname(os.path.abspath(args.json)), os.W_OK):
        return f"error: --json: cannot write {args.json!r}"
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    names = [name.strip() for name in args.rows.split(",") if name.strip()]
    error = input_error(args, names)
    if error:
        print(error, file=sys.stderr)
        return 2
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # on a GPU, leave memory to the child processes
    compilation_cache.enable()
    settings = Settings(quick=args.quick, peers=args.peers)
    machine = describe_machine()
    print(f"sparserl.bench{' --quick' if args.quick else ''}{' --peers' if args.peers else ''}: "
          f"{machine['platform']} ({machine['device']}), {machine['cpus']} CPUs, jax {machine['jax']}", flush=True)
    started = time.perf_counter()
    rows: list[Row] = []
    for name in names:
        row_started = time.perf_counter()
        new_rows = row_function(name)(settings)
        rows += new_rows
        print(format_table(new_rows), flush=True)
        print(f"  ({name}: {time.perf_counter() - row_started:.0f} s)\n", flush=True)
    print(format_table(rows))
    print(f"ratios from one run; absolute times depend on the machine's load ({time.perf_counter() - started:.0f} s in all)")
    if args.json:
        table = {"command": " ".join([PROGRAM, *(argv if argv is not None else sys.argv[1:])]),
                 "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                 "machine": machine, "quick": args.quick, "rows": [row.as_dict() for row in rows]}
        with open(args.json, "w") as file:
            json.dump(table, file, indent=2)
    return 0
