"""Calibration metrics vs torchmetrics and independent numpy references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchmetrics.functional.classification import binary_calibration_error, multiclass_calibration_error

from cigl_bayes.metrics import (
    CalibrationBins,
    calibration_bins,
    calibration_report,
    classwise_ece,
    expected_calibration_error,
    maximum_calibration_error,
)
from cigl_bayes.metrics.classification import accuracy, brier_score, negative_log_likelihood

TOL = 1e-6


# ------------------------------------------------------------------------------- helpers
def _random_problem(seed: int, n: int, k: int, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    scale = 0.5 + 4.0 * torch.rand(n, 1, generator=g)  # spread of confidences
    logits = torch.randn(n, k, generator=g, dtype=torch.float64) * scale
    probs = torch.softmax(logits, dim=1).to(dtype)
    # labels: half drawn from the argmax (so accuracy is not trivial), half uniform
    informative = torch.rand(n, generator=g) < 0.5
    labels = torch.where(informative, probs.argmax(1), torch.randint(0, k, (n,), generator=g))
    return probs, labels


def _tm_ece(probs: torch.Tensor, labels: torch.Tensor, n_bins: int, norm: str = "l1") -> float:
    return float(multiclass_calibration_error(probs, labels, num_classes=probs.shape[1], n_bins=n_bins, norm=norm))


def _rows_with_confidence(conf: list[float], k: int, dtype=torch.float32) -> torch.Tensor:
    """Rows whose max is exactly ``conf[i]`` (at column 0), rest spread evenly."""
    c = torch.tensor(conf, dtype=torch.float64)[:, None]
    rest = ((1.0 - c) / (k - 1)).expand(-1, k - 1)
    return torch.cat([c, rest], dim=1).to(dtype)


def _assert_matches_torchmetrics(probs: torch.Tensor, labels: torch.Tensor) -> None:
    for n_bins in (10, 15):
        ece = expected_calibration_error(probs, labels, n_bins=n_bins)
        mce = maximum_calibration_error(probs, labels, n_bins=n_bins)
        assert ece == pytest.approx(_tm_ece(probs, labels, n_bins, "l1"), abs=TOL)
        assert mce == pytest.approx(_tm_ece(probs, labels, n_bins, "max"), abs=TOL)


def _np_adaptive_ece(conf: np.ndarray, correct: np.ndarray, n_bins: int) -> float:
    order = np.argsort(conf, kind="stable")
    n = len(conf)
    total = 0.0
    for chunk in np.array_split(order, n_bins):
        if len(chunk):
            total += len(chunk) / n * abs(correct[chunk].mean() - conf[chunk].mean())
    return total


def _np_classwise_ece(probs: np.ndarray, labels: np.ndarray, n_bins: int) -> float:
    """Straightforward loop: bins [e_b, e_{b+1}) plus the {1.0} bin, over float32 scores."""
    p = probs.astype(np.float32)
    n, k = p.shape
    edges = np.linspace(0.0, 1.0, n_bins + 1, dtype=np.float32)
    eces = []
    for cls in range(k):
        score, target = p[:, cls], (labels == cls).astype(np.float64)
        ece = 0.0
        for b in range(n_bins + 1):
            if b < n_bins:
                mask = (score >= edges[b]) & (score < edges[b + 1])
            else:
                mask = score >= 1.0
            if mask.any():
                ece += mask.sum() / n * abs(target[mask].mean() - score[mask].astype(np.float64).mean())
        eces.append(ece)
    return float(np.mean(eces))


# ------------------------------------------------------------------ torchmetrics agreement
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n,k", [(1, 3), (7, 2), (100, 2), (257, 5), (2000, 10), (3000, 100)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ece_mce_match_torchmetrics_random(seed: int, n: int, k: int, dtype: torch.dtype) -> None:
    probs, labels = _random_problem(seed, n, k, dtype)
    _assert_matches_torchmetrics(probs, labels)


@pytest.mark.parametrize("k", [2, 3, 10])
def test_all_correct_and_all_wrong(k: int) -> None:
    probs, _ = _random_problem(5, 500, k)
    pred = probs.argmax(1)
    _assert_matches_torchmetrics(probs, pred)
    conf = probs.max(1).values.double()
    # all correct: ECE = mean(1 - c) since every bin has accuracy 1 and 1 >= c
    assert expected_calibration_error(probs, pred) == pytest.approx(float((1 - conf).mean()), abs=TOL)
    wrong = (pred + 1) % k
    _assert_matches_torchmetrics(probs, wrong)
    # all wrong: accuracy 0 everywhere -> ECE = mean confidence
    assert expected_calibration_error(probs, wrong) == pytest.approx(float(conf.mean()), abs=TOL)
    assert maximum_calibration_error(probs, wrong, n_bins=15) == pytest.approx(
        _tm_ece(probs, wrong, 15, "max"), abs=TOL
    )


def test_one_hot_confidence_exactly_one() -> None:
    k = 4
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    one_hot = torch.eye(k)[torch.tensor([0, 1, 2, 0, 0, 1, 3, 3])]  # 6 of 8 correct
    _assert_matches_torchmetrics(one_hot, labels)
    assert expected_calibration_error(one_hot, labels) == pytest.approx(2 / 8, abs=TOL)
    # mixed with confidences just below 1 (same last regular bin): the {1.0} bin stays separate
    near = _rows_with_confidence([0.99, 0.97, 0.95], k)
    probs = torch.cat([one_hot, near])
    labs = torch.cat([labels, torch.tensor([1, 0, 0])])
    _assert_matches_torchmetrics(probs, labs)
    bins = calibration_bins(probs, labs, n_bins=10)
    assert bins.counts.tolist()[-2:] == [3, 8]


@pytest.mark.parametrize("n_bins", [10, 15])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_confidence_exactly_on_bin_edges(n_bins: int, dtype: torch.dtype) -> None:
    # float32 linspace edges, the decimal edges i/n_bins, and float64 values (torchmetrics bins in float32)
    edges = torch.linspace(0, 1, n_bins + 1).tolist() + [i / n_bins for i in range(n_bins + 1)]
    conf = [0.5, 0.7, 0.6, 0.9, 0.8, 0.4, 0.3 + 0.4] + [e for e in edges if e >= 1 / 3]  # reachable top-label conf.
    k = 3
    probs = _rows_with_confidence(conf, k, dtype)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        labels = torch.randint(0, k, (len(conf),), generator=g)
        _assert_matches_torchmetrics(probs, labels)


def test_edge_convention_left_closed_and_one_bin() -> None:
    """Documented convention: [e_b, e_{b+1}), and c == 1.0 in an extra bin ``n_bins``."""
    probs = _rows_with_confidence([0.5, 0.5 - 1e-6, 1.0], 3)
    labels = torch.tensor([0, 0, 0])
    bins = calibration_bins(probs, labels, n_bins=10)
    assert isinstance(bins, CalibrationBins)
    assert bins.counts.shape == (11,) and bins.edges.shape == (11,)
    assert bins.counts[5] == 1 and bins.counts[4] == 1 and bins.counts[10] == 1
    assert bins.lower[5] == pytest.approx(0.5) and bins.upper[5] == pytest.approx(0.6)
    assert bins.lower[10] == 1.0 and bins.upper[10] == 1.0


def test_ties_and_single_example_and_binary() -> None:
    # exact ties between classes: top-label prediction is the first maximal index
    probs = torch.tensor([[0.5, 0.5, 0.0], [0.4, 0.4, 0.2]])
    for labels in (torch.tensor([0, 0]), torch.tensor([1, 1]), torch.tensor([0, 1])):
        _assert_matches_torchmetrics(probs, labels)
    assert expected_calibration_error(probs, torch.tensor([1, 1])) == pytest.approx(0.45, abs=TOL)
    # a single example
    one = torch.tensor([[0.2, 0.8]])
    _assert_matches_torchmetrics(one, torch.tensor([1]))
    assert expected_calibration_error(one, torch.tensor([1])) == pytest.approx(0.2, abs=TOL)
    assert maximum_calibration_error(one, torch.tensor([0])) == pytest.approx(0.8, abs=TOL)
    # K = 2 with ties everywhere
    half = torch.full((6, 2), 0.5)
    _assert_matches_torchmetrics(half, torch.tensor([0, 1, 0, 1, 1, 1]))


def test_hand_computed_ece_and_mce() -> None:
    probs = torch.tensor([[0.95, 0.025, 0.025], [0.95, 0.025, 0.025], [0.35, 0.33, 0.32]])
    labels = torch.tensor([0, 1, 0])
    # 10 bins: bin 9 {0.95 ok, 0.95 wrong}: |0.5 - 0.95| = 0.45, weight 2/3; bin 3 {0.35 ok}: 0.65, weight 1/3
    assert expected_calibration_error(probs, labels, n_bins=10) == pytest.approx(2 / 3 * 0.45 + 1 / 3 * 0.65, abs=TOL)
    assert maximum_calibration_error(probs, labels, n_bins=10) == pytest.approx(0.65, abs=TOL)
    # one bin: |acc - mean conf| = |2/3 - 0.75|
    assert expected_calibration_error(probs, labels, n_bins=1) == pytest.approx(abs(2 / 3 - 0.75), abs=TOL)


def test_bins_are_consistent() -> None:
    probs, labels = _random_problem(3, 1000, 6)
    bins = calibration_bins(probs, labels, n_bins=15)
    assert int(bins.counts.sum()) == 1000 == bins.total
    ne = bins.counts > 0
    assert torch.all(bins.confidence[ne] >= bins.lower[ne] - 1e-7)
    assert torch.all(bins.confidence[ne] <= bins.upper[ne] + 1e-7)
    assert torch.all((bins.accuracy >= 0) & (bins.accuracy <= 1))
    assert bins.proportions.sum().item() == pytest.approx(1.0)
    assert bins.ece() == pytest.approx(expected_calibration_error(probs, labels), abs=1e-12)


# ------------------------------------------------------------------------- adaptive ECE
@pytest.mark.parametrize("n,n_bins", [(1000, 15), (1001, 15), (37, 15), (16, 15), (5, 15), (300, 7), (50, 1)])
def test_adaptive_bins_equal_mass_and_value(n: int, n_bins: int) -> None:
    probs, labels = _random_problem(n, n, 4, torch.float64)
    bins = calibration_bins(probs, labels, n_bins=n_bins, binning="quantile")
    counts = bins.counts
    assert counts.shape == (n_bins,) and int(counts.sum()) == n
    assert int(counts.max()) - int(counts.min()) <= 1
    assert int(counts.min()) == n // n_bins
    assert torch.all(bins.edges[1:] >= bins.edges[:-1])
    conf, pred = probs.max(1)
    ref = _np_adaptive_ece(conf.numpy(), (pred == labels).numpy().astype(np.float64), n_bins)
    assert expected_calibration_error(probs, labels, n_bins=n_bins, binning="quantile") == pytest.approx(ref, abs=1e-10)


def test_adaptive_with_ties() -> None:
    probs = _rows_with_confidence([0.6] * 10 + [0.9] * 10, 3)
    labels = torch.tensor([0, 1] * 10)
    ref = _np_adaptive_ece(probs.max(1).values.double().numpy(), (labels == 0).numpy().astype(float), 4)
    assert expected_calibration_error(probs, labels, n_bins=4, binning="quantile") == pytest.approx(ref, abs=1e-7)


# ------------------------------------------------------------------------ class-wise ECE
@pytest.mark.parametrize("seed,n,k", [(0, 500, 2), (1, 800, 5), (2, 64, 10), (3, 1, 3)])
@pytest.mark.parametrize("n_bins", [10, 15])
def test_classwise_ece_vs_numpy_loop(seed: int, n: int, k: int, n_bins: int) -> None:
    probs, labels = _random_problem(seed, n, k)
    ref = _np_classwise_ece(probs.numpy(), labels.numpy(), n_bins)
    assert classwise_ece(probs, labels, n_bins=n_bins) == pytest.approx(ref, abs=TOL)
    tm = np.mean([float(binary_calibration_error(probs[:, c].contiguous(), (labels == c).long(), n_bins=n_bins)) for c in range(k)])
    assert classwise_ece(probs, labels, n_bins=n_bins) == pytest.approx(tm, abs=TOL)


def test_classwise_ece_one_hot() -> None:
    probs = torch.eye(3)[torch.tensor([0, 1, 2, 2])]
    labels = torch.tensor([0, 1, 2, 0])
    ref = _np_classwise_ece(probs.numpy(), labels.numpy(), 15)
    assert classwise_ece(probs, labels) == pytest.approx(ref, abs=TOL)
    assert ref > 0


# --------------------------------------------------------------------- synthetic samples
def test_calibrated_sample_has_small_ece_and_sharpened_is_worse() -> None:
    g = torch.Generator().manual_seed(123)
    logits = torch.randn(40_000, 10, generator=g) * 2.0
    probs = torch.softmax(logits, dim=1)
    labels = torch.multinomial(probs, 1, generator=g).squeeze(1)
    ece = expected_calibration_error(probs, labels)
    assert ece < 0.02
    assert expected_calibration_error(probs, labels, binning="quantile") < 0.02
    assert classwise_ece(probs, labels) < 0.02
    sharp = torch.softmax(logits * 3.0, dim=1)
    ece_sharp = expected_calibration_error(sharp, labels)
    assert ece_sharp > 0.1 and ece_sharp > 5 * ece
    assert maximum_calibration_error(sharp, labels) > maximum_calibration_error(probs, labels)


# --------------------------------------------------------------------------------- report
def test_calibration_report_keys_and_values() -> None:
    probs, labels = _random_problem(9, 600, 4)
    rep = calibration_report(probs, labels)
    assert set(rep) == {"accuracy", "ece", "ece_15", "ece_adaptive", "mce", "nll", "brier", "classwise_ece", "confidence"}
    assert rep["confidence"] == pytest.approx(float(probs.max(-1).values.mean()))
    assert all(isinstance(v, float) for v in rep.values())
    assert rep["ece"] == pytest.approx(_tm_ece(probs, labels, 10), abs=TOL)
    assert rep["ece_15"] == pytest.approx(_tm_ece(probs, labels, 15), abs=TOL)
    assert rep["mce"] == pytest.approx(_tm_ece(probs, labels, 15, "max"), abs=TOL)
    assert rep["ece_adaptive"] == expected_calibration_error(probs, labels, 15, "quantile")
    assert rep["classwise_ece"] == classwise_ece(probs, labels, 15)
    assert rep["accuracy"] == accuracy(probs, labels)
    assert rep["nll"] == negative_log_likelihood(probs, labels)
    assert rep["brier"] == brier_score(probs, labels)


# ------------------------------------------------------------------------- bad inputs
_P = torch.full((4, 3), 1 / 3)
_Y = torch.tensor([0, 1, 2, 0])


@pytest.mark.parametrize(
    "probs,labels,kwargs,match",
    [
        (_P[0], _Y[:1], {}, "must be 2-D"),
        (_P, _Y[:, None], {}, "labels must be 1-D"),
        (_P, _Y[:3], {}, "length mismatch"),
        (_P, torch.tensor([0, 1, 3, 0]), {}, r"labels must lie in \[0, 3\)"),
        (_P, torch.tensor([0, -1, 2, 0]), {}, r"labels must lie in \[0, 3\)"),
        (_P, _Y.float(), {}, "integer tensor"),
        (_P, _Y, {"n_bins": 0}, "n_bins must be >= 1"),
        (_P, _Y, {"n_bins": 2.5}, "positive integer"),
        (_P, _Y, {"binning": "equal"}, "unknown binning"),
        (torch.empty(0, 3), torch.empty(0, dtype=torch.long), {}, "empty input"),
        (torch.tensor([[0.5, float("nan"), 0.5]]), torch.tensor([0]), {}, "NaN or Inf"),
        (torch.tensor([[0.5, float("inf"), 0.5]]), torch.tensor([0]), {}, "NaN or Inf"),
    ],
)
def test_bad_inputs_raise(probs, labels, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        expected_calibration_error(probs, labels, **kwargs)
    with pytest.raises(ValueError, match=match):
        calibration_bins(probs, labels, **kwargs)
    if "binning" not in kwargs:
        with pytest.raises(ValueError, match=match):
            maximum_calibration_error(probs, labels, **kwargs)
        with pytest.raises(ValueError, match=match):
            classwise_ece(probs, labels, **kwargs)
    if not kwargs:
        with pytest.raises(ValueError, match=match):
            calibration_report(probs, labels)


# --------------------------------------------------------------------------------- device
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    probs, labels = _random_problem(11, 5000, 10)
    cpu = calibration_report(probs, labels)
    gpu = calibration_report(probs.cuda(), labels.cuda())
    for key, value in cpu.items():
        assert gpu[key] == pytest.approx(value, abs=1e-9), key
