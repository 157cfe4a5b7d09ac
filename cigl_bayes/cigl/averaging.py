"""Weight-and-mask averaging (WMA), BatchNorm recalibration, and snapshot ensembles (prediction averaging).

WMA folds snapshots ``theta`` (masked weights ``W * Z * M`` scaled as in the forward pass,
plus every other parameter, BN affine included) into an equal-weight running mean
``theta_avg <- theta_avg + (theta - theta_avg) / (n + 1)``. Since the support is frozen
before averaging starts, the average is exactly as sparse as the support.

BN running statistics of the average are recomputed lazily: once, when the averaged model is
first read after a fold (``SnapshotAveraging.averaged_model()``), not after every snapshot.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..data.loader import module_device


class WeightAverager:
    """Equal-weight running mean of parameter snapshots, kept in a copy of ``module``.

    ``averaged`` is a plain ``nn.Module`` (same architecture as ``module``) holding the mean;
    its BN running statistics must be recomputed (``recalibrate_batchnorm``) after folds.
    An owner may set ``before_read`` (called on every read of ``averaged``): ``SnapshotAveraging``
    uses it so that reading ``averaged`` runs its pending lazy BN recalibration first.
    """

    def __init__(self, module: nn.Module) -> None:
        self._averaged = copy.deepcopy(module)
        self._averaged.requires_grad_(False)
        self.count = 0
        self.before_read: Callable[[], None] | None = None

    @property
    def averaged(self) -> nn.Module:
        """The averaged module (after ``before_read``, if set)."""
        if self.before_read is not None:
            self.before_read()
        return self._averaged

    @torch.no_grad()
    def fold(self, snapshot: Mapping[str, torch.Tensor]) -> None:
        """Add one snapshot (name -> tensor, as ``named_parameters`` of the module)."""
        params = dict(self._averaged.named_parameters())
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
        return {"count": self.count, "averaged": self._averaged.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.count = state["count"]
        self._averaged.load_state_dict(state["averaged"])


def has_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` has a BN layer that tracks running statistics."""
    return any(isinstance(m, _BatchNorm) and m.track_running_stats for m in model.modules())


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[Any], device: torch.device | str | None = None) -> bool:
    """Recompute BN running statistics as a cumulative average over ``batches``
    (``torch.optim.swa_utils.update_bn`` semantics).

    Resets every BN layer, sets ``momentum=None`` (exact average over the pass), runs the
    model in train mode without gradients, and restores momenta and the training flag.
    ``batches`` is any iterable (a ``DataLoader``, a ``DeviceLoader``, a list) of input tensors
    or of ``(x, y, ...)`` tuples/lists, whose first element is the input; inputs are moved
    (``non_blocking``) to ``device`` (default: the model's). Returns False (and does nothing,
    without iterating ``batches``) if the model has no BN layer.
    """
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    if not norms:
        return False
    device = torch.device(device) if device is not None else module_device(model)
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    was_training = model.training
    model.train()
    for batch in batches:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        model(x.to(device, non_blocking=True) if device is not None else x)
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
        bn_inputs: training inputs (one tensor) for the BN recalibration pass, drawn as
            :func:`training_batches` (seeded shuffle, ``bn_transform``, ``batch_size``).
        bn_loader: alternatively, any re-iterable of batches (a ``torch.utils.data.DataLoader``,
            a ``DeviceLoader``, a list; tensors or ``(x, y, ...)``) iterated once per
            recalibration, as it yields them (``batch_size``, ``seed`` and ``bn_transform`` unused).
            Give at most one of ``bn_inputs`` / ``bn_loader``; a model without BN needs neither.
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
            the last at its end; the trainer calls ``on_step_end``).

    BN recalibration is lazy: a fold only marks it pending; it runs once, when the average is
    read (:meth:`averaged_model`, or ``weights.averaged``), with seed ``seed + count`` -- the
    statistics an eager pass after the last fold would give. ``state_dict`` records whether it is
    pending. (Under data parallelism with ``SyncBatchNorm`` in the averaged copy, read it on every rank.)
    """

    MODES = ("weights", "predictions")

    def __init__(
        self,
        model: nn.Module,
        start_epoch: int,
        bn_inputs: torch.Tensor | None = None,
        batch_size: int = 256,
        mode: str = "weights",
        sample_mask: bool = True,
        bn_transform: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
        seed: int = 0,
        snapshots_per_epoch: int = 1,
        steps_per_epoch: int = 1,
        *,
        bn_loader: Iterable[Any] | None = None,
    ) -> None:
        if bn_inputs is not None and bn_loader is not None:
            raise ValueError("give either bn_inputs (a tensor) or bn_loader (an iterable of batches) for BN recalibration, not both")
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
        self.bn_loader = bn_loader
        self.batch_size = batch_size
        self.mode = mode
        self.sample_mask = sample_mask
        self.bn_transform = bn_transform
        self.seed = seed
        self.weights = WeightAverager(self.module) if mode == "weights" else None
        self.ensemble = SnapshotEnsemble(self.module) if mode == "predictions" else None
        self.bn_pending = False  # folded since the last BN recalibration
        if self.weights is not None:
            self.weights.before_read = self._recalibrate_if_pending

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
            self.bn_pending = True
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

    def averaged_model(self) -> nn.Module:
        """The plain averaged module, its BN statistics recomputed first if it changed since the
        last recalibration (the lazy pass; see the class doc). Only for ``mode="weights"``."""
        if self.weights is None:
            raise ValueError("averaged_model() needs mode='weights'; a snapshot ensemble's networks are ensemble.members")
        return self.weights.averaged

    def _bn_batches(self) -> Iterable[Any]:
        if self.bn_loader is not None:
            return self.bn_loader
        if self.bn_inputs is None:
            raise ValueError("the averaged model has BatchNorm layers but SnapshotAveraging got no data to recalibrate "
                             "them; pass bn_loader= (e.g. the training DataLoader) or bn_inputs= (the training inputs)")
        return training_batches(self.bn_inputs, self.batch_size, self.seed + self.weights.count, self.bn_transform)

    def _recalibrate_if_pending(self) -> None:
        if not self.bn_pending:
            return
        model = self.weights._averaged
        if has_batchnorm(model):
            recalibrate_batchnorm(model, self._bn_batches())
        self.bn_pending = False

    @property
    def count(self) -> int:
        """Number of snapshots folded so far."""
        return (self.weights or self.ensemble).count

    def state_dict(self) -> dict[str, Any]:
        return {"weights": self.weights.state_dict() if self.weights else None, "ensemble": self.ensemble.state_dict() if self.ensemble else None,
                "bn_pending": self.bn_pending}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.bn_pending = bool(state.get("bn_pending", False))  # older states were recalibrated at every fold
        if self.weights is not None:
            self.weights.load_state_dict(state["weights"])
        if self.ensemble is not None:
            self.ensemble.load_state_dict(state["ensemble"])
