"""Per-epoch diagnostics of unknown-class training (cigl_bayes.ood.diagnostics)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from cigl_bayes.methods import METHODS, assemble
from cigl_bayes.ood.diagnostics import DEFAULT_MAX_EXAMPLES, MoonDiagnostics, unknown_logit_gradient
from cigl_bayes.ood.moon import Q_MAX, moon_loss, unknown_gradient_threshold
from cigl_bayes.runner import run


def _logits_and_labels(dtype: torch.dtype, n: int = 600, k: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ``K+1`` logits mixing correct, wrong-with-small-p_y, q ~ 1 and clamped-q examples."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k + 1, generator=g, dtype=torch.float64) * torch.rand(n, 1, generator=g, dtype=torch.float64).mul(6)
    y = torch.randint(0, k, (n,), generator=g)
    rows = torch.arange(n)
    logits[rows[: n // 6], y[: n // 6]] += 6.0                       # confidently correct
    logits[rows[n // 6: n // 3], -1] += 9.0                           # q near 1 (argmax = unknown: wrong)
    logits[rows[n // 3: n // 3 + 20], -1] += 40.0                     # q above the clamp 1 - 1e-7
    logits[rows[n // 2: 2 * n // 3], y[n // 2: 2 * n // 3]] -= 6.0   # wrong, p_y small
    return logits.to(dtype), y


def _autograd_unknown_gradient(logits: torch.Tensor, y: torch.Tensor, alpha: float) -> torch.Tensor:
    z = logits.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(moon_loss(z, y, alpha) * z.shape[0], z)  # per-example loss gradients
    return grad[:, -1]


@pytest.mark.parametrize("alpha", [0.0, 0.02, 0.5, 1.0, 4.0])
def test_closed_form_unknown_gradient_equals_autograd(alpha: float) -> None:
    logits, y = _logits_and_labels(torch.float64)
    closed = unknown_logit_gradient(logits, y, alpha)
    auto = _autograd_unknown_gradient(logits, y, alpha)
    torch.testing.assert_close(closed, auto, rtol=1e-9, atol=1e-12)
    decided = auto.abs() > 1e-12
    assert torch.equal((closed < 0)[decided], (auto < 0)[decided])
    wrong = logits.argmax(-1) != y
    assert 0 < wrong.sum() < len(y)
    assert not (closed[~wrong] < 0).any(), "correctly classified examples never push the unknown logit up"
    p = logits.softmax(-1)
    q, h = p[:, -1], -p[torch.arange(len(y)), y].log()
    if alpha > 0:  # the spec's threshold decides the sign for misclassified examples below the clamp
        for i in torch.nonzero(wrong & (q < Q_MAX)).flatten().tolist():
            threshold = unknown_gradient_threshold(q[i].item(), alpha)
            if abs(h[i].item() - threshold) > 1e-6 * threshold:
                assert (closed[i] < 0).item() == (h[i].item() > threshold), i
    if alpha == 0.0:  # plain cross-entropy pushes every unknown logit down
        assert (closed > 0).all()
    if alpha >= 0.5:
        assert (closed < 0).any() and (closed > 0).any()


@pytest.mark.parametrize("alpha", [0.3, 1.0])
def test_closed_form_sign_in_float32(alpha: float) -> None:
    logits, y = _logits_and_labels(torch.float32, seed=3)
    closed = unknown_logit_gradient(logits, y, alpha)
    auto = _autograd_unknown_gradient(logits.double(), y, alpha)
    decided = auto.abs() > 1e-6  # away from the sign change (and float32's resolution of p)
    assert decided.float().mean() > 0.8
    assert torch.equal((closed < 0)[decided], (auto < 0)[decided])


def _record_batches(parts) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """Wrap the objective's observer to keep a copy of every training batch's logits, labels and alpha."""
    objective = parts.trainer.objective
    inner = objective.observer
    records: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []

    def recording(logits, y, alpha):
        records.append((logits.clone(), y.clone(), None if alpha is None else alpha.clone()))
        inner(logits, y, alpha)

    objective.observer = recording
    return records


def test_tiny_moon_run_records_each_epoch(tiny_config, digits_data) -> None:
    epochs = 3
    parts = assemble(tiny_config("moon", optim__epochs=epochs), digits_data, None, progress=False)
    diagnostics = parts.extras["moon_diagnostics"]
    assert diagnostics in parts.trainer.hooks
    assert diagnostics.sets["test"].shape[0] == min(DEFAULT_MAX_EXAMPLES, digits_data.x_test.shape[0]) < digits_data.x_test.shape[0]
    records = _record_batches(parts)
    parts.trainer.fit()
    report = diagnostics.report()
    assert report["epoch"] == [1, 2, 3]
    assert set(report["mean_q"]) == {"train", "test"}
    for key in ("alpha", "train_error", "pushes_unknown_up"):
        assert len(report[key]) == epochs and all(0.0 <= v <= 1.0 for v in report[key]), key
    for name, values in report["mean_q"].items():
        assert len(values) == epochs and all(0.0 <= v <= 1.0 for v in values), name

    schedule = parts.trainer.objective.schedule
    warmup = schedule.warmup_epochs
    expected_alpha = [0.0 if e < warmup else schedule.alpha(e).item() for e in range(epochs)]
    assert report["alpha"][:warmup] == [0.0] * warmup
    assert all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(report["alpha"], expected_alpha))

    steps = len(parts.trainer.loader)
    assert len(records) == epochs * steps
    for epoch in range(epochs):
        batch = records[epoch * steps:(epoch + 1) * steps]
        logits = torch.cat([r[0] for r in batch]).double()
        y = torch.cat([r[1] for r in batch])
        alpha = 0.0 if batch[0][2] is None else batch[0][2].item()
        assert math.isclose(report["train_error"][epoch], (logits.argmax(-1) != y).double().mean().item(), rel_tol=1e-6)
        up = (_autograd_unknown_gradient(logits, y, alpha) < 0).double().mean().item()
        assert math.isclose(report["pushes_unknown_up"][epoch], up, rel_tol=1e-6, abs_tol=1e-9)
        assert math.isclose(report["mean_q"]["train"][epoch], logits.softmax(-1)[:, -1].mean().item(), rel_tol=1e-5)
    # the test entry is the current iterate's (eval mode) at the epoch's end: after the last epoch, the final model
    with torch.no_grad():
        parts.model.eval()
        q_test = parts.model(diagnostics.sets["test"]).softmax(-1)[:, -1].mean().item()
    assert math.isclose(report["mean_q"]["test"][-1], q_test, rel_tol=1e-5)


def test_resume_after_epoch_one_gives_identical_diagnostics(tiny_config, digits_data, tmp_path: Path) -> None:
    config = tiny_config("moon", optim__epochs=3)
    reference = assemble(config, digits_data, None, progress=False)
    reference.trainer.fit()

    path = tmp_path / "checkpoint.pt"
    first = assemble(config, digits_data, path, progress=False)
    first.trainer.fit(until_epoch=1)
    assert first.extras["moon_diagnostics"].report()["epoch"] == [1]
    del first

    torch.manual_seed(12345)
    resumed = assemble(config, digits_data, path, progress=False)
    resumed.trainer.resume(path)
    assert resumed.extras["moon_diagnostics"].report()["epoch"] == [1]
    resumed.trainer.fit()
    assert resumed.extras["moon_diagnostics"].report() == reference.extras["moon_diagnostics"].report()
    assert resumed.trainer.history.loss == reference.trainer.history.loss


@pytest.mark.parametrize("method", ["rigl", "cigl"])
def test_methods_without_unknown_class_record_nothing(method: str, tiny_config, digits_data) -> None:
    parts = assemble(tiny_config(method), digits_data, None, progress=False)
    assert "moon_diagnostics" not in parts.extras
    assert not any(isinstance(h, MoonDiagnostics) for h in parts.trainer.hooks)


def test_unknown_class_methods_all_get_diagnostics(tiny_config, digits_data) -> None:
    for name, method in METHODS.items():
        if method.unknown_class:
            parts = assemble(tiny_config(name), digits_data, None, progress=False)
            assert isinstance(parts.extras["moon_diagnostics"], MoonDiagnostics), name
            assert parts.extras["moon_diagnostics"] in parts.trainer.hooks, name


@pytest.mark.skipif("moon-ce" not in METHODS, reason="no plain K+1 cross-entropy method registered")
def test_plain_unknown_class_cross_entropy_is_observed_through_the_loss(tiny_config, digits_data) -> None:
    parts = assemble(tiny_config("moon-ce", optim__epochs=2), digits_data, None, progress=False)
    parts.trainer.fit()
    report = parts.extras["moon_diagnostics"].report()
    assert report["epoch"] == [1, 2] and report["alpha"] == [0.0, 0.0] and report["pushes_unknown_up"] == [0.0, 0.0]
    assert all(0.0 <= v <= 1.0 for v in report["train_error"])


def test_sets_added_later_are_padded_and_state_round_trips() -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 3)  # K = 2 + unknown
    x = torch.randn(1000, 4)
    diagnostics = MoonDiagnostics(model, {"test": x}, max_examples=100, batch_size=32)
    assert diagnostics.sets["test"].shape == (100, 4)
    y = torch.randint(0, 2, (64,))
    diagnostics.observe(model(x[:64]).detach(), y, None)
    diagnostics.on_epoch_end(0)
    diagnostics.add_eval_sets({"ood:noise": torch.randn(50, 4)})
    diagnostics.observe(model(x[:64]).detach(), y, torch.tensor(0.5))
    diagnostics.on_epoch_end(1)
    report = diagnostics.report()
    assert report["mean_q"]["ood:noise"][0] is None and 0 < report["mean_q"]["ood:noise"][1] < 1
    assert report["alpha"] == [0.0, 0.5]
    other = MoonDiagnostics(model, {"test": x, "ood:other": x[:10]}, max_examples=100)
    other.load_state_dict(diagnostics.state_dict())
    assert other.report()["mean_q"]["ood:other"] == [None, None]
    with pytest.raises(RuntimeError, match="no training batch"):
        other.on_epoch_end(2)


def test_run_with_ood_writes_diagnostics_and_plot(tiny_config, tmp_path: Path) -> None:
    record = run(tiny_config("moon", optim__epochs=2), tmp_path, progress=False, ood=True)
    written = json.loads((tmp_path / "metrics.json").read_text())
    diagnostics = written["moon_diagnostics"]
    assert diagnostics == json.loads(json.dumps(record["moon_diagnostics"]))
    assert set(diagnostics["mean_q"]) == {"train", "test", *(f"ood:{name}" for name in written["ood"])}
    assert len(written["ood"]) > 0
    assert all(len(v) == 2 and all(0.0 <= q <= 1.0 for q in v) for v in diagnostics["mean_q"].values())
    assert diagnostics["eval_model"].startswith("current iterate")
    assert set(diagnostics["eval_examples"]) == set(diagnostics["mean_q"]) - {"train"}
    assert all(0 < n <= DEFAULT_MAX_EXAMPLES for n in diagnostics["eval_examples"].values())
    png = tmp_path / "moon_diagnostics.png"
    assert png.is_file() and png.stat().st_size > 1000


def test_run_without_unknown_class_writes_no_diagnostics(tiny_config, tmp_path: Path) -> None:
    record = run(tiny_config("rigl"), tmp_path, progress=False)
    assert "moon_diagnostics" not in record
    assert not (tmp_path / "moon_diagnostics.png").exists()
