"""Methods assembled from the library's parts, by name.

Methods differ in a few parts only (update rule, random mask, averaging, dropout, post-hoc
temperature, objective); ``assemble`` wires those parts (``runner.run`` trains and evaluates).
The registry itself (``Method``, ``METHODS``, ``validate``) lives, torch-free, in
:mod:`cigl_bayes.registry` and is re-exported here. Adding a method is one ``METHODS`` entry
(plus its new part, if any).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .cigl import RandomMask, SnapshotAveraging, mask_update_by_z
from .config import RunConfig
from .data import DataSplits, DeviceLoader, augmentation_for
from .drop_rate import is_auto
from .models import build_model
from .ood.diagnostics import MoonDiagnostics
from .ood.moon import AlphaSchedule, MoonObjective
from .registry import METHODS, Method, check_device, check_regression_method, get_method, validate
from .sparse import DropSchedule, SparseNet, TopologyUpdater
from .train import Trainer, build_lr_scheduler, build_sgd

__all__ = ["METHODS", "Assembled", "Method", "assemble", "check_device", "check_regression_method", "get_method",
           "squared_error", "validate"]


def squared_error(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error of a one-output regression network (Gaussian likelihood, fixed noise)."""
    return F.mse_loss(output.squeeze(-1), target)


@dataclass
class Assembled:
    """A method wired up: everything the trainer and the evaluator need."""

    method: Method
    model: nn.Module
    trainer: Trainer
    averaging: SnapshotAveraging | None = None
    extras: dict[str, Any] = field(default_factory=dict)


def _objective(method: Method, config: RunConfig, model: nn.Module, data: DataSplits, steps_per_epoch: int) -> tuple[Callable | None, dict[str, Any]]:
    """The method's training objective (None: cross-entropy of ``model(x)``) and extra parts."""
    if method.svi:  # -ELBO/N; its KL term replaces weight decay on the maskable weights
        from .bayes import (HierarchicalGuide, LearnableKeep, NegativeELBO, SparseBayesModel, SyncLearnedKeep,
                            prior_precision_for_weight_decay)  # pyro: imported only where it is used

        keep, rescale = 1.0 - config.random_mask.drop_rate, config.random_mask.rescale
        scale = 1.0 / keep if rescale else 1.0
        num_data = data.x_train.shape[0]
        precision = config.bayes.prior_precision or prior_precision_for_weight_decay(config.optim.weight_decay, keep, num_data, scale=scale)
        mask_keep: float | LearnableKeep = keep
        if config.bayes.learn_keep:  # a variational parameter living on the net (optimised, checkpointed)
            model.variational_keep = mask_keep = LearnableKeep(keep, config.bayes.temperature).to(data.x_train.device)
        bayes_model = SparseBayesModel(model, num_data, precision, mask_keep, rescale, kl=config.bayes.kl, slab_scale=config.bayes.slab_scale)
        guide = HierarchicalGuide(model, mask_keep, rescale, config.bayes.slab_scale, kl=config.bayes.kl)
        extras = {"bayes_model": bayes_model, "guide": guide, "prior_precision": precision}
        if config.bayes.learn_keep:
            extras["keep_sync"] = SyncLearnedKeep(mask_keep, model.random_mask)
        return NegativeELBO(bayes_model, guide, num_data), extras
    if method.moon_loss:
        moon = config.moon
        alpha_schedule = AlphaSchedule(moon.warmup_epochs, config.optim.epochs, moon.rho, moon.alpha_final, moon.ewma)
        return MoonObjective(model, alpha_schedule, steps_per_epoch), {}
    return None, {}


def assemble(
    config: RunConfig,
    data: DataSplits,
    checkpoint_path: str | os.PathLike | None = None,
    progress: bool = True,
) -> Assembled:
    """Build model, masks, optimiser, schedules, hooks and trainer for ``config.method``."""
    method = get_method(config.method)
    if data.is_regression:
        check_regression_method(config.method, method)
    if is_auto(config):
        raise ValueError("drop rate 'auto' is resolved by pilot runs before assembling: use runner.run, or "
                         "cigl_bayes.drop_rate.choose_drop_rate(config, data) first")
    torch.manual_seed(config.seed)
    device = torch.device(config.device)
    dropout = config.model.dropout if method.mc_dropout else 0.0
    outputs = data.num_classes + 1 if method.unknown_class else data.num_classes
    model: nn.Module = build_model(config.model.name, data.input_shape, outputs, dropout=dropout).to(device)
    if method.sparse:
        random_mask = None
        if method.random_mask:
            random_mask = RandomMask(config.random_mask.drop_rate, config.random_mask.rescale, seed=config.seed)
        model = SparseNet(model, config.sparsity.density, config.sparsity.distribution, random_mask, seed=config.seed)

    optim = config.optim
    transform = augmentation_for(data.augment)
    loader = DeviceLoader(data.x_train, data.y_train, config.data.batch_size, shuffle=True, drop_last=True,
                          seed=config.seed, transform=transform)
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise ValueError(f"batch size {config.data.batch_size} exceeds the {data.x_train.shape[0]} training examples; lower --batch-size")
    total_steps = optim.epochs * steps_per_epoch
    objective, extras = _objective(method, config, model, data, steps_per_epoch)
    released = method.moon_schedule and config.moon.recipe == "released"
    lr = optim.lr * config.moon.lr_peak if released else optim.lr
    optimizer = build_sgd(model, lr, optim.momentum, optim.nesterov, 0.0 if method.svi else optim.weight_decay)
    averaging_start = min(optim.epochs - 1, int(config.averaging.start_fraction * optim.epochs))
    if released:  # no warm-up; cosine from lr_peak to lr_floor (x optim.lr) until averaging, then held
        lr_scheduler = build_lr_scheduler(optimizer, total_steps, 0, "cosine", hold_from=averaging_start * steps_per_epoch,
                                          hold_factor=config.moon.lr_floor / config.moon.lr_peak)
    else:
        hold = method.averaging is not None and config.averaging.hold_lr is not None
        lr_scheduler = build_lr_scheduler(optimizer, total_steps, optim.warmup_epochs * steps_per_epoch, optim.schedule,
                                          optim.decay_every, optim.decay_factor,
                                          hold_from=averaging_start * steps_per_epoch if hold else None,
                                          hold_factor=config.averaging.hold_lr if hold else 0.0)
    gate = None
    step_wrapper: Callable | None = None
    if method.sparse:
        s = config.sparsity
        schedule = DropSchedule.for_run(total_steps, s.update_every, s.drop_fraction, s.end_fraction)
        gate = TopologyUpdater(model, optimizer, schedule, method.update, seed=config.seed)
        if method.random_mask and config.random_mask.mask_momentum:
            step_wrapper = mask_update_by_z(model, optimizer)

    averaging = None
    if method.averaging is not None:
        fraction = config.moon.snapshot_fraction if released else config.averaging.snapshot_fraction
        per_epoch = 1 if fraction is None else max(1, round(fraction * steps_per_epoch))
        averaging = SnapshotAveraging(model, averaging_start, data.x_train, batch_size=max(256, config.data.batch_size),
                                      mode=method.averaging, sample_mask=config.averaging.sample_mask,
                                      bn_transform=transform, seed=config.seed,
                                      snapshots_per_epoch=per_epoch, steps_per_epoch=steps_per_epoch)
    if config.compile and objective is not None:
        raise ValueError(f"--compile covers methods trained on a plain loss; {config.method!r} has its own objective")
    loss_fn = squared_error if data.is_regression else F.cross_entropy
    if method.unknown_class:  # per-epoch diagnostics (runner.run adds the OOD sets)
        extras["moon_diagnostics"] = MoonDiagnostics(model, {"test": data.x_test}, getattr(objective, "schedule", None))
        loss_fn = extras["moon_diagnostics"].attach(objective, loss_fn)
    trainer = Trainer(model, optimizer, loader, optim.epochs, loss_fn=loss_fn,
                      objective=objective, lr_scheduler=lr_scheduler, gate=gate,
                      forward_model=torch.compile(model) if config.compile else None,
                      autocast=torch.bfloat16 if config.precision == "bf16" else None,
                      hooks=[h for h in (extras.get("keep_sync"), averaging, extras.get("moon_diagnostics")) if h is not None],
                      step_wrapper=step_wrapper,
                      checkpoint_path=checkpoint_path, checkpoint_extra={"config": config.to_dict()},
                      progress=progress, description=config.method)
    return Assembled(method, model, trainer, averaging, extras)
