"""Sparse-training engine: exact densities, the flat support mask, masked forward, topology updates."""

from .density import DISTRIBUTIONS, check_density, erk_densities, exact_counts, layer_counts, uniform_densities
from .masks import SupportMask, maskable_weight_names
from .network import SparseNet
from .schedule import DropSchedule
from .updates import UPDATE_RULES, TopologyUpdater

__all__ = [
    "DISTRIBUTIONS",
    "UPDATE_RULES",
    "DropSchedule",
    "SparseNet",
    "SupportMask",
    "TopologyUpdater",
    "check_density",
    "erk_densities",
    "exact_counts",
    "layer_counts",
    "maskable_weight_names",
    "uniform_densities",
]
