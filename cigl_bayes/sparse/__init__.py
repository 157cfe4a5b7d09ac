"""Sparse-training engine: exact densities, the flat support mask, masked forward, topology updates.

Members load on first use (:mod:`cigl_bayes._lazy`), so the torch-free ``density`` module (the
config's density check) imports without torch.
"""

from .._lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "density": ("DISTRIBUTIONS", "check_density", "erk_densities", "exact_counts", "layer_counts", "uniform_densities"),
    "convert": ("to_sparse_module",),
    "masks": ("SupportMask", "maskable_weight_names", "parameter_aliases"),
    "network": ("SparseNet",),
    "schedule": ("DropSchedule",),
    "updates": ("UPDATE_RULES", "TopologyUpdater"),
})
