"""Streaming torchmetrics metrics equal the functional ones on the concatenated data, across
uneven batches, ``reset``, ``merge_state`` and a simulated two-rank DDP sync."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("torchmetrics")

from torchmetrics.utilities import dim_zero_cat  # noqa: E402

from cigl_bayes import metrics as F  # noqa: E402
from cigl_bayes.metrics import streaming as S  # noqa: E402

SPLITS = (1, 37, 200, 3, 259)  # uneven batch sizes, N = 500


def _data(n: int = 500, k: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=g, dtype=torch.float64) * 3
    labels = torch.randint(0, k, (n,), generator=g)
    logits[torch.arange(n), labels] += 1.5  # better than chance, miscalibrated
    log_probs = torch.log_softmax(logits, dim=1)
    probs = log_probs.exp().float()
    probs[:20] = torch.eye(k)[torch.arange(20) % k]  # confidences exactly 1.0 (the {1.0} bin)
    log_probs[:20] = torch.log(probs[:20].double().clamp_min(1e-300))
    return probs, labels, log_probs


def _ood(n_id: int = 300, n_ood: int = 200, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    scores = torch.cat([torch.randn(n_id, generator=g) + 1.0, torch.randn(n_ood, generator=g)])
    scores[::7] = torch.round(scores[::7])  # ties, which must enter / leave together
    is_id = torch.cat([torch.ones(n_id, dtype=torch.bool), torch.zeros(n_ood, dtype=torch.bool)])
    perm = torch.randperm(n_id + n_ood, generator=g)
    return scores[perm], is_id[perm]


# (factory, functional on the full data, which input: "probs" | "log_probs" | "ood")
CASES: dict[str, tuple[Any, Any, str]] = {
    "ece": (lambda **kw: S.ExpectedCalibrationError(n_bins=15, **kw), lambda p, y: F.expected_calibration_error(p, y, 15), "probs"),
    "ece10": (lambda **kw: S.ExpectedCalibrationError(n_bins=10, **kw), lambda p, y: F.expected_calibration_error(p, y, 10), "probs"),
    "ece_adaptive": (lambda **kw: S.ExpectedCalibrationError(n_bins=15, binning="quantile", **kw),
                     lambda p, y: F.expected_calibration_error(p, y, 15, "quantile"), "probs"),
    "mce": (lambda **kw: S.MaximumCalibrationError(n_bins=15, **kw), lambda p, y: F.maximum_calibration_error(p, y, 15), "probs"),
    "mce_adaptive": (lambda **kw: S.MaximumCalibrationError(n_bins=7, binning="quantile", **kw),
                     lambda p, y: F.maximum_calibration_error(p, y, 7, "quantile"), "probs"),
    "classwise": (lambda **kw: S.ClasswiseCalibrationError(num_classes=5, n_bins=15, **kw), lambda p, y: F.classwise_ece(p, y, 15), "probs"),
    "nll": (lambda **kw: S.NegativeLogLikelihood(**kw), F.negative_log_likelihood, "probs"),
    "nll_log": (lambda **kw: S.NegativeLogLikelihood(log_probs=True, **kw), F.nll_from_log_probs, "log_probs"),
    "brier": (lambda **kw: S.BrierScore(**kw), F.brier_score, "probs"),
    "auroc": (lambda **kw: S.OODAUROC(**kw), F.auroc, "ood"),
    "fpr95": (lambda **kw: S.OODFPRAtTPR(**kw), F.fpr_at_tpr, "ood"),
    "fpr80": (lambda **kw: S.OODFPRAtTPR(tpr=0.8, **kw), lambda a, b: F.fpr_at_tpr(a, b, 0.8), "ood"),
    "aupr_in": (lambda **kw: S.OODAUPRIn(**kw), F.aupr_in, "ood"),
    "aupr_out": (lambda **kw: S.OODAUPROut(**kw), F.aupr_out, "ood"),
}


def _inputs(kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    if kind == "ood":
        return _ood()
    probs, labels, log_probs = _data()
    return (log_probs if kind == "log_probs" else probs), labels


def _expected(fn: Any, kind: str, x: torch.Tensor, y: torch.Tensor) -> float:
    return fn(x[y], x[~y]) if kind == "ood" else fn(x, y)


def _feed(metric: Any, x: torch.Tensor, y: torch.Tensor, sizes: tuple[int, ...] = SPLITS) -> Any:
    for xb, yb in zip(torch.split(x, list(sizes)), torch.split(y, list(sizes))):
        metric.update(xb, yb)
    return metric


@pytest.mark.parametrize("name", CASES)
def test_uneven_batches_equal_functional_on_concatenation(name: str) -> None:
    make, fn, kind = CASES[name]
    x, y = _inputs(kind)
    expected = _expected(fn, kind, x, y)
    metric = _feed(make(), x, y)
    value = metric.compute()
    assert value.dtype == torch.float64 and value.dim() == 0
    assert float(value) == pytest.approx(expected, abs=1e-6, rel=0)
    assert expected != pytest.approx(0.0, abs=1e-3)  # a non-trivial value
    # one batch gives the same value as five
    assert float(_feed(make(), x, y, (len(y),)).compute()) == pytest.approx(expected, abs=1e-6, rel=0)
    # without the input checks (and their host syncs) the value is the same
    assert float(_feed(make(validate_args=False), x, y).compute()) == pytest.approx(expected, abs=1e-6, rel=0)


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
@pytest.mark.parametrize("name", CASES)
def test_reset_forgets_everything(name: str) -> None:
    make, fn, kind = CASES[name]
    x, y = _inputs(kind)
    metric = _feed(make(), x, y)
    metric.compute()
    metric.reset()
    half = slice(0, 250)
    metric.update(x[half], y[half])
    assert float(metric.compute()) == pytest.approx(_expected(fn, kind, x[half], y[half]), abs=1e-6, rel=0)
    metric.reset()
    with pytest.raises(ValueError, match="update"):
        metric.compute()


@pytest.mark.parametrize("name", CASES)
def test_merge_state_of_two_halves_equals_full_data(name: str) -> None:
    make, fn, kind = CASES[name]
    x, y = _inputs(kind)
    a, b = _feed(make(), x[:238], y[:238], (1, 200, 37)), _feed(make(), x[238:], y[238:], (3, 259))
    b.merge_state(a)  # cat states: the incoming (a's) batches come first, as in x
    assert float(b.compute()) == pytest.approx(_expected(fn, kind, x, y), abs=1e-6, rel=0)


def _gather_with(b: Any) -> Any:
    """A fake all-gather for a 2-rank world: rank 0 holds the caller's states, rank 1 ``b``'s
    (list states pre-concatenated, in the order torchmetrics gathers them)."""
    pending: list[torch.Tensor] = []

    def gather(t: torch.Tensor, group: Any = None) -> list[torch.Tensor]:
        if not pending:
            for attr in b._reductions:
                state = getattr(b, attr)
                pending.append(dim_zero_cat(state) if isinstance(state, list) else state)
        return [t, pending.pop(0)]

    return gather


@pytest.mark.parametrize("name", CASES)
def test_simulated_ddp_sync_equals_full_data(name: str) -> None:
    """torchmetrics' own sync path (``compute`` gathers, reduces, then unsyncs) over two ranks."""
    make, fn, kind = CASES[name]
    x, y = _inputs(kind)
    b = _feed(make(), x[238:], y[238:], (3, 259))
    a = _feed(make(dist_sync_fn=_gather_with(b), distributed_available_fn=lambda: True), x[:238], y[:238], (1, 200, 37))
    local = {k: (list(v) if isinstance(v, list) else v.clone()) for k, v in a.metric_state.items()}
    assert float(a.compute()) == pytest.approx(_expected(fn, kind, x, y), abs=1e-6, rel=0)
    for k, v in a.metric_state.items():  # back to the local state after compute
        assert (len(v) == len(local[k])) if isinstance(v, list) else torch.equal(v, local[k]), k


def test_sum_states_are_fixed_size_and_reduced_by_sum() -> None:
    """Equal-width binning keeps (n_bins + 1)-slot sums, not the examples."""
    probs, labels, _ = _data()
    m = _feed(S.ExpectedCalibrationError(n_bins=10), probs, labels)
    assert {k: tuple(v.shape) for k, v in m.metric_state.items()} == {"counts": (11,), "conf_sum": (11,), "acc_sum": (11,)}
    assert set(m._reductions) == {"counts", "conf_sum", "acc_sum"}
    assert int(m.counts.sum()) == 500 and int(m.counts[-1]) == 20  # the 20 rows with confidence exactly 1.0
    bins, ref = m.bins(), F.calibration_bins(probs, labels, 10)
    for field in ("confidence", "accuracy", "counts", "lower", "upper", "edges"):
        assert torch.allclose(getattr(bins, field).double(), getattr(ref, field).double(), atol=1e-12), field


def test_ood_report_matches_functional_report() -> None:
    scores, is_id = _ood()
    report = _feed(S.OODReport(), scores, is_id).compute()
    expected = F.ood_report(scores[is_id], scores[~is_id])
    assert set(report) == set(expected)
    for key, value in expected.items():
        assert float(report[key]) == pytest.approx(value, abs=1e-12), key


def test_ece_matches_torchmetrics_multiclass_calibration_error() -> None:
    from torchmetrics.classification import MulticlassCalibrationError

    probs, labels, _ = _data()
    for n_bins in (10, 15):
        ours = _feed(S.ExpectedCalibrationError(n_bins=n_bins), probs, labels).compute()
        theirs = _feed(MulticlassCalibrationError(num_classes=5, n_bins=n_bins, norm="l1"), probs, labels).compute()
        assert float(ours) == pytest.approx(float(theirs), abs=1e-6)
        ours_max = _feed(S.MaximumCalibrationError(n_bins=n_bins), probs, labels).compute()
        theirs_max = _feed(MulticlassCalibrationError(num_classes=5, n_bins=n_bins, norm="max"), probs, labels).compute()
        assert float(ours_max) == pytest.approx(float(theirs_max), abs=1e-6)


def test_auroc_matches_torchmetrics_binary_auroc() -> None:
    from torchmetrics.functional.classification import binary_auroc

    scores, is_id = _ood()
    ours = _feed(S.OODAUROC(), scores, is_id).compute()
    assert float(ours) == pytest.approx(float(binary_auroc(scores, is_id.long())), abs=1e-6)
    assert 0.7 < float(ours) < 0.9  # shifted normals with d' = 1: AUROC = Phi(1 / sqrt 2) = 0.76


def test_forward_returns_the_batch_value_and_accumulates() -> None:
    probs, labels, _ = _data()
    m = S.BrierScore()
    batch = m(probs[:100], labels[:100])
    assert float(batch) == pytest.approx(F.brier_score(probs[:100], labels[:100]), abs=1e-12)
    m(probs[100:], labels[100:])
    assert float(m.compute()) == pytest.approx(F.brier_score(probs, labels), abs=1e-12)


def test_bad_input_raises_with_the_fix() -> None:
    probs, labels, _ = _data()
    with pytest.raises(ValueError, match="length mismatch"):
        S.ExpectedCalibrationError().update(probs, labels[:10])
    with pytest.raises(ValueError, match="unknown binning"):
        S.ExpectedCalibrationError(binning="equal")
    with pytest.raises(ValueError, match="num_classes"):
        S.ClasswiseCalibrationError(num_classes=4).update(probs, labels)
    with pytest.raises(ValueError, match="eps"):
        S.NegativeLogLikelihood(eps=0.0)
    with pytest.raises(ValueError, match="tpr"):
        S.OODFPRAtTPR(tpr=1.5)
    m = S.OODAUROC()
    m.update(torch.randn(5), torch.ones(5, dtype=torch.bool))
    with pytest.raises(ValueError, match="both in-distribution and OOD"):
        m.compute()
    with pytest.raises(ValueError, match="is_id must"):
        S.OODAUROC().update(torch.randn(5), torch.tensor([0, 1, 2, 0, 1]))


def test_nll_from_log_probs_is_not_clamped() -> None:
    """Logits [0, 100] with label 0: the exact NLL is ~100, the probability clamp caps it at 27.6."""
    log_probs = torch.log_softmax(torch.tensor([[0.0, 100.0]], dtype=torch.float64), dim=1)
    exact = S.NegativeLogLikelihood(log_probs=True)
    exact.update(log_probs, torch.tensor([0]))
    clamped = S.NegativeLogLikelihood()
    clamped.update(log_probs.exp(), torch.tensor([0]))
    assert float(exact.compute()) == pytest.approx(100.0, abs=1e-9)
    assert float(clamped.compute()) == pytest.approx(-torch.log(torch.tensor(1e-12, dtype=torch.float64)).item())


def test_metrics_import_lazily_and_the_readme_snippet_runs_as_written(tmp_path: Path, readme_blocks, python_run) -> None:
    """One interpreter: ``import cigl_bayes.metrics`` leaves torchmetrics unloaded, then the README's
    streaming snippet runs as written."""
    (snippet,) = readme_blocks("## Streaming metrics (torchmetrics)")
    code = ("import sys, cigl_bayes, cigl_bayes.metrics\n"
            "assert 'torchmetrics' not in sys.modules, 'cigl_bayes.metrics imported torchmetrics eagerly'\n" + snippet)
    proc = python_run(code, tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"ECE 0\.\d+ +NLL \d+\.\d+ +AUROC 0\.\d+", proc.stdout), proc.stdout


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_states_stay_on_device_and_match() -> None:
    probs, labels, _ = _data()
    m = S.ExpectedCalibrationError().to("cuda")
    _feed(m, probs.cuda(), labels.cuda())
    assert m.counts.device.type == "cuda"
    assert float(m.compute()) == pytest.approx(F.expected_calibration_error(probs, labels), abs=1e-6)
