"""Accuracy, NLL and Brier score vs scikit-learn and numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, brier_score_loss, log_loss

from cigl_bayes.metrics import accuracy, brier_score, negative_log_likelihood


def _problem(seed: int, n: int, k: int, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(n, k, generator=g, dtype=torch.float64) * 2.0, dim=1).to(dtype)
    labels = torch.randint(0, k, (n,), generator=g)
    return probs, labels


CASES = [(0, 1, 2), (1, 50, 2), (2, 300, 3), (3, 1000, 10), (4, 17, 7)]


@pytest.mark.parametrize("seed,n,k", CASES)
def test_accuracy_vs_sklearn(seed: int, n: int, k: int) -> None:
    probs, labels = _problem(seed, n, k)
    ref = accuracy_score(labels.numpy(), probs.argmax(1).numpy())
    out = accuracy(probs, labels)
    assert isinstance(out, float)
    assert out == pytest.approx(ref, abs=1e-12)


def test_accuracy_known_values() -> None:
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    assert accuracy(probs, torch.tensor([0, 1, 1, 0])) == pytest.approx(0.5)
    assert accuracy(probs, torch.tensor([0, 1, 0, 1])) == 1.0


@pytest.mark.parametrize("seed,n,k", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nll_vs_sklearn(seed: int, n: int, k: int, dtype: torch.dtype) -> None:
    probs, labels = _problem(seed, n, k, dtype)
    p = probs.double().numpy()
    ref = log_loss(labels.numpy(), p / p.sum(1, keepdims=True), labels=list(range(k)))
    assert negative_log_likelihood(probs, labels) == pytest.approx(ref, rel=1e-6, abs=1e-6)


def test_nll_clamps_at_eps() -> None:
    probs = torch.tensor([[1.0, 0.0], [0.5, 0.5]], dtype=torch.float64)
    labels = torch.tensor([1, 0])
    expected = (-math.log(1e-12) - math.log(0.5)) / 2
    assert negative_log_likelihood(probs, labels) == pytest.approx(expected, rel=1e-12)
    assert negative_log_likelihood(probs, labels, eps=1e-3) == pytest.approx((-math.log(1e-3) - math.log(0.5)) / 2)
    assert math.isfinite(negative_log_likelihood(probs, labels))


def _np_brier(p: np.ndarray, y: np.ndarray) -> float:
    onehot = np.zeros_like(p)
    onehot[np.arange(len(y)), y] = 1.0
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


@pytest.mark.parametrize("seed,n,k", CASES)
def test_brier_vs_numpy(seed: int, n: int, k: int) -> None:
    probs, labels = _problem(seed, n, k)
    assert brier_score(probs, labels) == pytest.approx(_np_brier(probs.numpy(), labels.numpy()), abs=1e-12)


@pytest.mark.parametrize("seed,n", [(0, 1), (1, 40), (2, 999)])
def test_binary_brier_is_twice_sklearn(seed: int, n: int) -> None:
    probs, labels = _problem(seed, n, 2)
    ref = brier_score_loss(labels.numpy(), probs[:, 1].numpy(), pos_label=1)
    assert brier_score(probs, labels) == pytest.approx(2.0 * ref, abs=1e-12)


def test_brier_extremes() -> None:
    onehot = torch.eye(3)[torch.tensor([0, 2, 1])]
    assert brier_score(onehot, torch.tensor([0, 2, 1])) == pytest.approx(0.0, abs=1e-15)
    assert brier_score(onehot, torch.tensor([1, 0, 2])) == pytest.approx(2.0)
    assert brier_score(torch.full((2, 4), 0.25), torch.tensor([0, 3])) == pytest.approx(0.75)


@pytest.mark.parametrize("fn", [accuracy, negative_log_likelihood, brier_score])
@pytest.mark.parametrize(
    "probs,labels,match",
    [
        (torch.tensor([0.2, 0.8]), torch.tensor([1]), "must be 2-D"),
        (torch.tensor([[0.2, 0.8]]), torch.tensor([[1]]), "labels must be 1-D"),
        (torch.tensor([[0.2, 0.8]]), torch.tensor([1, 0]), "length mismatch"),
        (torch.tensor([[0.2, 0.8]]), torch.tensor([2]), r"labels must lie in \[0, 2\)"),
        (torch.tensor([[0.2, 0.8]]), torch.tensor([-1]), r"labels must lie in \[0, 2\)"),
        (torch.empty(0, 2), torch.empty(0, dtype=torch.long), "empty input"),
        (torch.tensor([[float("nan"), 0.8]]), torch.tensor([1]), "NaN or Inf"),
        (torch.tensor([[1, 0]]), torch.tensor([1]), "floating-point"),
    ],
)
def test_bad_inputs_raise(fn, probs, labels, match) -> None:
    with pytest.raises(ValueError, match=match):
        fn(probs, labels)


def test_nll_bad_eps() -> None:
    with pytest.raises(ValueError, match="eps must be > 0"):
        negative_log_likelihood(torch.tensor([[0.2, 0.8]]), torch.tensor([1]), eps=0.0)
