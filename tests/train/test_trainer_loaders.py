"""Trainer with any loader: a torch DataLoader, a list, an iterable without len; resume with and
without loader state; the runner's final model reads the lazily recalibrated average."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from cigl_bayes.cigl import training_batches
from cigl_bayes.data import DeviceLoader
from cigl_bayes.methods import assemble
from cigl_bayes.runner import final_model
from cigl_bayes.train import Trainer, build_sgd


def _xy(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 5, generator=g), torch.randint(0, 3, (n,), generator=g)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def _train(loader, epochs: int = 2, **kwargs) -> Trainer:
    model = _model()
    trainer = Trainer(model, build_sgd(model, 0.1), loader, epochs, progress=False, **kwargs)
    trainer.fit()
    return trainer


class _NoLen:
    """An iterable of batches with neither ``__len__`` nor state."""

    def __init__(self, batches) -> None:
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)


class _Stream(IterableDataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __iter__(self):
        return zip(self.x, self.y)


def test_any_loader_trains_like_device_loader() -> None:
    """The same batches from a DataLoader, a list, a len-less iterable or a DataLoader over an
    IterableDataset (len() raises) give the weights and loss history of the DeviceLoader."""
    x, y = _xy()
    reference = _train(DeviceLoader(x, y, 16, shuffle=False))
    batches = list(zip(x.split(16), y.split(16)))
    for loader in (DataLoader(TensorDataset(x, y), batch_size=16), batches, _NoLen(batches),
                   DataLoader(_Stream(x, y), batch_size=16)):
        trainer = _train(loader)
        assert trainer.history.loss == reference.history.loss, type(loader).__name__
        for a, b in zip(trainer.model.state_dict().values(), reference.model.state_dict().values()):
            assert torch.equal(a, b)


def test_loader_must_yield_pairs() -> None:
    x, y = _xy()
    with pytest.raises(TypeError, match=r"\(x, y\) pairs"):
        _train([(x, y, y)])
    with pytest.raises(TypeError, match=r"\(x, y\) pairs"):
        _train([x])


class _Rotating:
    """Yields its batches rotated by the number of epochs it has served: a data order that
    changes every epoch, restorable only through ``state_dict``."""

    def __init__(self, batches) -> None:
        self.batches, self.epoch = batches, 0

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        k = self.epoch % len(self.batches)
        self.epoch += 1
        return iter(self.batches[k:] + self.batches[:k])


class _StatefulRotating(_Rotating):
    def state_dict(self) -> dict:
        return {"epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = state["epoch"]


@pytest.mark.parametrize("stateful", [True, False])
def test_resume_exact_with_loader_state_else_warns_once(stateful: bool, tmp_path: Path) -> None:
    x, y = _xy()
    batches = list(zip(x.split(16), y.split(16)))
    kind = _StatefulRotating if stateful else _Rotating
    reference = _train(kind(batches), epochs=4)
    path = tmp_path / "checkpoint.pt"
    model = _model()
    first = Trainer(model, build_sgd(model, 0.1), kind(batches), 4, progress=False, checkpoint_path=path)
    first.fit(until_epoch=2)
    model = _model()
    resumed = Trainer(model, build_sgd(model, 0.1), kind(batches), 4, progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed.resume(path)
        resumed.resume(path)  # warned once per trainer
    notes = [w for w in caught if "restarts the loader's data order" in str(w.message)]
    assert len(notes) == (0 if stateful else 1)
    resumed.fit()
    same = all(torch.equal(a, b) for a, b in zip(resumed.model.state_dict().values(), reference.model.state_dict().values()))
    assert same == stateful  # without state the resumed epochs see another order: not bit-identical
    assert resumed.history.loss[:2] == reference.history.loss[:2]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_batches_are_moved_to_the_model_device() -> None:
    x, y = _xy()
    model = _model().cuda()
    loader = DataLoader(TensorDataset(x, y), batch_size=16, pin_memory=True)
    trainer = Trainer(model, build_sgd(model, 0.1), loader, 2, progress=False)
    trainer.fit()
    cpu = _train(DataLoader(TensorDataset(x, y), batch_size=16))
    for a, b in zip(trainer.model.state_dict().values(), cpu.model.state_dict().values()):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-4, atol=1e-5)


def test_run_reads_the_average_through_one_lazy_recalibration(tiny_config, digits_data, monkeypatch) -> None:
    """In a CigL run BN is recomputed once -- when the runner reads the final model -- and the
    statistics are those the eager pass after the last fold computed."""
    import cigl_bayes.cigl.averaging as averaging_module

    calls, original = [], averaging_module.recalibrate_batchnorm
    monkeypatch.setattr(averaging_module, "recalibrate_batchnorm", lambda *a, **k: calls.append(1) or original(*a, **k))
    config = tiny_config("cigl", optim__epochs=4, averaging__start_fraction=0.25)
    parts = assemble(config, digits_data, None, progress=False)
    parts.trainer.fit()
    averaging = parts.averaging
    assert calls == [] and averaging.count == 3 and averaging.bn_pending
    eager = copy.deepcopy(averaging.weights._averaged)
    original(eager, training_batches(averaging.bn_inputs, averaging.batch_size, averaging.seed + averaging.count, averaging.bn_transform))
    model = final_model(parts)
    assert len(calls) == 1 and final_model(parts) is model and len(calls) == 1
    assert any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    for (name, a), b in zip(model.state_dict().items(), eager.state_dict().values()):
        assert torch.equal(a, b), name
