"""Weight-and-mask averaging (WMA), BatchNorm recalibration, and snapshot ensembles (prediction averaging).

WMA folds snapshots ``theta`` (masked weights ``W * Z * M`` scaled as in the forward pass,
plus every other parameter, BN affine included) into an equal-weight running mean
``theta_avg <- theta_avg + (theta - theta_avg) / (n + 1)``. Since the support is frozen
before averaging starts, the average is exactly as sparse as the support.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class WeightAverager:
    """Equal-weight running mean of parameter snapshots, kept in a copy of ``module``.

    ``averaged`` is a plain ``nn.Module`` (same architecture as ``module``) holding the mean;
    its BN running statistics must be recomputed (``recalibrate_batchnorm``) after folds.
    """

    def __init__(self, module: nn.Module) -> None:
        self.averaged = copy.deepcopy(module)
        self.averaged.requires_grad_(False)
        self.count = 0

    @torch.no_grad()
    def fold(self, snapshot: Mapping[str, torch.Tensor]) -> None:
        """Add one snapshot (name -> tensor, as ``named_parameters`` of the module)."""
        params = dict(self.averaged.named_parameters())
        missing = set(params) - set(snapshot)
        if missing:
            raise KeyError(f"snapshot lacks parameters {sorted(missing)[:3]}...")
        targets = [params[name] for name in params]
        values = [snapshot[name].detach() for name in params]
        if self.count == 0:
            torch._foreach_copy_(targets, values)
        else:
            torch._foreach_lerp_(targets, values, 1.0 / (self.count + 1))
        self.count += 1

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "averaged": self.averaged.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.count = state["count"]
        self.averaged.load_state_dict(state["averaged"])


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor]) -> bool:
    """Recompute BN running statistics as a cumulative average over ``batches``.

    Resets every BN layer, sets ``momentum=None`` (exact average over the pass), runs the
    model in train mode without gradients, and restores momenta and the training flag.
    Returns False (and does nothing) if the model has no BN layer.
    """
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    if not norms:
        return False
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    was_training = model.training
    model.train()
    for x in batches:
        model(x)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.train(was_training)
    return True


class SnapshotEnsemble:
    """The "w/o WMA" ablation (and MOON's voting): every snapshot kept as a network of its own,
    with the BN statistics it had when taken; their predictive is the mean softmax
    (``cigl_bayes.predictive.EnsemblePredictive``), so it serves any input, not a fixed set.
    """

    def __init__(self, module: nn.Module) -> None:
        self.template = module
        self.members: list[nn.Module] = []

    def _copy(self) -> nn.Module:
        member = copy.deepcopy(self.template)
        member.zero_grad(set_to_none=True)
        return member.requires_grad_(False).eval()

    @torch.no_grad()
    def add(self, snapshot: Mapping[str, torch.Tensor]) -> None:
        """Keep a copy of the module (buffers as they are now) with parameters from ``snapshot``."""
        member = self._copy()
        for name, param in member.named_parameters():
            param.copy_(snapshot[name])
        self.members.append(member)

    @property
    def count(self) -> int:
        return len(self.members)

    def state_dict(self) -> dict[str, Any]:
        return {"members": [m.state_dict() for m in self.members]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.members = []
        for member_state in state["members"]:
            member = self._copy()
            member.load_state_dict(member_state)
            self.members.append(member)


def batches_of(x: torch.Tensor, batch_size: int) -> Iterable[torch.Tensor]:
    """Consecutive slices of ``x`` (no copy, no shuffle)."""
    return (x[i : i + batch_size] for i in range(0, x.shape[0], batch_size))


def training_batches(
    x: torch.Tensor, batch_size: int, seed: int, transform: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None
) -> Iterable[torch.Tensor]:
    """Batches as training sees them, for BatchNorm statistics: a seeded shuffle of ``x`` (drawn on
    its device) and the training ``transform`` (augmentation), if any.

    Shuffling matters: split indices are sorted and datasets often sorted by class, so consecutive
    slices hold one class each and their batch variances miss the between-class variance
    (measured on mnist: running variances 25-40 % too small, an over-confident model).
    """
    generator = torch.Generator(device=x.device).manual_seed(seed)
    order = torch.randperm(x.shape[0], generator=generator, device=x.device)
    for idx in order.split(batch_size):
        batch = x.index_select(0, idx)
        yield transform(batch, generator) if transform is not None else batch


class SnapshotAveraging:
    """Epoch (and step) hook: from ``start_epoch`` on, fold snapshots of ``model`` -- one at the
    end of each epoch, or ``snapshots_per_epoch`` evenly spaced.

    Args:
        model: a ``SparseNet`` (snapshots are its masked parameters) or a plain module.
        start_epoch: first (0-based) epoch whose end is folded (spec: ``BS = 0.8 * epochs``).
        bn_inputs: training inputs for the BN recalibration pass after each fold.
        mode: ``"weights"`` (WMA, CigL) or ``"predictions"`` (the "w/o WMA" ablation: a snapshot
            ensemble).
        sample_mask: snapshot ``W * Z * M`` with a fresh random mask (the paper's WMA) rather
            than its expectation ``W * M * E[Z]``; irrelevant without a random mask.
        bn_transform: the training augmentation, applied in the BN recalibration pass so the
            statistics match the inputs the network was trained on (see :func:`training_batches`).
        seed: seeds the recalibration pass's shuffle and augmentation (``seed + snapshot count``,
            so a resumed run recomputes the same statistics).
        snapshots_per_epoch: ``k > 1`` folds ``k`` snapshots evenly spaced over each averaging
            epoch (after steps ``round((i + 1) S / k) - 1`` of its ``S = steps_per_epoch`` steps,
            the last at its end; the trainer calls ``on_step_end``), BN recomputed at the epoch's end.
    """

    MODES = ("weights", "predictions")

    def __init__(
        self,
        model: nn.Module,
        start_epoch: int,
        bn_inputs: torch.Tensor,
        batch_size: int = 256,
        mode: str = "weights",
        sample_mask: bool = True,
        bn_transform: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
        seed: int = 0,
        snapshots_per_epoch: int = 1,
        steps_per_epoch: int = 1,
    ) -> None:
        if mode not in self.MODES:
            raise ValueError(f"unknown averaging mode {mode!r}; choose one of {self.MODES}")
        if not 1 <= snapshots_per_epoch <= max(1, steps_per_epoch):
            raise ValueError(f"snapshots per epoch must be in [1, {steps_per_epoch}] (the steps of an epoch), got {snapshots_per_epoch}")
        k = snapshots_per_epoch
        self.fold_steps = frozenset(round((i + 1) * steps_per_epoch / k) - 1 for i in range(k)) if k > 1 else frozenset()
        self.model = model
        self.module = getattr(model, "module", model) if hasattr(model, "masked_parameters") else model
        self.start_epoch = start_epoch
        self.bn_inputs = bn_inputs
        self.batch_size = batch_size
        self.mode = mode
        self.sample_mask = sample_mask
        self.bn_transform = bn_transform
        self.seed = seed
        self.weights = WeightAverager(self.module) if mode == "weights" else None
        self.ensemble = SnapshotEnsemble(self.module) if mode == "predictions" else None

    @torch.no_grad()
    def snapshot(self) -> dict[str, torch.Tensor]:
        """Current parameters, maskable weights as used in the forward pass."""
        if hasattr(self.model, "masked_parameters"):
            return {k: v.detach() for k, v in self.model.masked_parameters(sample=self.sample_mask).items()}
        return {k: v.detach() for k, v in self.model.named_parameters()}

    @torch.no_grad()
    def fold(self) -> None:
        """Fold the current snapshot into the weight average (or the ensemble)."""
        if self.weights is not None:
            self.weights.fold(self.snapshot())
        else:
            self.ensemble.add(self.snapshot())

    def on_step_end(self, epoch: int, step: int) -> None:
        if epoch >= self.start_epoch and step in self.fold_steps:
            self.fold()

    @torch.no_grad()
    def on_epoch_end(self, epoch: int) -> None:
        if epoch < self.start_epoch:
            return
        if not self.fold_steps:
            self.fold()
        if self.weights is not None:
            batches = training_batches(self.bn_inputs, self.batch_size, self.seed + self.weights.count, self.bn_transform)
            recalibrate_batchnorm(self.weights.averaged, batches)

    @property
    def count(self) -> int:
        """Number of snapshots folded so far."""
        return (self.weights or self.ensemble).count

    def state_dict(self) -> dict[str, Any]:
        return {"weights": self.weights.state_dict() if self.weights else None, "ensemble": self.ensemble.state_dict() if self.ensemble else None}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if self.weights is not None:
            self.weights.load_state_dict(state["weights"])
        if self.ensemble is not None:
            self.ensemble.load_state_dict(state["ensemble"])
