"""The command-line layer every entry point shares: `python -m sparserl.train`, the studies, the launcher, the
aggregation and the plots (docs/design.md contract 7).

Bad input ends with one line, `error: <flag>: <what is wrong and what is allowed>`, exit status 2 and nothing
written. Here is what makes it so: the one `UsageError`, the one argparse parser whose errors are that line
(`OneLineParser`), and the translation of the library's errors. The library knows nothing of the command line: it
raises a `sparserl.errors.ConfigError` naming the config field it cannot use, and `usage_error` turns it into the
UsageError naming the flag that sets that field (`flag_of`). The flags of `python -m sparserl.train` itself are
defined in `sparserl.train`; what they resolve to, in `sparserl.train_config`.
"""

import argparse
import sys
from collections.abc import Mapping
from typing import Any, NoReturn

from sparserl.errors import ConfigError

USAGE_STATUS = 2
"""The exit status of bad input."""

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
"""The flags of `python -m sparserl.train` that set a config field when given: flag name -> field."""

FLAG_ONLY_FIELDS = ("agent", "env")
"""Config fields set by their own flag (`--agent`, `--env`) only: a `--config.<field>` override may not change them,
since the preset was chosen from them."""

SPARSITY_FIELDS = ("sparsity", "actor_sparsity", "critic_sparsity")
"""The fields of a config's `sparse` block that hold a sparsity: every network's, and the actor's and the critic's
(agents with both; None, or absent, where they take `sparsity`)."""

RECYCLE_FLAG_FIELD = "redo.remedy"
"""The field `--recycle=<remedy>` sets (with `redo.enabled`; `--recycle=none` turns the remedy off)."""

_FIELD_FLAGS = {**{field: f"--{flag_name}" for flag_name, field in FLAG_FIELDS.items()}, RECYCLE_FLAG_FIELD: "--recycle"}


class UsageError(Exception):
    """A user mistake: reported as one line (`report_usage`), exit status 2, nothing written."""


def flag_of(field: str) -> str:
    """The flag that sets a config field (a dotted path): `sparse.sparsity` -> `--sparsity`, `env` -> `--env`, any
    other field `--config.<field>`."""
    if field in FLAG_ONLY_FIELDS:
        return f"--{field}"
    return _FIELD_FLAGS.get(field, f"--config.{field}")


def largest_sparsity(sparse: Mapping[str, Any]) -> float:
    """The largest of the sparsity, actor and critic sparsity of a config's `sparse` block (a ConfigDict, or the dict
    of a run's config.json); 0 for a dense network."""
    return max(sparse.get(name) or 0.0 for name in SPARSITY_FIELDS)


def one_line(message: str) -> str:
    """The first line of a message: what the user sees of it."""
    return message.partition("\n")[0]


def usage_error(error: ValueError) -> UsageError:
    """The UsageError for a library error that the user's input caused: a `ConfigError` as `<flag>: <reason>`, the
    flag being the one that sets its field; any other ValueError (an error raised before ConfigError existed, whose
    text names its flag itself) as its text. One line either way."""
    if isinstance(error, ConfigError):
        return UsageError(one_line(f"{flag_of(error.field)}: {error.reason}"))
    return UsageError(one_line(str(error)))


def report_usage(message: str) -> int:
    """Reports bad input, `error: <the message's first line>` on stderr, and returns its exit status (2)."""
    print(f"error: {one_line(message)}", file=sys.stderr, flush=True)
    return USAGE_STATUS


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are reported as bad input (`report_usage`): one line, exit status 2."""

    def error(self, message: str) -> NoReturn:
        """argparse's hook for bad arguments: reports them and exits with status 2."""
        sys.exit(report_usage(message))
