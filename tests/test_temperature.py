"""Temperature scaling: recovers a known temperature and minimises the NLL."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cigl_bayes.temperature import apply_temperature, fit_temperature


def _np_nll(logits: np.ndarray, labels: np.ndarray, t: float) -> float:
    z = logits / t
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(len(labels)), labels]))


def _miscalibrated(seed: int, n: int, k: int, t_true: float) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    true_logits = torch.randn(n, k, generator=g) * 1.5
    labels = torch.multinomial(torch.softmax(true_logits, dim=1), 1, generator=g).squeeze(1)
    return true_logits * t_true, labels


@pytest.fixture(scope="module")
def overconfident() -> tuple[torch.Tensor, torch.Tensor]:
    return _miscalibrated(0, 30_000, 10, 3.0)


@pytest.fixture(scope="module")
def fitted(overconfident) -> float:
    return fit_temperature(*overconfident)


def test_recovers_true_temperature(fitted: float) -> None:
    t = fitted
    assert isinstance(t, float)
    assert abs(t - 3.0) / 3.0 < 0.05


def test_recovers_underconfident_temperature() -> None:
    logits, labels = _miscalibrated(1, 30_000, 5, 0.5)
    assert fit_temperature(logits, labels) == pytest.approx(0.5, rel=0.05)


def test_fitted_temperature_minimises_nll(overconfident, fitted: float) -> None:
    logits, labels = overconfident
    t = fitted
    z, y = logits.double().numpy(), labels.numpy()
    best = _np_nll(z, y, t)
    assert best <= _np_nll(z, y, 1.0) + 1e-4
    for t_grid in np.linspace(0.25, 8.0, 63):
        assert best <= _np_nll(z, y, float(t_grid)) + 1e-4
    # stationarity: the NLL is flat at the optimum
    h = 1e-3 * t
    assert abs(_np_nll(z, y, t + h) - _np_nll(z, y, t - h)) / (2 * h) < 1e-3


def test_works_under_no_grad_and_float64(overconfident, fitted: float) -> None:
    logits, labels = overconfident
    with torch.no_grad():
        t64 = fit_temperature(logits.double(), labels)
    assert t64 == pytest.approx(fitted, rel=1e-4)


def test_anti_informative_logits_never_worse_than_identity() -> None:
    logits, labels = _miscalibrated(2, 2000, 4, 1.0)
    t = fit_temperature(-logits, labels)  # optimum would be a negative temperature
    assert np.isfinite(t) and t > 0
    z, y = (-logits).double().numpy(), labels.numpy()
    assert _np_nll(z, y, t) <= _np_nll(z, y, 1.0) + 1e-9


def test_apply_temperature_rows_sum_to_one(overconfident) -> None:
    logits, _ = overconfident
    probs = apply_temperature(logits[:100], 2.5)
    assert probs.shape == (100, 10) and probs.dtype == logits.dtype
    torch.testing.assert_close(probs.sum(1), torch.ones(100), atol=1e-6, rtol=0)
    torch.testing.assert_close(probs, torch.softmax(logits[:100] / 2.5, dim=1))
    # T -> large flattens, T = 1 is plain softmax
    torch.testing.assert_close(apply_temperature(logits[:5], 1.0), torch.softmax(logits[:5], dim=1))
    assert float(apply_temperature(logits[:5], 1e6).max()) < 0.1 + 1e-3


@pytest.mark.parametrize(
    "logits,labels,match",
    [
        (torch.randn(5), torch.zeros(5, dtype=torch.long), "must be 2-D"),
        (torch.randn(5, 3), torch.zeros(5, 1, dtype=torch.long), "labels must be 1-D"),
        (torch.randn(5, 3), torch.zeros(4, dtype=torch.long), "length mismatch"),
        (torch.randn(5, 3), torch.full((5,), 3), r"labels must lie in \[0, 3\)"),
        (torch.empty(0, 3), torch.empty(0, dtype=torch.long), "empty input"),
        (torch.tensor([[0.0, float("inf")]]), torch.tensor([0]), "NaN or Inf"),
        (torch.tensor([[0.0, float("nan")]]), torch.tensor([0]), "NaN or Inf"),
    ],
)
def test_fit_bad_inputs(logits, labels, match) -> None:
    with pytest.raises(ValueError, match=match):
        fit_temperature(logits, labels)


def test_apply_bad_inputs() -> None:
    with pytest.raises(ValueError, match="temperature must be"):
        apply_temperature(torch.randn(3, 2), 0.0)
    with pytest.raises(ValueError, match="temperature must be"):
        apply_temperature(torch.randn(3, 2), float("nan"))
    with pytest.raises(ValueError, match="NaN or Inf"):
        apply_temperature(torch.tensor([[float("nan"), 1.0]]), 1.0)
    with pytest.raises(ValueError, match="must be 2-D"):
        apply_temperature(torch.randn(3), 1.0)
    with pytest.raises(ValueError, match="max_iter"):
        fit_temperature(torch.randn(3, 2), torch.tensor([0, 1, 0]), max_iter=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(overconfident, fitted: float) -> None:
    logits, labels = overconfident
    assert fit_temperature(logits.cuda(), labels.cuda()) == pytest.approx(fitted, rel=1e-4)
    probs = apply_temperature(logits[:10].cuda(), fitted)
    assert probs.is_cuda
    torch.testing.assert_close(probs.cpu(), apply_temperature(logits[:10], fitted))
