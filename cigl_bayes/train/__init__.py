"""Training: the loop, the optimiser and lr schedules, atomic checkpoints, the run folder.

Members load on first use (:mod:`cigl_bayes._lazy`), so the torch-free ``errors`` and ``run_dir``
modules import without torch.
"""

from .._lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "checkpoint": ("CheckpointError", "load_checkpoint", "save_checkpoint", "save_weights"),
    "errors": ("NonFiniteLossError",),
    "optim": ("LR_SCHEDULES", "build_lr_scheduler", "build_sgd", "lr_factor", "parameter_groups"),
    "trainer": ("History", "Trainer"),
})
