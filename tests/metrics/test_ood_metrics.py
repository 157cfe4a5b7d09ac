"""OOD metrics against scikit-learn (random, tied, separated, identical and tiny inputs) and validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from cigl_bayes.metrics import aupr_in, aupr_out, auroc, fpr_at_tpr, ood_report



def _sk(score_id: np.ndarray, score_ood: np.ndarray, tpr: float = 0.95, drop: bool = False) -> dict[str, float]:
    y = np.r_[np.ones(len(score_id)), np.zeros(len(score_ood))]
    s = np.r_[score_id, score_ood].astype(np.float64)
    fpr_c, tpr_c, _ = roc_curve(y, s, drop_intermediate=drop)
    return {
        "auroc": roc_auc_score(y, s),
        "fpr95": float(fpr_c[np.argmax(tpr_c >= tpr)]),
        "aupr_in": average_precision_score(y, s),
        "aupr_out": average_precision_score(1 - y, -s),
    }


def _ours(score_id: np.ndarray, score_ood: np.ndarray, tpr: float = 0.95) -> dict[str, float]:
    a, b = torch.as_tensor(score_id), torch.as_tensor(score_ood)
    return {"auroc": auroc(a, b), "fpr95": fpr_at_tpr(a, b, tpr), "aupr_in": aupr_in(a, b), "aupr_out": aupr_out(a, b)}


def _assert_match(score_id: np.ndarray, score_ood: np.ndarray, tpr: float = 0.95) -> None:
    got, want = _ours(score_id, score_ood, tpr), _sk(score_id, score_ood, tpr)
    for k in want:
        assert got[k] == pytest.approx(want[k], abs=1e-12), (k, got[k], want[k])


@pytest.mark.parametrize("seed", range(6))
def test_random_scores_match_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_id, n_ood = rng.integers(1, 400, size=2)
    s_id = rng.normal(rng.uniform(0, 2), 1.0, n_id)
    s_ood = rng.normal(0.0, rng.uniform(0.5, 2), n_ood)
    _assert_match(s_id, s_ood)
    for tpr in (0.5, 0.8, 1.0):
        _assert_match(s_id, s_ood, tpr)
    # untied scores: identical to sklearn's default (drop_intermediate=True) FPR95 as used by OpenOOD
    assert fpr_at_tpr(torch.as_tensor(s_id), torch.as_tensor(s_ood)) == _sk(s_id, s_ood, drop=True)["fpr95"]


@pytest.mark.parametrize("seed", range(6))
def test_heavily_tied_scores_match_sklearn(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    n_id, n_ood = rng.integers(1, 200, size=2)
    s_id = rng.integers(0, 4, n_id).astype(np.float64)
    s_ood = rng.integers(0, 3, n_ood).astype(np.float64)
    _assert_match(s_id, s_ood)
    _assert_match(s_id, s_ood, 0.6)


def test_fpr95_uses_every_distinct_threshold() -> None:
    # counts (TP, FP) at thresholds 3, 2, 1, 0: (18, 0), (19, 1), (20, 2), (20, 20). The middle point is
    # collinear, so sklearn's default roc_curve drops it and reports FPR 0.10; threshold 2 is a real
    # operating point with TPR 0.95 and FPR 0.05.
    s_id = np.r_[np.full(18, 3.0), 2.0, 1.0]
    s_ood = np.r_[2.0, 1.0, np.zeros(18)]
    assert fpr_at_tpr(torch.as_tensor(s_id), torch.as_tensor(s_ood)) == pytest.approx(0.05)
    assert _sk(s_id, s_ood)["fpr95"] == pytest.approx(0.05)
    assert _sk(s_id, s_ood, drop=True)["fpr95"] == pytest.approx(0.10)


def test_perfect_reversed_and_identical() -> None:
    s_id, s_ood = torch.arange(10.0, 20.0), torch.arange(0.0, 7.0)
    assert ood_report(s_id, s_ood) == {"auroc": 1.0, "fpr95": 0.0, "aupr_in": 1.0, "aupr_out": 1.0}
    rev = ood_report(s_ood, s_id)
    assert rev["auroc"] == 0.0 and rev["fpr95"] == 1.0
    _assert_match(s_ood.numpy(), s_id.numpy())
    g = torch.Generator().manual_seed(0)
    same = auroc(torch.randn(4000, generator=g), torch.randn(4000, generator=g))
    assert abs(same - 0.5) < 0.03
    # all scores tied: one operating point plus the origin
    r = ood_report(torch.zeros(3), torch.zeros(5))
    assert r == pytest.approx({"auroc": 0.5, "fpr95": 1.0, "aupr_in": 3 / 8, "aupr_out": 5 / 8})


@pytest.mark.parametrize(
    "s_id,s_ood",
    [([1.0], [0.0]), ([0.0], [1.0]), ([0.5], [0.5]), ([1.0, 0.0], [0.5]), ([2.0], [1.0, 3.0, 2.0]), ([1, 1, 0], [1, 0])],
)
def test_tiny_inputs_match_sklearn(s_id: list, s_ood: list) -> None:
    _assert_match(np.asarray(s_id, dtype=np.float64), np.asarray(s_ood, dtype=np.float64))


def test_report_matches_functions_and_accepts_dtypes() -> None:
    rng = np.random.default_rng(7)
    s_id = torch.tensor(rng.normal(1, 1, 300), dtype=torch.float32)
    s_ood = torch.tensor(rng.normal(0, 1, 200), dtype=torch.float32)
    r = ood_report(s_id, s_ood)
    assert list(r) == ["auroc", "fpr95", "aupr_in", "aupr_out"]
    assert r == {"auroc": auroc(s_id, s_ood), "fpr95": fpr_at_tpr(s_id, s_ood), "aupr_in": aupr_in(s_id, s_ood),
                 "aupr_out": aupr_out(s_id, s_ood)}
    assert all(isinstance(v, float) for v in r.values())
    _assert_match(s_id.numpy(), s_ood.numpy())
    assert auroc(torch.tensor([3, 2]), torch.tensor([1, 2])) == pytest.approx(0.875)  # int scores


@pytest.mark.parametrize(
    "bad",
    [torch.zeros(0), torch.tensor([1.0, float("nan")]), torch.tensor([float("inf")]), torch.zeros(2, 2), torch.tensor(1.0)],
)
def test_invalid_inputs(bad: torch.Tensor) -> None:
    ok = torch.tensor([0.0, 1.0])
    for fn in (auroc, fpr_at_tpr, aupr_in, aupr_out, ood_report):
        with pytest.raises(ValueError):
            fn(bad, ok)
        with pytest.raises(ValueError):
            fn(ok, bad)


@pytest.mark.parametrize("tpr", [0.0, -0.1, 1.5, float("nan")])
def test_invalid_tpr(tpr: float) -> None:
    with pytest.raises(ValueError, match="tpr"):
        fpr_at_tpr(torch.tensor([1.0]), torch.tensor([0.0]), tpr)
