"""SparseTrainingCallback: RigL / CigL in a LightningModule gives the library loop's masks and weights."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

L = pytest.importorskip("lightning")

from cigl_bayes.cigl import RandomMask, SnapshotAveraging, mask_update_by_z  # noqa: E402
from cigl_bayes.integrations import SparseTrainingCallback  # noqa: E402
from cigl_bayes.sparse import DropSchedule, SparseNet, TopologyUpdater  # noqa: E402
from cigl_bayes.train import Trainer  # noqa: E402

EPOCHS, BATCH, UPDATE_EVERY, AVERAGE_FROM = 6, 32, 4, 4


def _data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (256,), generator=g)
    x = torch.randn(256, 8, generator=g) + 1.5 * F.one_hot(y, 8).float()
    return TensorDataset(x, y)


def _net(random_mask: bool) -> SparseNet:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3))
    return SparseNet(model, density=0.3, random_mask=RandomMask(0.1, seed=1) if random_mask else None, seed=2)


def _sgd(params) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)


class Classifier(L.LightningModule):
    def __init__(self, net: SparseNet) -> None:
        super().__init__()
        self.net = net

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return _sgd(self.parameters())


def _lightning_run(rule: str, random_mask: bool, loader: DataLoader, **kwargs):
    net = _net(random_mask)
    callback = SparseTrainingCallback(rule=rule, update_every=UPDATE_EVERY, average_from_epoch=AVERAGE_FROM, **kwargs)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, max_epochs=EPOCHS, callbacks=[callback])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(num_workers|does not have many workers).*")
        trainer.fit(Classifier(net), loader)
    return net, callback


def _library_run(rule: str, random_mask: bool, loader: DataLoader, mask_momentum: bool = False):
    net = _net(random_mask)
    opt = _sgd(net.parameters())
    updater = TopologyUpdater(net, opt, DropSchedule.for_run(EPOCHS * len(loader), UPDATE_EVERY), rule)
    averaging = SnapshotAveraging(net, AVERAGE_FROM, bn_loader=loader)
    Trainer(net, opt, loader, EPOCHS, gate=updater, hooks=[averaging], progress=False,
            step_wrapper=mask_update_by_z(net, opt) if mask_momentum else None).fit()
    return net, updater, averaging


def _metrics(model: nn.Module, data: TensorDataset) -> tuple[float, float]:
    with torch.no_grad():
        logits = model.eval()(data.tensors[0])
    return (logits.argmax(-1) == data.tensors[1]).float().mean().item(), F.cross_entropy(logits, data.tensors[1]).item()


@pytest.mark.parametrize("rule, random_mask", [("rigl", True), ("set", False)])
def test_callback_matches_library_loop(rule: str, random_mask: bool) -> None:
    """Same seeds, same batches: identical supports after every update, weights and averaged model
    equal to float tolerance (measured: bit-identical on CPU), hence equal accuracy / NLL."""
    data = _data()
    loader = DataLoader(data, batch_size=BATCH, shuffle=False)
    ref_net, ref_updater, ref_avg = _library_run(rule, random_mask, loader)
    net, callback = _lightning_run(rule, random_mask, loader)
    assert callback.updater.updates_done == ref_updater.updates_done == len(range(UPDATE_EVERY, int(0.75 * EPOCHS * len(loader)), UPDATE_EVERY))
    assert torch.equal(net.support.flat, ref_net.support.flat)
    assert not torch.equal(net.support.flat, _net(random_mask).support.flat)  # the support did move
    weight_diff = max((a - b).abs().max().item() for a, b in zip(net.parameters(), ref_net.parameters()))
    assert weight_diff <= 1e-6
    averaged, ref_averaged = callback.averaged_model(), ref_avg.averaged_model()
    assert callback.averaging.count == ref_avg.count == EPOCHS - AVERAGE_FROM
    for (name, a), b in zip(averaged.state_dict().items(), ref_averaged.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)
    (acc, nll), (ref_acc, ref_nll) = _metrics(averaged, data), _metrics(ref_averaged, data)
    assert acc == ref_acc and abs(nll - ref_nll) <= 1e-6
    assert acc > 0.6  # it learned something (chance: 1/3)


def test_mask_momentum_matches_library_loop_and_changes_training() -> None:
    """mask_momentum=True gives the library loop's ``step_wrapper=mask_update_by_z`` result, which
    differs from the clean default (dropped entries keep weight and momentum through the step)."""
    loader = DataLoader(_data(), batch_size=BATCH, shuffle=False)
    ref_net, _, _ = _library_run("rigl", True, loader, mask_momentum=True)
    net, callback = _lightning_run("rigl", True, loader, mask_momentum=True)
    clean, _ = _lightning_run("rigl", True, loader)
    assert torch.equal(net.support.flat, ref_net.support.flat)
    assert max((a - b).abs().max().item() for a, b in zip(net.parameters(), ref_net.parameters())) <= 1e-6
    assert max((a - b).abs().max().item() for a, b in zip(net.parameters(), clean.parameters())) > 1e-3
    with pytest.raises(ValueError, match="random mask"):
        _lightning_run("rigl", False, loader, mask_momentum=True)


def test_update_steps_skip_the_optimizer_step() -> None:
    """On a topology-update step no parameter moves except by the update itself (drop -> 0):
    surviving weights keep their values, as in the library loop's ``if updater(): opt.step()``."""
    data = _data()
    loader = DataLoader(data, batch_size=BATCH, shuffle=False)
    seen = {}

    class Probe(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen["before"] = [p.detach().clone() for p in pl_module.parameters()]

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step - 1 == UPDATE_EVERY:  # the first update step
                seen["after"] = [p.detach().clone() for p in pl_module.parameters()]
                seen["before_update"] = seen["before"]

    net = _net(False)
    callback = SparseTrainingCallback(rule="rigl", update_every=UPDATE_EVERY, averaging=False)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, max_epochs=1, callbacks=[callback, Probe()])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(num_workers|does not have many workers).*")
        trainer.fit(Classifier(net), loader)
    for before, after in zip(seen["before_update"], seen["after"]):
        kept = after != 0
        assert torch.equal(after[kept], before[kept])  # nothing stepped: survivors unchanged, others dropped to 0


def test_callback_finds_the_net_or_explains() -> None:
    module = Classifier(_net(False))
    assert SparseTrainingCallback().find_net(module) is module.net
    assert SparseTrainingCallback(net="net").find_net(module) is module.net
    assert SparseTrainingCallback(net=lambda m: m.net).find_net(module) is module.net
    with pytest.raises(TypeError, match="SparseNet"):
        SparseTrainingCallback(net="net.module").find_net(module)
    plain = L.LightningModule()
    plain.model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="0 SparseNet"):
        SparseTrainingCallback().find_net(plain)


@pytest.mark.slow  # ~50 s on a loaded 2-core CPU: 10 epochs of the README's CNN on digits
def test_readme_lightning_snippet_runs(tmp_path: Path, readme_blocks, python_run) -> None:
    code = readme_blocks("### In Lightning")[0]
    result = python_run(code, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    accuracy = float(re.findall(r"tensor\(([0-9.]+)\)", result.stdout)[-1])
    assert accuracy > 0.8, result.stdout


def test_lightning_checkpoint_resume_continues_identically(tmp_path: Path) -> None:
    """Stopped after epoch 3 of 6, saved, resumed from the Lightning checkpoint by a fresh module
    and callback: same support, weights and average as the uninterrupted run (updater step,
    random-mask generator and averaging state travel in the callback's state)."""
    loader = DataLoader(_data(), batch_size=BATCH, shuffle=False)

    class StopAfter(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch == 2:
                trainer.should_stop = True

    def fit(callbacks, module, **kwargs):
        trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, max_epochs=EPOCHS, callbacks=callbacks)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*(num_workers|does not have many workers).*")
            trainer.fit(module, loader, **kwargs)
        return trainer

    first = SparseTrainingCallback(rule="rigl", update_every=UPDATE_EVERY, average_from_epoch=2)
    ref_first = SparseTrainingCallback(rule="rigl", update_every=UPDATE_EVERY, average_from_epoch=2)
    ref_net = _net(True)
    fit([ref_first], Classifier(ref_net))
    trainer = fit([first, StopAfter()], Classifier(_net(True)))
    assert first.averaging.count == 1
    path = tmp_path / "stopped.ckpt"
    trainer.save_checkpoint(path)
    net, resumed = _net(True), SparseTrainingCallback(rule="rigl", update_every=UPDATE_EVERY, average_from_epoch=2)
    fit([resumed], Classifier(net), ckpt_path=path)
    assert resumed.updater.updates_done == ref_first.updater.updates_done > 0
    assert torch.equal(net.support.flat, ref_net.support.flat)
    for a, b in zip(net.parameters(), ref_net.parameters()):
        assert torch.equal(a, b)
    assert resumed.averaging.count == ref_first.averaging.count == EPOCHS - 2
    for a, b in zip(resumed.averaged_model().state_dict().values(), ref_first.averaged_model().state_dict().values()):
        assert torch.equal(a, b)
