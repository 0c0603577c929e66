"""The sparse backbone shared by every agent: one API for masks, distributions, schedules and topology updates."""

from sparserl.sparse.config import SparsityConfig
from sparserl.sparse.distributions import DISTRIBUTIONS, layer_sparsities
from sparserl.sparse.masks import apply_masks, sparsity_metrics
from sparserl.sparse.optimizer import SparseOptimizer, SparseOptState, sparse_optimizer, zero_moments
from sparserl.sparse.topology import TOPOLOGIES
from sparserl.sparse import mask_decay, srigl, srste  # noqa: F401  (register the methods of their own files)

__all__ = [
    "DISTRIBUTIONS",
    "TOPOLOGIES",
    "SparseOptState",
    "SparseOptimizer",
    "SparsityConfig",
    "apply_masks",
    "layer_sparsities",
    "sparse_optimizer",
    "sparsity_metrics",
    "zero_moments",
]
