"""The sparse-training settings shared by every agent (DESIGN section 4)."""

import dataclasses


def is_concrete(value) -> bool:
    """True for a Python number; False for a traced value (a sparsity level vmapped over in a sweep)."""
    return isinstance(value, (int, float))


@dataclasses.dataclass(frozen=True)
class SparsityConfig:
    """How one network is made and kept sparse.

    `method` is a name from `sparserl.sparse.topology.TOPOLOGIES`. For SET and
    RigL, the topology changes every `update_period` steps while
    `update_start <= step < update_end`, dropping a cosine-decayed fraction
    (`drop_fraction` at `update_start`) of each layer's active weights. For
    `prune`, `update_start` and `update_end` are Zhu & Gupta's t0 and t1 and
    `update_period` is the pruning frequency.

    `structure` ('unstructured', 'fan_in' or 'nm:N:M', `sparserl.sparse.structure`)
    is kept by every method's init, drop, grow and prune. Layers kept dense are
    chosen by path: `dense_layers` holds fnmatch patterns over layer paths
    ('q1/dense_0', 'q*/output', 'conv_0'); `dense_first_layer` and
    `dense_last_layer` add, per sub-network, the paths of its first and last
    layer (`sparserl.sparse.distributions.dense_layer_paths`). `options` holds
    a method's own settings as (name, value) pairs, with the method's defaults
    (`Topology.options`) for the ones not given.

    `sparsity` may be a traced scalar, so that several levels vmap in one
    program (`sparserl.compiled_runner.run_sweep`); masks then hold exactly the
    counts the traced level gives (float32 arithmetic), and only a concrete
    level is range-checked here.
    """

    method: str = "dense"
    sparsity: float = 0.0
    distribution: str = "erk"
    dense_first_layer: bool = False
    dense_last_layer: bool = False
    update_period: int = 1000
    update_start: int = 0
    update_end: int = 75_000
    drop_fraction: float = 0.3
    structure: str = "unstructured"
    dense_layers: tuple[str, ...] = ()
    options: tuple[tuple[str, float], ...] = ()

    def option(self, name: str, default: float) -> float:
        return dict(self.options).get(name, default)

    @property
    def parsed_structure(self):
        """The `structure` string as a `sparserl.sparse.structure.Structure`."""
        from sparserl.sparse import structure  # structure needs is_concrete from here

        return structure.parse(self.structure)

    def __post_init__(self):
        if is_concrete(self.sparsity) and not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if self.update_period < 1:
            raise ValueError(f"update_period must be >= 1, got {self.update_period}")
        from sparserl.sparse import structure

        structure.parse(self.structure)  # a ValueError naming the allowed structures
