"""The per-epoch log: OUT/epochs.csv written as training runs, resumed without duplicates, TensorBoard."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from cigl_bayes.data import DeviceLoader
from cigl_bayes.train import Trainer, build_sgd
from cigl_bayes.train.epoch_log import CSV_NAME, TENSORBOARD_DIR, attach_epoch_log, moon_values


def _trainer(out: Path, epochs: int = 4) -> Trainer:
    """A small classifier on fixed data, with a per-epoch lr decay (so the lr column varies)."""
    torch.manual_seed(0)
    x = torch.randn(64, 5)
    y = (x @ torch.arange(5.0) > 0).long()
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 2))
    optimizer = build_sgd(model, 0.1, 0.9, True, 0.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=4, gamma=0.5)  # per step: 4 steps per epoch
    loader = DeviceLoader(x, y, 16, shuffle=True, drop_last=True, seed=0)
    return Trainer(model, optimizer, loader, epochs, lr_scheduler=scheduler, checkpoint_path=out / "checkpoint.pt",
                   progress=False)


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / CSV_NAME).open(newline="") as handle:
        return list(csv.DictReader(handle))


class _RowCounter:
    """A hook after the log: how many rows a reader (``tail -f``) sees at each epoch's end."""

    def __init__(self, path: Path) -> None:
        self.path, self.seen = path, []

    def on_epoch_end(self, epoch: int) -> None:
        self.seen.append(len(self.path.read_text().splitlines()) - 1)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def test_one_row_per_epoch_with_the_history_values_written_as_training_runs(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path)
    log = attach_epoch_log(trainer, tmp_path)
    counter = _RowCounter(tmp_path / CSV_NAME)
    trainer.hooks.append(counter)
    history = trainer.fit()
    log.close()
    rows = _rows(tmp_path)
    assert list(rows[0]) == ["epoch", "train_loss", "lr", "elapsed_s"]
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert [float(r["train_loss"]) for r in rows] == history.loss  # exact: written at full precision
    assert [float(r["lr"]) for r in rows] == history.lr == [0.05, 0.025, 0.0125, 0.00625]
    elapsed = [float(r["elapsed_s"]) for r in rows]
    assert elapsed == sorted(elapsed) and elapsed[0] >= 0
    assert counter.seen == [1, 2, 3, 4]  # each row is on disk when its epoch ends


def test_a_resumed_run_continues_the_file_without_duplicating_epochs(tmp_path: Path) -> None:
    first = _trainer(tmp_path)
    attach_epoch_log(first, tmp_path)
    first.fit(until_epoch=2)  # checkpoint at epoch 2
    with (tmp_path / CSV_NAME).open("a") as handle:  # a killed session logged epoch 3, then died before its checkpoint
        handle.write("3,9.9,0.1,99.0\n")
    before = [float(r["elapsed_s"]) for r in _rows(tmp_path)]

    resumed = _trainer(tmp_path)
    log = attach_epoch_log(resumed, tmp_path)
    resumed.resume(tmp_path / "checkpoint.pt")
    history = resumed.fit()
    log.close()
    rows = _rows(tmp_path)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert [float(r["train_loss"]) for r in rows] == history.loss  # the checkpoint's epochs, then the new ones
    assert float(rows[2]["train_loss"]) != 9.9
    elapsed = [float(r["elapsed_s"]) for r in rows]
    assert elapsed[:2] == before[:2] and elapsed[2] >= elapsed[1]  # the clock continues from the checkpoint

    uninterrupted = _trainer(tmp_path / "full")
    assert uninterrupted.fit().loss == history.loss


def test_a_fresh_run_into_an_old_folder_starts_the_file_over(tmp_path: Path) -> None:
    (tmp_path / CSV_NAME).write_text("epoch,train_loss,lr,elapsed_s\n1,5.0,0.1,1.0\n2,4.0,0.1,2.0\n")
    trainer = _trainer(tmp_path, epochs=1)
    log = attach_epoch_log(trainer, tmp_path)
    trainer.fit()
    log.close()
    rows = _rows(tmp_path)
    assert len(rows) == 1 and float(rows[0]["train_loss"]) == trainer.history.loss[0]


def test_tensorboard_scalars_match_the_history(tmp_path: Path) -> None:
    pytest.importorskip("torch.utils.tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = _trainer(tmp_path, epochs=3)
    log = attach_epoch_log(trainer, tmp_path)
    history = trainer.fit()
    log.close()
    events = EventAccumulator(str(tmp_path / TENSORBOARD_DIR))
    events.Reload()
    loss = events.Scalars("train/train_loss")
    assert [e.step for e in loss] == [1, 2, 3]
    assert [e.value for e in loss] == pytest.approx(history.loss, rel=1e-6)  # float32 in the event file
    assert [e.value for e in events.Scalars("train/lr")] == pytest.approx(history.lr, rel=1e-6)


def test_without_tensorboard_only_the_csv_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    trainer = _trainer(tmp_path, epochs=2)
    attach_epoch_log(trainer, tmp_path)
    trainer.fit()
    assert len(_rows(tmp_path)) == 2
    assert not (tmp_path / TENSORBOARD_DIR).exists()


def test_extra_columns_from_moon_diagnostics(tmp_path: Path) -> None:
    class Diagnostics:  # the history layout of cigl_bayes.ood.diagnostics.MoonDiagnostics
        def __init__(self) -> None:
            self.history = {"epoch": [], "alpha": [], "train_error": [], "pushes_unknown_up": [],
                            "mean_q": {"train": [], "test": []}}

        def on_epoch_end(self, epoch: int) -> None:
            h = self.history
            h["epoch"].append(epoch + 1)
            h["alpha"].append(0.5 * epoch)
            h["train_error"].append(0.1)
            h["pushes_unknown_up"].append(1.0)
            h["mean_q"]["train"].append(0.01 * epoch)
            h["mean_q"]["test"].append(0.02 * epoch)

        def state_dict(self) -> dict:
            return {}

        def load_state_dict(self, state: dict) -> None:
            pass

    trainer = _trainer(tmp_path, epochs=2)
    diagnostics = Diagnostics()
    trainer.hooks.append(diagnostics)
    log = attach_epoch_log(trainer, tmp_path, diagnostics)  # after the diagnostics: it sees this epoch's entry
    trainer.fit()
    log.close()
    rows = _rows(tmp_path)
    assert list(rows[0])[4:] == ["alpha", "train_error", "pushes_unknown_up", "mean_q_train", "mean_q_test"]
    assert [float(r["alpha"]) for r in rows] == [0.0, 0.5] and [float(r["mean_q_test"]) for r in rows] == [0.0, 0.02]
    assert moon_values(diagnostics)() == {"alpha": 0.5, "train_error": 0.1, "pushes_unknown_up": 1.0,
                                             "mean_q_train": 0.01, "mean_q_test": 0.02}
