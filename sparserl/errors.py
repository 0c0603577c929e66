"""The one error the library raises for a config value it cannot use.

The library names the config field (its dotted path in a run's config, such as "sparse.structure"); it knows
nothing of the command line. `sparserl.cli` turns a `ConfigError` into the one-line usage message that names
the flag setting that field, and exit status 2.
"""


class ConfigError(ValueError):
    """`field` (a dotted config path, e.g. "network.kind") holds a value the library cannot use; `reason` says why
    and what is allowed."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason
