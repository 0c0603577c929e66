"""The sparse backbone shared by every agent: one API for masks, distributions, schedules and topology updates."""

from sparserl.sparse.config import SparsityConfig
from sparserl.sparse.distributions import DISTRIBUTIONS, layer_sparsities
from sparserl.sparse.masks import apply_masks, sparsity_metrics
from sparserl.sparse.optimizer import SparseOptimizer, SparseOptState, sparse_optimizer, zero_moments
from sparserl.sparse.topology import TOPOLOGIES
# Register the methods of their own files; the CLI lists methods in this order.
from sparserl.sparse import srigl, srste, mask_decay  # noqa: F401

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
