"""RigL / SET / CigL sparse training inside a Lightning ``LightningModule``, as a callback.

The user's module holds a :class:`~cigl_bayes.sparse.SparseNet` (the random mask ``Z`` of CigL,
if any, is part of it) and trains it with automatic optimisation as usual. The callback adds what
the library loop (:class:`cigl_bayes.train.Trainer`) adds around each step::

    loss.backward()                  # Lightning's closure; the SparseNet captured dense grads
    if updater():                    # on_before_optimizer_step: topology update, if due
        optimizer.step()             # skipped on update steps: every gradient is set to None

and, at epoch (or step) ends, weight-and-mask averaging with lazy BN recalibration, so it
gives the same supports and weights as the library loop on the same batches. Setting the
gradients to ``None`` skips the step for every ``torch.optim`` optimiser (parameters without a
gradient are not touched: no momentum, no weight decay); the lr schedule advances as in the
library loop, where the scheduler steps on skipped steps too.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

try:
    from lightning.pytorch import Callback, LightningModule, Trainer
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError("cigl_bayes.integrations.lightning needs Lightning: pip install 'cigl-bayes[lightning]'") from error

from ..cigl.averaging import SnapshotAveraging
from ..cigl.random_mask import ZMaskedUpdate
from ..sparse import DropSchedule, SparseNet, TopologyUpdater
from ..train.distributed import all_reduce_mean_

__all__ = ["SparseTrainingCallback"]


class SparseTrainingCallback(Callback):
    """Sparse training (RigL / SET / static support) and weight averaging for a ``LightningModule``.

    Args:
        net: how to find the ``SparseNet`` in the module: an attribute path (``"backbone.net"``),
            a getter ``f(pl_module) -> SparseNet``, or ``None`` (the only ``SparseNet`` among
            ``pl_module.modules()``).
        rule: ``"rigl"`` (gradient growth), ``"set"`` (random growth) or ``"static"``.
        update_every, drop_fraction, end_fraction: the topology schedule,
            ``DropSchedule.for_run(trainer.estimated_stepping_batches, update_every, ...)``.
        seed: seeds SET's growth.
        average_from_epoch: first (0-based) epoch whose end is folded into the weight average;
            ``None``: ``int(0.8 * max_epochs)`` (at most the last epoch); ``averaging=False``
            turns averaging off.
        snapshots_per_epoch, sample_mask: as in :class:`~cigl_bayes.cigl.SnapshotAveraging`.
        bn_loader: batches for the (lazy, once) BN recalibration of the average; ``None``: the
            trainer's training dataloader.
        mask_momentum: CigL's "mask momentum by Z" option (``RandomMaskConfig.mask_momentum``,
            :class:`~cigl_bayes.cigl.ZMaskedUpdate`): entries the random mask dropped keep their
            weight and momentum through the step. Needs a ``SparseNet`` with a random mask.

    After ``trainer.fit``, :meth:`averaged_model` is the averaged, BN-recalibrated plain module.
    Needs automatic optimisation with one optimiser and ``accumulate_grad_batches=1``.
    Resumable: the callback's state (updater, averaging, random-mask generator) is saved in
    Lightning checkpoints.
    """

    def __init__(
        self,
        net: str | Callable[[LightningModule], SparseNet] | None = None,
        *,
        rule: str = "rigl",
        update_every: int = 100,
        drop_fraction: float = 0.3,
        end_fraction: float = 0.75,
        seed: int = 0,
        averaging: bool = True,
        average_from_epoch: int | None = None,
        snapshots_per_epoch: int = 1,
        sample_mask: bool = True,
        bn_loader: Iterable[Any] | None = None,
        mask_momentum: bool = False,
    ) -> None:
        super().__init__()
        self.net_ref = net
        self.rule = rule
        self.update_every = update_every
        self.drop_fraction = drop_fraction
        self.end_fraction = end_fraction
        self.seed = seed
        self.use_averaging = averaging
        self.average_from_epoch = average_from_epoch
        self.snapshots_per_epoch = snapshots_per_epoch
        self.sample_mask = sample_mask
        self.bn_loader = bn_loader
        self.mask_momentum = mask_momentum
        self.net: SparseNet | None = None
        self.z_update: ZMaskedUpdate | None = None
        self.updater: TopologyUpdater | None = None
        self.averaging: SnapshotAveraging | None = None
        self._restored: dict[str, Any] | None = None

    # ------------------------------------------------------------------ set-up
    def find_net(self, pl_module: LightningModule) -> SparseNet:
        """The ``SparseNet`` named by ``net`` (see the class doc)."""
        if self.net_ref is None:
            nets = [m for m in pl_module.modules() if isinstance(m, SparseNet)]
            if len(nets) != 1:
                raise ValueError(f"{type(pl_module).__name__} holds {len(nets)} SparseNet modules; "
                                 "pass SparseTrainingCallback(net='attribute.path') or a getter to name one")
            return nets[0]
        net = self.net_ref(pl_module) if callable(self.net_ref) else operator.attrgetter(self.net_ref)(pl_module)
        if not isinstance(net, SparseNet):
            raise TypeError(f"SparseTrainingCallback(net={self.net_ref!r}) found a {type(net).__name__}, not a SparseNet; "
                            "wrap the model: SparseNet(model, density=...)")
        return net

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not pl_module.automatic_optimization:
            raise ValueError("SparseTrainingCallback needs automatic optimisation; with manual optimisation call a "
                             "cigl_bayes.sparse.TopologyUpdater yourself (`if updater(): opt.step()`)")
        if len(trainer.optimizers) != 1:
            raise ValueError(f"SparseTrainingCallback needs exactly one optimiser, got {len(trainer.optimizers)}")
        if trainer.accumulate_grad_batches != 1:
            raise ValueError("SparseTrainingCallback needs accumulate_grad_batches=1 (RigL grows from the gradient "
                             "of one batch); use a larger batch instead")
        total_steps = trainer.estimated_stepping_batches
        if not isinstance(total_steps, int) and not float(total_steps).is_integer():
            raise ValueError("the topology schedule needs a finite run: set max_epochs or max_steps of the Trainer")
        self.net = self.find_net(pl_module)
        if self.mask_momentum and self.net.random_mask is None:
            raise ValueError("mask_momentum=True masks the update by the random mask Z, but this SparseNet has none: "
                             "SparseNet(model, density, random_mask=RandomMask(...)) or mask_momentum=False")
        self.z_update = ZMaskedUpdate(self.net, trainer.optimizers[0]) if self.mask_momentum else None
        # a restored checkpoint's state, else (a second fit) the previous fit's: the step count goes on
        previous = self._restored.get("updater") if self._restored is not None else (
            self.updater.state_dict() if self.updater is not None else None)
        schedule = DropSchedule.for_run(int(total_steps), self.update_every, self.drop_fraction, self.end_fraction)
        self.updater = TopologyUpdater(self.net, trainer.optimizers[0], schedule, self.rule, seed=self.seed,
                                       reduce_grads=all_reduce_mean_)
        if previous is not None:
            self.updater.load_state_dict(previous)
        if self._restored is not None and self._restored.get("random_mask") is not None and self.net.random_mask is not None:
            self.net.random_mask.load_state_dict(self._restored["random_mask"])

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.use_averaging or self.averaging is not None:
            return
        epochs = trainer.max_epochs
        start = self.average_from_epoch
        if start is None:
            if epochs is None or epochs < 1:
                raise ValueError("set average_from_epoch= (or max_epochs of the Trainer) for weight averaging")
            start = min(epochs - 1, int(0.8 * epochs))
        steps = trainer.num_training_batches
        bn_loader = self.bn_loader if self.bn_loader is not None else trainer.train_dataloader
        self.averaging = SnapshotAveraging(self.net, start, mode="weights", sample_mask=self.sample_mask,
                                           snapshots_per_epoch=self.snapshots_per_epoch,
                                           steps_per_epoch=int(steps) if float(steps).is_integer() else 1,
                                           bn_loader=bn_loader)
        if self._restored is not None and self._restored.get("averaging") is not None:
            self.averaging.load_state_dict(self._restored["averaging"])
        self._restored = None

    # ------------------------------------------------------------------ per step / epoch
    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: torch.optim.Optimizer) -> None:
        """After backward: the topology update, if due; on update steps the step is skipped."""
        if self.updater is None or self.updater():
            if self.z_update is not None:
                self.z_update.save()
            return
        for group in optimizer.param_groups:
            for param in group["params"]:
                param.grad = None

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.z_update is not None:  # after the optimiser step
            self.z_update.restore()
        if self.averaging is not None:
            self.averaging.on_step_end(trainer.current_epoch, batch_idx)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.averaging is not None:
            self.averaging.on_epoch_end(trainer.current_epoch)

    # ------------------------------------------------------------------ results and state
    def averaged_model(self) -> nn.Module:
        """The weight-averaged plain module, BN statistics recomputed (once) if it changed."""
        if self.averaging is None:
            raise ValueError("no weight average: run trainer.fit with SparseTrainingCallback(averaging=True) first")
        if self.averaging.count == 0:
            raise ValueError(f"no snapshot was folded: training stopped before average_from_epoch={self.averaging.start_epoch}")
        return self.averaging.averaged_model()

    def state_dict(self) -> dict[str, Any]:
        random_mask = getattr(self.net, "random_mask", None)
        return {
            "updater": self.updater.state_dict() if self.updater is not None else None,
            "averaging": self.averaging.state_dict() if self.averaging is not None else None,
            "random_mask": random_mask.state_dict() if random_mask is not None else None,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Kept until ``fit`` builds the updater and the averaging, then applied to them."""
        self._restored = dict(state_dict)
        self.averaging = None
