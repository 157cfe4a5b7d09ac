"""Training: the loop, the optimiser and lr schedules, atomic checkpoints."""

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint, save_weights
from .optim import LR_SCHEDULES, build_lr_scheduler, build_sgd, lr_factor, parameter_groups
from .trainer import History, NonFiniteLossError, Trainer

__all__ = [
    "CheckpointError",
    "LR_SCHEDULES",
    "History",
    "NonFiniteLossError",
    "Trainer",
    "build_lr_scheduler",
    "build_sgd",
    "load_checkpoint",
    "lr_factor",
    "parameter_groups",
    "save_checkpoint",
    "save_weights",
]
