"""Optimiser with weight decay on the maskable weights only, and the learning-rate schedules."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..names import LR_SCHEDULES
from ..sparse.masks import maskable_weight_names
from ..sparse.network import SparseNet


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: the maskable weights (``weight_decay``) and everything else (biases, norms,
    embedding tables: none). Inside a ``SparseNet`` the maskable weights are the ones it masks
    (its ``include`` / ``exclude`` choice); elsewhere the default rule (``maskable_weight_names``:
    conv / linear / attention / HF ``Conv1D`` weights)."""
    try:
        names = set(maskable_weight_names(model))
    except ValueError:  # nothing maskable by the default rule
        names = set()
    decayed = {id(p) for name, p in model.named_parameters() if name in names}
    for net in (m for m in model.modules() if isinstance(m, SparseNet)):
        decayed -= {id(p) for p in net.parameters()}
        decayed |= {id(w) for w in net.weights()}
    with_decay, without = [], []
    for p in model.parameters():
        if p.requires_grad:
            (with_decay if id(p) in decayed else without).append(p)
    return [{"params": with_decay, "weight_decay": weight_decay}, {"params": without, "weight_decay": 0.0}]


def build_sgd(model: nn.Module, lr: float, momentum: float = 0.9, nesterov: bool = True, weight_decay: float = 5e-4) -> torch.optim.SGD:
    """SGD (Nesterov by default) with decay on the maskable weights only (``parameter_groups``)."""
    if lr <= 0 or not math.isfinite(lr):
        raise ValueError(f"learning rate must be a positive number, got {lr}")
    return torch.optim.SGD(parameter_groups(model, weight_decay), lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0)


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str = "step", decay_every: int = 20_000,
              decay_factor: float = 0.5, hold_from: int | None = None, hold_factor: float = 0.0) -> float:
    """Multiplier of the base learning rate at optimisation step ``step`` (0-based).

    Linear warm-up ``(step + 1) / warmup_steps``, then either piecewise-constant decay
    ``decay_factor ** floor(step / decay_every)`` or cosine decay to zero over the rest.

    ``hold_from`` (averaging phases, SWA-style): the schedule is frozen from that step on. The
    cosine then ends there at ``hold_factor`` instead of 0,
    ``h + (1 - h) (1 + cos(pi (t - warmup) / (hold_from - warmup))) / 2``, and stays at ``h``;
    the step schedule keeps the value it has at ``hold_from``.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if hold_from is not None:
        step, total_steps = min(step, hold_from), max(hold_from, warmup_steps + 1)
    if schedule == "step":
        return decay_factor ** (step // decay_every)
    if schedule == "cosine":
        span = max(1, total_steps - warmup_steps)
        floor = hold_factor if hold_from is not None else 0.0
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(step - warmup_steps, span) / span))
    raise ValueError(f"unknown lr schedule {schedule!r}; choose one of {LR_SCHEDULES}")


def build_lr_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, schedule: str = "step",
                       decay_every: int = 20_000, decay_factor: float = 0.5, hold_from: int | None = None,
                       hold_factor: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` stepping ``lr_factor`` once per optimisation step."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown lr schedule {schedule!r}; choose one of {LR_SCHEDULES}")
    if not 0.0 <= hold_factor <= 1.0:
        raise ValueError(f"hold factor must be in [0, 1], got {hold_factor}")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup_steps, schedule, decay_every, decay_factor, hold_from, hold_factor)
    )
