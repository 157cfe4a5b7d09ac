"""One training loop for every method: forward, backward, topology update, step, epoch hooks.

What differs between methods (mask updates, random mask, averaging, loss) arrives as parts;
the loop knows no method names. The loss is accumulated on the device and read once per
epoch (no per-step host sync); a non-finite epoch loss stops training with a clear error.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn

from ..data.loader import module_device
from .checkpoint import load_checkpoint, save_checkpoint
from .errors import NonFiniteLossError


class EpochHook(Protocol):
    """Something that acts at the end of each epoch and has resumable state (e.g. averaging)."""

    def on_epoch_end(self, epoch: int) -> None: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class StepGate(Protocol):
    """Decides after ``backward`` whether the optimiser steps (e.g. ``TopologyUpdater``)."""

    def __call__(self) -> bool: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class History:
    """Per-epoch mean training loss and learning rate."""

    loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)


class Trainer:
    """Train ``model`` for ``epochs`` epochs over ``loader``.

    Args:
        model: a plain module or a ``SparseNet``.
        optimizer: its optimiser; ``lr_scheduler`` is stepped once per optimisation step.
        loss_fn: ``loss_fn(model(x), y)`` is minimised, unless ``objective(x, y)`` is given
            (e.g. ``-ELBO / N`` of a Pyro model and guide over ``model``).
        loader: any re-iterable of ``(x, y)`` batches (a ``DeviceLoader``, a
            ``torch.utils.data.DataLoader``, a list); batches not on the model's device are moved
            there (``non_blocking``). ``len(loader)``, if defined, sizes the progress bar. Resume is
            exact only for a loader with ``state_dict`` / ``load_state_dict`` (``DeviceLoader``);
            any other loader restarts its data order on resume (a warning says so).
        gate: optional ``StepGate`` (topology updater) called after each backward.
        hooks: ``EpochHook`` s run at the end of every epoch (averaging, ...); a hook that also
            has ``on_step_end(epoch, step)`` is called after every optimisation step.
        step_wrapper: optional callable wrapping ``optimizer.step`` (e.g. freezing dropped entries).
        checkpoint_path: where the resumable state is written (atomically) every
            ``checkpoint_every`` epochs and at the end; ``None`` disables checkpoints.
        checkpoint_extra: stored in every checkpoint beside the state (e.g. the run config).
        forward_model: module called as ``forward_model(x)`` in training steps instead of
            ``model`` (e.g. a ``DistributedDataParallel`` wrapper of ``model``); state,
            checkpoints and evaluation still use ``model``.
        grad_reducer: called after ``backward`` and before the gate/step (e.g. an all-reduce
            of the gradients when the forward does not go through DDP).
        autocast: a dtype (``torch.bfloat16``) to run the forward and loss of training steps under
            ``torch.autocast``; parameters, gradients and optimiser state stay float32.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loader: Any,
        epochs: int,
        *,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
        objective: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        lr_scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        gate: StepGate | None = None,
        hooks: Sequence[EpochHook] = (),
        step_wrapper: Callable[[Callable[[], Any]], Any] | None = None,
        checkpoint_path: str | os.PathLike | None = None,
        checkpoint_every: int = 1,
        checkpoint_extra: dict[str, Any] | None = None,
        progress: bool = True,
        description: str = "training",
        forward_model: nn.Module | None = None,
        grad_reducer: Callable[[], Any] | None = None,
        autocast: torch.dtype | None = None,
    ) -> None:
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        self.model = model
        self.optimizer = optimizer
        self.loader = loader
        self._loader_warned = False
        self.epochs = epochs
        self.loss_fn = loss_fn
        self.objective = objective
        self.lr_scheduler = lr_scheduler
        self.gate = gate
        self.hooks = list(hooks)
        self.step_wrapper = step_wrapper
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path is not None else None
        self.checkpoint_every = checkpoint_every
        self.checkpoint_extra = dict(checkpoint_extra or {})
        self.progress = progress
        self.description = description
        self.forward_model = forward_model
        self.grad_reducer = grad_reducer
        self.autocast = autocast
        self.epoch = 0
        self.history = History()

    # ------------------------------------------------------------------ the loop
    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One optimisation step; returns the detached loss (no host sync)."""
        self.model.train()
        forward = self.forward_model if self.forward_model is not None else self.model
        with torch.autocast(x.device.type, dtype=self.autocast or torch.bfloat16, enabled=self.autocast is not None):
            loss = self.objective(x, y) if self.objective is not None else self.loss_fn(forward(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_reducer is not None:
            self.grad_reducer()
        if self.gate is None or self.gate():
            if self.step_wrapper is None:
                self.optimizer.step()
            else:
                self.step_wrapper(self.optimizer.step)
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()
        return loss.detach()

    def fit(self, until_epoch: int | None = None) -> History:
        """Train from the current epoch up to ``until_epoch`` (default: all epochs)."""
        stop = self.epochs if until_epoch is None else min(until_epoch, self.epochs)
        steps_per_epoch = _length(self.loader)
        device = module_device(self.model)
        with _progress_bar(self.progress) as bar:
            total_steps = self.epochs * steps_per_epoch if steps_per_epoch is not None else None
            done = self.epoch * steps_per_epoch if steps_per_epoch is not None else 0
            task = bar.add_task(self.description, total=total_steps, completed=done, info="")
            step_hooks = [hook for hook in self.hooks if hasattr(hook, "on_step_end")]
            while self.epoch < stop:
                total, steps = None, 0
                for step, batch in enumerate(self.loader):
                    x, y = _xy_on(batch, device)
                    loss = self.train_step(x, y)
                    steps += 1
                    total = loss if total is None else total + loss
                    for hook in step_hooks:
                        hook.on_step_end(self.epoch, step)
                    bar.advance(task)
                mean_loss = float(total) / steps if total is not None else float("nan")
                if not math.isfinite(mean_loss):
                    raise NonFiniteLossError(
                        f"training loss became {mean_loss} in epoch {self.epoch + 1}; lower the learning rate "
                        "(--lr), check the inputs for NaN/inf, or reduce --drop-rate"
                    )
                self.history.loss.append(mean_loss)
                self.history.lr.append(self.optimizer.param_groups[0]["lr"])
                for hook in self.hooks:
                    hook.on_epoch_end(self.epoch)
                self.epoch += 1
                bar.update(task, info=f"epoch {self.epoch}/{self.epochs} loss {mean_loss:.4f}")
                if self.checkpoint_path is not None and (self.epoch % self.checkpoint_every == 0 or self.epoch == stop):
                    self.save(self.checkpoint_path)
        return self.history

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything a bit-identical resume needs (model, masks, optimiser, RNGs, hooks, position)."""
        random_mask = getattr(self.model, "random_mask", None)
        state = {
            "epoch": self.epoch,
            "history": {"loss": self.history.loss, "lr": self.history.lr},
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict() if self.lr_scheduler is not None else None,
            "gate": self.gate.state_dict() if self.gate is not None else None,
            "hooks": [hook.state_dict() for hook in self.hooks],
            "loader": self.loader.state_dict() if _has_state(self.loader) else None,
            "random_mask": random_mask.state_dict() if random_mask is not None else None,
            "objective": self.objective.state_dict() if hasattr(self.objective, "state_dict") else None,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = state["epoch"]
        self.history = History(list(state["history"]["loss"]), list(state["history"]["lr"]))
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.lr_scheduler is not None and state["lr_scheduler"] is not None:
            self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        if self.gate is not None and state["gate"] is not None:
            self.gate.load_state_dict(state["gate"])
        for hook, hook_state in zip(self.hooks, state["hooks"]):
            hook.load_state_dict(hook_state)
        if _has_state(self.loader) and state.get("loader") is not None:
            self.loader.load_state_dict(state["loader"])
        elif not self._loader_warned:
            self._loader_warned = True
            warnings.warn(f"{type(self.loader).__name__} has no saved state (state_dict/load_state_dict): the resumed run "
                          "restarts the loader's data order, so it is not bit-identical to an uninterrupted run; "
                          "use cigl_bayes.data.DeviceLoader for an exact resume", stacklevel=2)
        random_mask = getattr(self.model, "random_mask", None)
        if random_mask is not None and state["random_mask"] is not None:
            random_mask.load_state_dict(state["random_mask"])
        if hasattr(self.objective, "load_state_dict") and state.get("objective") is not None:
            self.objective.load_state_dict(state["objective"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])

    def save(self, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
        """Atomically write the resumable state (plus ``extra``, e.g. the run config)."""
        return save_checkpoint({**self.state_dict(), **self.checkpoint_extra, **(extra or {})}, path)

    def resume(self, path: str | os.PathLike) -> None:
        """Restore a state written by ``save``; training continues where it stopped."""
        self.load_state_dict(load_checkpoint(path, map_location=next(self.model.parameters()).device))


def _length(loader: Any) -> int | None:
    """``len(loader)`` if it has one (an iterable-style ``DataLoader`` may raise ``TypeError``)."""
    try:
        return len(loader)
    except TypeError:
        return None


def _has_state(loader: Any) -> bool:
    return callable(getattr(loader, "state_dict", None)) and callable(getattr(loader, "load_state_dict", None))


def _xy_on(batch: Any, device: torch.device | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` of a loader's batch, moved to ``device`` if not there (no copy if they are)."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise TypeError(f"the training loader must yield (x, y) pairs; got {type(batch).__name__}"
                        + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
                        + " -- wrap the dataset so that each item is (input, target)")
    x, y = batch
    if device is None:
        return x, y
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def _progress_bar(enabled: bool) -> Progress:
    """A rich progress bar on stderr (stdout stays for results, also when redirected)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
        transient=False,
    )

