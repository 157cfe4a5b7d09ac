"""The per-epoch log of a run folder: ``OUT/epochs.csv`` and TensorBoard scalars, written as training runs.

An epoch hook (``Trainer(hooks=...)``): at the end of every epoch it appends one row -- epoch
(1-based), mean training loss, lr, elapsed training seconds, and any values ``extra()`` gives
(e.g. the MOON diagnostics) -- to ``epochs.csv`` and flushes it, so ``tail -f OUT/epochs.csv``
follows the run. It reads the loss and lr the trainer already holds on the host (no extra sync).
A resumed run keeps the rows of the epochs its checkpoint holds and rewrites the rest (none are
duplicated); the elapsed time continues from the checkpoint. With the ``tensorboard`` package the
same scalars go to ``OUT/tensorboard/`` (``tensorboard --logdir OUT``); without it they are skipped.
"""

from __future__ import annotations

import csv
import io
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..atomic import write_text_atomic

CSV_NAME = "epochs.csv"
TENSORBOARD_DIR = "tensorboard"


class EpochLog:
    """Append ``trainer``'s last epoch to ``out_dir/epochs.csv`` (and TensorBoard) at each epoch end.

    Args:
        trainer: the ``Trainer`` whose ``history`` (loss, lr) is logged; the hook reads
            ``trainer.history`` at each epoch end (a resume replaces that object).
        out_dir: the run folder.
        extra: called at each epoch end (after the trainer's earlier hooks); its scalars are
            further columns (fixed by the first row this process writes).
        tensorboard: also write TensorBoard scalars when ``torch.utils.tensorboard`` imports.
    """

    def __init__(self, trainer: Any, out_dir: str | os.PathLike, extra: Callable[[], Mapping[str, float]] | None = None,
                 tensorboard: bool = True) -> None:
        self.trainer = trainer
        self.path = Path(out_dir) / CSV_NAME
        self.tensorboard_dir = Path(out_dir) / TENSORBOARD_DIR
        self.extra = extra
        self.tensorboard = tensorboard
        self.columns: list[str] | None = None
        self._writer: Any = None
        self._elapsed_before = 0.0
        self._start = time.perf_counter()

    def elapsed(self) -> float:
        """Seconds of training so far, over every session of a resumed run."""
        return self._elapsed_before + time.perf_counter() - self._start

    def on_epoch_end(self, epoch: int) -> None:
        history = self.trainer.history
        row: dict[str, Any] = {"epoch": epoch + 1, "train_loss": history.loss[-1], "lr": history.lr[-1],
                               "elapsed_s": round(self.elapsed(), 3)}
        if self.extra is not None:
            row.update({k: v for k, v in self.extra().items() if k not in row})
        if self.columns is None:
            self._start_file(epoch, list(row))
        with self.path.open("a", newline="") as handle:
            csv.DictWriter(handle, self.columns, extrasaction="ignore", restval="").writerow(row)
            handle.flush()
        if self._writer is not None:
            for name, value in row.items():
                if name != "epoch" and isinstance(value, (int, float)):
                    self._writer.add_scalar(f"train/{name}", value, epoch + 1)
            self._writer.flush()

    def _start_file(self, epoch: int, columns: list[str]) -> None:
        """Keep the rows of epochs ``1..epoch`` already in the file (a resumed run's), drop later
        ones (a killed session may have logged an epoch its checkpoint lacks); write the header."""
        self.columns = columns
        kept: list[dict[str, str]] = []
        if epoch > 0 and self.path.is_file():
            with self.path.open(newline="") as handle:
                kept = [r for r in csv.DictReader(handle) if _epoch(r) is not None and _epoch(r) <= epoch]
        text = io.StringIO()
        writer = csv.DictWriter(text, columns, extrasaction="ignore", restval="")
        writer.writeheader()
        writer.writerows(kept)
        write_text_atomic(self.path, text.getvalue())
        if self.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # the tensorboard package is optional
                self.tensorboard = False
            else:  # purge_step hides events a killed session logged past the checkpoint
                self._writer = SummaryWriter(str(self.tensorboard_dir), purge_step=epoch + 1)

    def close(self) -> None:
        """Close the TensorBoard writer (the CSV is closed after every row)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def state_dict(self) -> dict[str, Any]:
        return {"elapsed_s": self.elapsed()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._elapsed_before = float(state.get("elapsed_s", 0.0))
        self._start = time.perf_counter()


def _epoch(row: Mapping[str, str]) -> int | None:
    try:
        return int(row.get("epoch") or "")
    except ValueError:
        return None


def moon_values(diagnostics: Any) -> Callable[[], dict[str, float]]:
    """The last epoch of a ``MoonDiagnostics`` history as columns: ``alpha``, ``train_error``,
    ``pushes_unknown_up`` and ``mean_q_<set>`` (mean unknown-class probability per set)."""
    def values() -> dict[str, float]:
        h = diagnostics.history
        if not h["epoch"]:
            return {}
        row = {k: h[k][-1] for k in ("alpha", "train_error", "pushes_unknown_up")}
        row.update({f"mean_q_{name}": column[-1] for name, column in h["mean_q"].items() if column and column[-1] is not None})
        return row

    return values


def attach_epoch_log(trainer: Any, out_dir: str | os.PathLike, diagnostics: Any = None) -> EpochLog:
    """An ``EpochLog`` of ``trainer`` into ``out_dir``, appended to its hooks (last: it sees the
    other hooks' values of the epoch; older checkpoints without its state still resume)."""
    log = EpochLog(trainer, out_dir, moon_values(diagnostics) if diagnostics is not None else None)
    trainer.hooks.append(log)
    return log
