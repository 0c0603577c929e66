"""The sparse-training settings of a network: those every method shares, and each method's own (docs/design.md
section 4).

A method's own settings are a frozen dataclass, a subclass of `Settings` that the method names
(`Topology.settings_type`), read from its config block `sparse.<method>` by `read_settings`: the block holds
exactly the settings' fields (`Settings.block_fields`), each of its declared type, or a `ConfigError` names the
field. `Window` is the schedule of the methods that change their masks: gradient steps here, fractions of the run
in the block.
"""

import dataclasses
import typing
from typing import Any, Mapping

from sparserl.errors import ConfigError
from sparserl.sparse import schedules
from sparserl.sparse import structure as structure_lib
from sparserl.sparse.structure import is_concrete

ACCEPTED_TYPES = {int: (int,), float: (int, float)}  # a float field takes an int (0 for 0.0); neither takes a bool


@dataclasses.dataclass(frozen=True)
class Settings:
    """A method's own settings; this base holds none (dense, static: no config block)."""

    @classmethod
    def block_fields(cls) -> dict[str, type]:
        """The fields of the method's config block and the type each holds: the dataclass's fields."""
        types = typing.get_type_hints(cls)
        return {field.name: types[field.name] for field in dataclasses.fields(cls)}

    @classmethod
    def from_block(cls, values: dict[str, Any], total_updates: int) -> "Settings":
        """The settings a checked block's `values` give over a run of `total_updates` gradient updates."""
        del total_updates
        return cls(**values)


@dataclasses.dataclass(frozen=True)
class Window(Settings):
    """When a method changes its masks: every `update_period` gradient steps in [update_start, update_end).

    SET/RigL (Evci et al. 2020, Algorithm 1): the topology updates; prune: Zhu & Gupta's t0 and t1 (2017,
    eq. 1) and the pruning frequency; SR-STE and mask decay: when E is recomputed (mask decay: beta_t's window).
    The config block gives the window as fractions of the run's T gradient updates, `start_fraction` and
    `end_fraction`, so one block fits runs of any length: update_start = floor(start_fraction * T),
    update_end = max(update_start + 1, floor(end_fraction * T)).
    """

    update_period: int
    update_start: int
    update_end: int

    def __post_init__(self):
        if self.update_period < 1:
            raise ConfigError("update_period", f"must be >= 1, got {self.update_period}")

    def is_periodic_step(self, step):
        """True at update_start + k * update_period inside (update_start, update_end): SET's, RigL's and SR-STE's
        update steps (`schedules.is_periodic_step`)."""
        return schedules.is_periodic_step(step, self.update_period, self.update_start, self.update_end)

    @classmethod
    def block_fields(cls) -> dict[str, type]:
        steps = ("update_start", "update_end")
        fields = {name: kind for name, kind in super().block_fields().items() if name not in steps}
        return dict(fields, start_fraction=float, end_fraction=float)

    @classmethod
    def from_block(cls, values, total_updates):
        others = {name: value for name, value in values.items() if name not in ("start_fraction", "end_fraction")}
        start = int(values["start_fraction"] * total_updates)
        end = max(start + 1, int(values["end_fraction"] * total_updates))
        return cls(update_start=start, update_end=end, **others)


def read_settings(settings_type: type[Settings], block: Mapping[str, Any] | None, path: str,
                  total_updates: int) -> Settings:
    """The `settings_type` that `block`, the config block at `path` ("sparse.rigl"), gives over a run of
    `total_updates` gradient updates.

    Raises ConfigError naming the field ("sparse.rigl.update_period") when the block has a field the settings do
    not, lacks one they have, or holds a value of another type or out of range.
    """
    values = dict(block.items()) if block is not None else {}
    fields = settings_type.block_fields()
    allowed = ", ".join(sorted(fields))
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{path}.{unknown[0]}", f"{path} has no such field; choose one of {allowed}")
    for name, kind in fields.items():
        if name not in values:
            raise ConfigError(f"{path}.{name}", f"missing: {path} needs {allowed}")
        if isinstance(values[name], bool) or not isinstance(values[name], ACCEPTED_TYPES[kind]):
            raise ConfigError(f"{path}.{name}", f"must be {kind.__name__}, got {values[name]!r}")
    try:
        return settings_type.from_block({name: kind(values[name]) for name, kind in fields.items()}, total_updates)
    except ConfigError as error:  # a field of the settings: named by its path in the config
        raise ConfigError(f"{path}.{error.field}", error.reason) from None


@dataclasses.dataclass(frozen=True)
class SparsityConfig:
    """How one network is made and kept sparse.

    `method` is a name from `sparserl.sparse.topology.TOPOLOGIES`; `settings`
    are its own settings, of its `Topology.settings_type` (`Window` and its
    subclasses for the methods that change their masks; `Settings()`, none,
    for dense and static).

    `structure` ('unstructured', 'fan_in' or 'nm:N:M', `sparserl.sparse.structure`)
    is kept by every method's init, drop, grow and prune. Layers kept dense are
    chosen by path: `dense_layers` holds fnmatch patterns over layer paths
    ('q1/dense_0', 'q*/output', 'conv_0'); `dense_first_layer` and
    `dense_last_layer` add, per sub-network, the paths of its first and last
    layer (`sparserl.sparse.distributions.dense_layer_paths`).

    `sparsity` may be a traced scalar, so that several levels vmap in one
    program (`sparserl.compiled_runner.run_sweep`); masks then hold exactly the
    counts the traced level gives (float32 arithmetic), and only a concrete
    level is range-checked here. `index_sparsity` is then the sweep's lowest
    level, concrete: condensed indices hold its fan-in k slots per neuron, in
    which every level keeps its own k (native kernels: offsets, the spare
    slots in no neuron; XLA's: extra indices at zero weights; `None`: the
    indices hold the level's own k).
    """

    method: str = "dense"
    sparsity: float = 0.0
    distribution: str = "erk"
    dense_first_layer: bool = False
    dense_last_layer: bool = False
    structure: str = "unstructured"
    dense_layers: tuple[str, ...] = ()
    settings: Settings = Settings()
    index_sparsity: float | None = None

    @property
    def parsed_structure(self) -> structure_lib.Structure:
        """The `structure` string as a `sparserl.sparse.structure.Structure`."""
        return structure_lib.parse(self.structure)

    def __post_init__(self):
        if is_concrete(self.sparsity) and not 0.0 <= self.sparsity < 1.0:
            raise ConfigError("sparse.sparsity", f"must be in [0, 1), got {self.sparsity}")
        structure_lib.parse(self.structure)  # a ConfigError naming the allowed structures
