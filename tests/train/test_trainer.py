"""The training loop: bit-identical resume from a checkpoint, and non-finite losses."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cigl_bayes.data import DeviceLoader
from cigl_bayes.evaluate import evaluate_log_probs
from cigl_bayes.methods import assemble
from cigl_bayes.runner import final_model, final_predictions, run
from cigl_bayes.sparse import SparseNet
from cigl_bayes.train import NonFiniteLossError, Trainer, build_sgd, load_checkpoint



def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}"))
        return out
    if isinstance(value, (list, tuple)):
        out = {}
        for i, v in enumerate(value):
            out.update(_flatten(v, f"{prefix}[{i}]"))
        return out
    return {prefix: value}


def _differences(a: Any, b: Any) -> list[str]:
    """Keys whose values differ (tensors by torch.equal, i.e. bit-identical)."""
    fa, fb = _flatten(a), _flatten(b)
    if fa.keys() != fb.keys():
        return sorted(set(fa) ^ set(fb))
    bad = []
    for key, x in fa.items():
        y = fb[key]
        if torch.is_tensor(x):
            if not (torch.is_tensor(y) and x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y)):
                bad.append(key)
        elif isinstance(x, float) and math.isnan(x):
            if not (isinstance(y, float) and math.isnan(y)):
                bad.append(key)
        elif x != y:
            bad.append(key)
    return bad


RESUME_CASES = {
    # RigL: topology updates both before and after the interruption (T_end = 0.75 * 32 steps = 24).
    "rigl": {},
    # CigL: random mask Z with its own generator + weight averaging started (epoch 1) before the cut (epoch 2).
    "cigl": {"averaging__start_fraction": 0.25},
    # MC-dropout baseline: unit dropout draws from the global torch RNG.
    "rigl-mcdrop": {"model__dropout": 0.3},
    # MOON: the alpha tuner's EWMA and step counter (warm-up ends before the cut) + averaging.
    "moon": {"moon__warmup_epochs": 1, "averaging__start_fraction": 0.25},
    # CigL by SVI: Pyro's sampling uses the global torch RNG.
    "cigl-svi": {"averaging__start_fraction": 0.25},
}


@pytest.mark.parametrize("method", list(RESUME_CASES))
def test_resume_is_bit_identical(method: str, tiny_config, digits_data, tmp_path: Path) -> None:
    epochs, cut = 4, 2
    config = tiny_config(method, optim__epochs=epochs, **RESUME_CASES[method])

    reference = assemble(config, digits_data, None, progress=False)
    reference.trainer.fit()
    # the global RNG is shared by everything in this process: capture the reference's end state now
    reference_state = copy.deepcopy(reference.trainer.state_dict())

    path = tmp_path / "checkpoint.pt"
    first = assemble(config, digits_data, path, progress=False)
    first.trainer.fit(until_epoch=cut)
    assert first.trainer.epoch == cut and len(first.trainer.history.loss) == cut
    saved = load_checkpoint(path)
    assert saved["epoch"] == cut
    if method == "cigl":
        assert first.averaging.count == 1, "averaging must already have started before the interruption"
    at_cut = {k: v.clone() for k, v in first.model.state_dict().items()}
    del first

    torch.manual_seed(12345)  # the global RNG must come from the checkpoint, not from here
    torch.rand(1000)
    resumed = assemble(config, digits_data, path, progress=False)
    resumed.trainer.resume(path)
    assert resumed.trainer.epoch == cut
    history = resumed.trainer.fit()
    resumed_state = copy.deepcopy(resumed.trainer.state_dict())
    assert len(history.loss) == epochs and history.loss == reference.trainer.history.loss

    # training really continued after the resume
    assert any(not torch.equal(at_cut[k], v) for k, v in resumed.model.state_dict().items())

    # everything: parameters, buffers, masks, optimizer state, lr scheduler, updater, hooks, loader, RNGs
    assert _differences(reference_state, resumed_state) == []
    for (na, a), (nb, b) in zip(reference.model.named_parameters(), resumed.model.named_parameters()):
        assert na == nb and torch.equal(a, b), na
    for (na, a), (nb, b) in zip(reference.model.named_buffers(), resumed.model.named_buffers()):
        assert na == nb and torch.equal(a, b), na
    assert isinstance(resumed.model, SparseNet)
    assert torch.equal(reference.model.support.flat, resumed.model.support.flat)
    assert reference.model.support.counts == resumed.model.support.counts
    assert _differences(reference.trainer.optimizer.state_dict(), resumed.trainer.optimizer.state_dict()) == []
    assert reference.trainer.gate.updates_done == resumed.trainer.gate.updates_done > 0
    if method == "cigl":
        assert resumed.averaging.count == reference.averaging.count == epochs - 1
        assert _differences(final_model(reference).state_dict(), final_model(resumed).state_dict()) == []
    if method == "rigl-mcdrop":
        assert any(isinstance(m, nn.Dropout) for m in resumed.model.modules())
        # dropout consumed the global RNG identically in both runs
        assert torch.equal(resumed_state["torch_rng"], reference_state["torch_rng"])

    # evaluate each from its own end-of-training RNG state (MC dropout samples the global RNG)
    torch.set_rng_state(reference_state["torch_rng"])
    probs_ref, notes_ref = final_predictions(reference, config, digits_data)
    torch.set_rng_state(resumed_state["torch_rng"])
    probs_res, notes_res = final_predictions(resumed, config, digits_data)
    assert notes_ref == notes_res
    for split in ("val", "test"):
        assert torch.equal(probs_ref[split], probs_res[split]), split
    assert evaluate_log_probs(probs_ref["test"], digits_data.y_test) == evaluate_log_probs(probs_res["test"], digits_data.y_test)


def test_fit_until_epoch_writes_checkpoint_each_epoch(tiny_config, digits_data, tmp_path: Path) -> None:
    path = tmp_path / "ck.pt"
    parts = assemble(tiny_config("static", optim__epochs=3), digits_data, path, progress=False)
    parts.trainer.fit(until_epoch=1)
    assert load_checkpoint(path)["epoch"] == 1
    parts.trainer.fit(until_epoch=99)  # clamped to the configured epochs
    assert parts.trainer.epoch == 3 and load_checkpoint(path)["epoch"] == 3
    assert parts.trainer.fit().loss == parts.trainer.history.loss  # nothing left to do
    assert len(parts.trainer.history.loss) == 3


def _toy_trainer(loss_fn=F.cross_entropy, lr: float = 0.1, checkpoint_path=None) -> Trainer:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 5, generator=g)
    y = torch.randint(0, 3, (64,), generator=g)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    loader = DeviceLoader(x, y, 16, seed=0)
    return Trainer(model, build_sgd(model, lr), loader, 2, loss_fn=loss_fn, checkpoint_path=checkpoint_path, progress=False)


def test_toy_trainer_trains() -> None:
    trainer = _toy_trainer()
    history = trainer.fit()
    assert len(history.loss) == 2 and all(math.isfinite(v) for v in history.loss)
    assert history.loss[1] < history.loss[0]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_loss_raises_with_fix(bad: float, tmp_path: Path) -> None:
    def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y) * bad

    path = tmp_path / "ck.pt"
    trainer = _toy_trainer(loss_fn, checkpoint_path=path)
    with pytest.raises(NonFiniteLossError) as info:
        trainer.fit()
    message = str(info.value)
    assert "--lr" in message and "learning rate" in message
    assert "epoch 1" in message
    assert trainer.history.loss == [] and not path.exists()  # nothing recorded for the bad epoch


def test_single_nan_step_is_caught() -> None:
    calls = {"n": 0}

    def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        loss = F.cross_entropy(logits, y)
        return loss * float("nan") if calls["n"] == 6 else loss  # one bad step in epoch 2

    trainer = _toy_trainer(loss_fn)
    with pytest.raises(NonFiniteLossError, match="epoch 2"):
        trainer.fit()
    assert len(trainer.history.loss) == 1


def test_huge_learning_rate_diverges_with_clear_error(tiny_config) -> None:
    config = tiny_config("rigl", optim__lr=1e10, optim__epochs=2)
    with pytest.raises(NonFiniteLossError, match="--lr"):
        run(config, progress=False)


def test_trainer_rejects_zero_epochs() -> None:
    model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="epochs"):
        Trainer(model, build_sgd(model, 0.1), DeviceLoader(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), 2), 0)


def test_resume_missing_checkpoint(tiny_config, digits_data, tmp_path: Path) -> None:
    parts = assemble(tiny_config("rigl"), digits_data, None, progress=False)
    with pytest.raises(FileNotFoundError, match="--resume"):
        parts.trainer.resume(tmp_path / "none.pt")
