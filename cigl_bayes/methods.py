"""The method registry: a method's name -> how it is assembled from the library's parts.

Methods differ in a few parts only (update rule, random mask, averaging, dropout, post-hoc
temperature, objective); ``assemble`` wires those parts (``runner.run`` trains and evaluates).
Adding a method is one ``METHODS`` entry (plus its new part, if any).
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
from .data import DATASET_NAMES, REGRESSION_DATASET_NAMES, DataSplits, DeviceLoader, augmentation_for
from .drop_rate import is_auto
from .models import MODEL_NAMES, build_model
from .ood.moon import AlphaSchedule, MoonObjective, check_warmup
from .sparse import DropSchedule, SparseNet, TopologyUpdater
from .train import Trainer, build_lr_scheduler, build_sgd


@dataclass(frozen=True)
class Method:
    """The parts that make a method (see ``METHODS``)."""

    description: str
    sparse: bool = True
    update: str = "rigl"              # static | set | rigl
    random_mask: bool = False         # CigL's Bernoulli mask Z, resampled every step
    averaging: str | None = None      # None | "weights" (WMA) | "predictions"
    mc_dropout: bool = False          # unit dropout in training, MC average at test time
    temperature: bool = False         # temperature scaling fitted on the validation split
    svi: bool = False                 # train -ELBO/N of the Pyro model + hierarchical guide
    unknown_class: bool = False       # MOON: K+1 outputs, re-weighted loss with auto-tuned alpha


METHODS: dict[str, Method] = {
    "dense": Method("dense network, no sparsity", sparse=False),
    "static": Method("fixed random ERK support", update="static"),
    "set": Method("SET: drop smallest |w|, grow at random", update="set"),
    "rigl": Method("RigL: drop smallest |w|, grow largest |grad|"),
    "rigl-wdp": Method("RigL + weight dropout: random mask Z in training, no averaging, evaluated without Z", random_mask=True),
    "rigl-mcdrop": Method("RigL + unit dropout, MC dropout at test time", mc_dropout=True),
    "rigl-ts": Method("RigL + temperature scaling on the validation split", temperature=True),
    "cigl": Method("CigL: RigL + random mask Z + weight-and-mask averaging", random_mask=True, averaging="weights"),
    "cigl-no-rm": Method("CigL ablation 'w/o RM': RigL + weight averaging, no random mask", averaging="weights"),
    "cigl-pred-avg": Method("CigL ablation 'w/o WMA': average snapshot predictions", random_mask=True, averaging="predictions"),
    "cigl-svi": Method("CigL as a Pyro model/guide trained by SVI (-ELBO), with WMA and MC predictive",
                       random_mask=True, averaging="weights", svi=True),
    "moon": Method("MOON: RigL + unknown (K+1) class, re-weighted loss, late weight averaging",
                   averaging="weights", unknown_class=True),
    "moon-set": Method("MOON on a SET backbone", update="set", averaging="weights", unknown_class=True),
    "moon-cigl": Method("MOON with CigL's random mask (as in the released code)", random_mask=True,
                        averaging="weights", unknown_class=True),
    "moon-vote": Method("MOON with prediction voting over the late snapshots", averaging="predictions",
                        unknown_class=True),
}


def get_method(name: str) -> Method:
    """The registered method ``name`` or a ``ValueError`` listing the choices."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}")
    return METHODS[name]


def validate(config: RunConfig, regression_ok: bool = False) -> None:
    """Check names before anything is loaded or written.

    Regression sets are refused unless ``regression_ok`` (``runner.run`` evaluates classifiers;
    the deep-GP comparison evaluates regression predictives).
    """
    method = get_method(config.method)
    if config.model.name.lower() not in MODEL_NAMES:
        raise ValueError(f"unknown model {config.model.name!r}; choose one of: {', '.join(MODEL_NAMES)}")
    if config.data.dataset in REGRESSION_DATASET_NAMES:
        if not regression_ok:
            raise ValueError(f"{config.data.dataset!r} is a regression set: train/compare/ood evaluate classifiers; "
                             f"use `cigl-bayes dgp-compare --dataset {config.data.dataset}`")
        check_regression_method(config.method, method)
    elif not (config.data.dataset in DATASET_NAMES or config.data.dataset.startswith(("npz:", "synthetic:"))):
        raise ValueError(f"unknown dataset {config.data.dataset!r}; choose one of {', '.join(DATASET_NAMES)} or npz:PATH")
    if method.unknown_class:
        check_warmup(config.moon.warmup_epochs, config.optim.epochs)
    check_device(config.device)


def check_device(device: str) -> None:
    """``cpu``, or ``cuda`` / ``cuda:N`` when CUDA is available (``ValueError`` naming the fix otherwise)."""
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        kind = None
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {device!r}; use --device cpu or --device cuda (cuda:N for GPU N)")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available; use --device cpu")


def _handles_regression(method: Method) -> bool:
    """Regression needs a real-valued output: no unknown class, temperature, softmax averaging or SVI."""
    return not (method.unknown_class or method.temperature or method.svi or method.averaging == "predictions")


def check_regression_method(name: str, method: Method) -> None:
    if not _handles_regression(method):
        supported = [k for k, m in METHODS.items() if _handles_regression(m)]
        raise ValueError(f"method {name!r} is for classification only; for regression choose one of: {', '.join(supported)}")


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
    if method.unknown_class:
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
    optimizer = build_sgd(model, optim.lr, optim.momentum, optim.nesterov, 0.0 if method.svi else optim.weight_decay)
    averaging_start = min(optim.epochs - 1, int(config.averaging.start_fraction * optim.epochs))
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
        averaging = SnapshotAveraging(model, averaging_start, data.x_train, batch_size=max(256, config.data.batch_size),
                                      mode=method.averaging, sample_mask=config.averaging.sample_mask,
                                      bn_transform=transform, seed=config.seed)
    if config.compile and objective is not None:
        raise ValueError(f"--compile covers methods trained on a plain loss; {config.method!r} has its own objective")
    trainer = Trainer(model, optimizer, loader, optim.epochs, loss_fn=squared_error if data.is_regression else F.cross_entropy,
                      objective=objective, lr_scheduler=lr_scheduler, gate=gate,
                      forward_model=torch.compile(model) if config.compile else None,
                      autocast=torch.bfloat16 if config.precision == "bf16" else None,
                      hooks=[h for h in (extras.get("keep_sync"), averaging) if h is not None], step_wrapper=step_wrapper,
                      checkpoint_path=checkpoint_path, checkpoint_extra={"config": config.to_dict()},
                      progress=progress, description=config.method)
    return Assembled(method, model, trainer, averaging, extras)
