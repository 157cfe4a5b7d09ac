r"""Streaming, DDP-syncable ``torchmetrics.Metric`` versions of the package's metrics.

Each class accumulates over ``update`` calls and its ``compute()`` equals the functional metric
of :mod:`cigl_bayes.metrics` on the concatenation of every batch (and, under DDP, every rank):

* equal-width top-label bins (:class:`ExpectedCalibrationError`, :class:`MaximumCalibrationError`
  with ``binning="uniform"``) and :class:`ClasswiseCalibrationError` keep per-bin sums
  (count, :math:`\sum c`, :math:`\sum a`; float64) reduced with ``"sum"``, as do
  :class:`NegativeLogLikelihood` and :class:`BrierScore` (sum and count);
* equal-mass bins (``binning="quantile"``) depend on every confidence, so they keep the
  confidences and correctness as ``"cat"`` states, as do the OOD metrics (scores and the
  in-distribution flag), which call :mod:`cigl_bayes.metrics.ood` on ``compute()``.

``compute()`` returns float64 tensors (a dict of them for :class:`OODReport`). Inputs are checked
like the functional metrics; ``validate_args=False`` skips the checks, and their host syncs.

This module imports ``torchmetrics`` (extra ``metrics``); ``import cigl_bayes.metrics`` does not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

try:
    from torchmetrics import Metric
    from torchmetrics.utilities import dim_zero_cat
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "cigl_bayes.metrics.streaming needs torchmetrics; install it with `pip install 'cigl-bayes[metrics]'` "
        "(or `pip install 'torchmetrics>=1.3'`)."
    ) from err

from . import ood
from .calibration import (
    CalibrationBins,
    _bin_stats,
    _check_binning,
    _check_n_bins,
    _quantile_index,
    _uniform_edges,
    _uniform_index,
)
from .classification import _check_labels, _check_scores, check_eps, check_probs_labels

__all__ = [
    "BrierScore",
    "ClasswiseCalibrationError",
    "ExpectedCalibrationError",
    "MaximumCalibrationError",
    "NegativeLogLikelihood",
    "OODAUPRIn",
    "OODAUPROut",
    "OODAUROC",
    "OODFPRAtTPR",
    "OODReport",
]

_F64 = torch.float64


def _zeros(n: int, dtype: torch.dtype = _F64) -> Tensor:
    return torch.zeros(n, dtype=dtype)


def _nonempty(total: Tensor | int, name: str) -> None:
    if int(total) == 0:
        raise ValueError(f"{name} has seen no examples; call update(...) with at least one batch before compute().")


# ----------------------------------------------------------------------------------------
# top-label calibration
# ----------------------------------------------------------------------------------------
class _TopLabelCalibration(Metric):
    """Shared state of :class:`ExpectedCalibrationError` and :class:`MaximumCalibrationError`."""

    is_differentiable = False
    higher_is_better = False
    full_state_update = False
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    def __init__(self, n_bins: int = 15, binning: str = "uniform", validate_args: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.n_bins = _check_n_bins(n_bins)
        self.binning = _check_binning(binning)
        self.validate_args = validate_args
        if self.binning == "uniform":  # n_bins + 1 slots: the last one is the {1.0} bin
            self.add_state("counts", _zeros(self.n_bins + 1, torch.long), dist_reduce_fx="sum")
            self.add_state("conf_sum", _zeros(self.n_bins + 1), dist_reduce_fx="sum")
            self.add_state("acc_sum", _zeros(self.n_bins + 1), dist_reduce_fx="sum")
        else:
            self.add_state("confidences", [], dist_reduce_fx="cat")
            self.add_state("correct", [], dist_reduce_fx="cat")

    def update(self, probs: Tensor, labels: Tensor) -> None:
        """Add a batch: ``probs`` ``(N, K)`` class probabilities, ``labels`` ``(N,)`` class indices."""
        if self.validate_args:
            probs, labels = check_probs_labels(probs, labels)
        conf, pred = probs.detach().max(dim=1)
        correct = pred == labels.to(device=pred.device, dtype=torch.long)
        if self.binning == "uniform":
            idx = _uniform_index(conf, self.n_bins)
            ones = torch.ones_like(idx)
            self.counts.scatter_add_(0, idx, ones)
            self.conf_sum.scatter_add_(0, idx, conf.to(_F64))
            self.acc_sum.scatter_add_(0, idx, correct.to(_F64))
        else:
            self.confidences.append(conf.to(_F64))
            self.correct.append(correct)

    def _bins(self) -> CalibrationBins:
        if self.binning == "uniform":
            _nonempty(self.counts.sum(), type(self).__name__)
            denom = self.counts.clamp_min(1).to(_F64)
            edges = _uniform_edges(self.n_bins, self.counts.device).to(_F64)
            upper = torch.cat([edges[1:], edges[-1:]])
            return CalibrationBins(self.conf_sum / denom, self.acc_sum / denom, self.counts.clone(), edges, upper,
                                   edges, self.n_bins, "uniform")
        _nonempty(len(self.confidences), type(self).__name__)
        conf = dim_zero_cat(self.confidences).to(_F64)
        correct = dim_zero_cat(self.correct).to(device=conf.device, dtype=torch.bool)
        idx, edges = _quantile_index(conf, self.n_bins)
        mean_conf, mean_acc, counts = _bin_stats(idx, conf, correct, self.n_bins)
        return CalibrationBins(mean_conf, mean_acc, counts, edges[:-1], edges[1:], edges, self.n_bins, "quantile")

    def bins(self) -> CalibrationBins:
        """The accumulated (local, unsynced) bins, e.g. for a reliability diagram."""
        return self._bins()


class ExpectedCalibrationError(_TopLabelCalibration):
    r"""Streaming top-label ECE :math:`\sum_b \frac{|B_b|}{N}|\mathrm{acc}_b - \mathrm{conf}_b|`.

    Equals :func:`~cigl_bayes.metrics.expected_calibration_error` with the same ``n_bins`` and
    ``binning`` (``"uniform"``: equal-width, torchmetrics' convention; ``"quantile"``: adaptive).
    """

    def compute(self) -> Tensor:
        bins = self._bins()
        return (bins.proportions * bins.gaps).sum()


class MaximumCalibrationError(_TopLabelCalibration):
    r"""Streaming top-label MCE :math:`\max_{b:|B_b|>0}|\mathrm{acc}_b - \mathrm{conf}_b|`
    (= :func:`~cigl_bayes.metrics.maximum_calibration_error`)."""

    def compute(self) -> Tensor:
        bins = self._bins()
        return torch.where(bins.counts > 0, bins.gaps, torch.zeros_like(bins.gaps)).max()


class ClasswiseCalibrationError(Metric):
    r"""Streaming class-wise ECE (= :func:`~cigl_bayes.metrics.classwise_ece`): per class ``k`` the
    equal-width ECE of the one-vs-rest problem (score :math:`p_k`, target :math:`1[y=k]`), averaged
    over the ``num_classes`` classes."""

    is_differentiable = False
    higher_is_better = False
    full_state_update = False
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    def __init__(self, num_classes: int, n_bins: int = 15, validate_args: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}; pass the number of columns of probs.")
        self.num_classes = num_classes
        self.n_bins = _check_n_bins(n_bins)
        self.validate_args = validate_args
        slots = num_classes * (self.n_bins + 1)
        self.add_state("counts", _zeros(slots, torch.long), dist_reduce_fx="sum")
        self.add_state("conf_sum", _zeros(slots), dist_reduce_fx="sum")
        self.add_state("acc_sum", _zeros(slots), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, probs: Tensor, labels: Tensor) -> None:
        """Add a batch: ``probs`` ``(N, num_classes)``, ``labels`` ``(N,)``."""
        if self.validate_args:
            probs, labels = check_probs_labels(probs, labels)
            if probs.shape[1] != self.num_classes:
                raise ValueError(f"probs has {probs.shape[1]} columns but num_classes={self.num_classes}; "
                                 "build the metric with the model's number of classes.")
        probs = probs.detach()
        k, slots = self.num_classes, self.n_bins + 1
        classes = torch.arange(k, device=probs.device)
        idx = (_uniform_index(probs, self.n_bins) + classes * slots).reshape(-1)
        target = (labels.to(device=probs.device)[:, None] == classes).reshape(-1)
        self.counts.scatter_add_(0, idx, torch.ones_like(idx))
        self.conf_sum.scatter_add_(0, idx, probs.reshape(-1).to(_F64))
        self.acc_sum.scatter_add_(0, idx, target.to(_F64))
        self.total += probs.shape[0]

    def compute(self) -> Tensor:
        _nonempty(self.total, type(self).__name__)
        denom = self.counts.clamp_min(1).to(_F64)
        gaps = (self.acc_sum / denom - self.conf_sum / denom).abs()
        per_class = (gaps * self.counts.to(_F64)).reshape(self.num_classes, -1).sum(dim=1) / self.total
        return per_class.mean()


# ----------------------------------------------------------------------------------------
# proper scores
# ----------------------------------------------------------------------------------------
class _MeanOverExamples(Metric):
    """Sum of a per-example score and the example count, both reduced with ``"sum"``."""

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, validate_args: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.validate_args = validate_args
        self.add_state("score_sum", torch.zeros((), dtype=_F64), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def _add(self, per_example: Tensor) -> None:
        self.score_sum += per_example.sum()
        self.total += per_example.shape[0]

    def compute(self) -> Tensor:
        _nonempty(self.total, type(self).__name__)
        return self.score_sum / self.total


class NegativeLogLikelihood(_MeanOverExamples):
    r"""Streaming mean NLL :math:`-\frac1N\sum_i \log p_{i y_i}`.

    ``log_probs=False`` (default): ``update`` takes probabilities and clamps
    :math:`p_{iy_i}` at ``eps`` (= :func:`~cigl_bayes.metrics.negative_log_likelihood`);
    ``log_probs=True``: it takes log-probabilities, no clamp
    (= :func:`~cigl_bayes.metrics.nll_from_log_probs`).
    """

    plot_lower_bound = 0.0

    def __init__(self, log_probs: bool = False, eps: float = 1e-12, validate_args: bool = True, **kwargs: Any) -> None:
        super().__init__(validate_args=validate_args, **kwargs)
        self.log_probs = bool(log_probs)
        self.eps = check_eps(eps)

    def update(self, preds: Tensor, labels: Tensor) -> None:
        """Add a batch: ``preds`` ``(N, K)`` probabilities (or log-probabilities), ``labels`` ``(N,)``."""
        name = "log_probs" if self.log_probs else "probs"
        if self.validate_args:
            _check_scores(preds, name)
            _check_labels(labels, preds.shape[0], preds.shape[1], name)
        labels = labels.to(device=preds.device, dtype=torch.long)
        picked = preds.detach().gather(1, labels[:, None]).squeeze(1).to(_F64)
        self._add(-picked if self.log_probs else -torch.log(picked.clamp_min(self.eps)))


class BrierScore(_MeanOverExamples):
    r"""Streaming multi-class Brier score :math:`\frac1N\sum_i\sum_k (p_{ik} - 1[y_i=k])^2`
    (= :func:`~cigl_bayes.metrics.brier_score`)."""

    plot_lower_bound = 0.0
    plot_upper_bound = 2.0

    def update(self, probs: Tensor, labels: Tensor) -> None:
        """Add a batch: ``probs`` ``(N, K)``, ``labels`` ``(N,)``."""
        if self.validate_args:
            probs, labels = check_probs_labels(probs, labels)
        p = probs.detach().to(_F64)
        labels = labels.to(device=p.device, dtype=torch.long)
        self._add((p * p).sum(dim=1) - 2.0 * p.gather(1, labels[:, None]).squeeze(1) + 1.0)


# ----------------------------------------------------------------------------------------
# OOD detection
# ----------------------------------------------------------------------------------------
class _OODMetric(Metric):
    """Keeps every score and its in-distribution flag (``"cat"`` states); ``compute`` splits them."""

    is_differentiable = False
    full_state_update = False
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    def __init__(self, validate_args: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.validate_args = validate_args
        self.add_state("scores", [], dist_reduce_fx="cat")
        self.add_state("is_id", [], dist_reduce_fx="cat")

    def update(self, scores: Tensor, is_id: Tensor) -> None:
        """Add a batch: ``scores`` ``(N,)`` (larger = more in-distribution) and ``is_id`` ``(N,)``
        (true / 1 for in-distribution examples, false / 0 for OOD ones)."""
        if self.validate_args:
            if not isinstance(scores, Tensor) or scores.dim() != 1:
                raise ValueError(f"scores must be a 1-D tensor, got {getattr(scores, 'shape', type(scores).__name__)}; "
                                 "pass one score per example.")
            if not isinstance(is_id, Tensor) or tuple(is_id.shape) != tuple(scores.shape):
                raise ValueError(f"is_id must be a tensor shaped like scores {tuple(scores.shape)}, got "
                                 f"{getattr(is_id, 'shape', type(is_id).__name__)}; pass one flag per score.")
            if not bool(torch.isfinite(scores).all()):
                raise ValueError("scores contains NaN or Inf values; fix the score function or filter those rows.")
            if not bool(((is_id == 0) | (is_id == 1)).all()):
                raise ValueError("is_id must hold only 0/1 (or False/True); 1 marks an in-distribution example.")
        self.scores.append(scores.detach().to(_F64))
        self.is_id.append(is_id.detach().to(device=scores.device, dtype=torch.bool))

    def _split(self) -> tuple[Tensor, Tensor]:
        if not len(self.scores):
            raise ValueError(f"{type(self).__name__} has seen no examples; call update(...) before compute().")
        scores = dim_zero_cat(self.scores).to(_F64)
        is_id = dim_zero_cat(self.is_id).to(device=scores.device, dtype=torch.bool)
        score_id, score_ood = scores[is_id], scores[~is_id]
        if score_id.numel() == 0 or score_ood.numel() == 0:
            raise ValueError(f"{type(self).__name__} needs both in-distribution and OOD examples, got "
                             f"{score_id.numel()} ID and {score_ood.numel()} OOD; update with both kinds.")
        return score_id, score_ood

    def _value(self, fn: Callable[[Tensor, Tensor], float]) -> Tensor:
        return torch.tensor(fn(*self._split()), dtype=_F64, device=self.device)


class OODAUROC(_OODMetric):
    """Streaming AUROC, ID positive (= :func:`~cigl_bayes.metrics.auroc`)."""

    higher_is_better = True

    def compute(self) -> Tensor:
        return self._value(ood.auroc)


class OODFPRAtTPR(_OODMetric):
    """Streaming FPR at TPR >= ``tpr`` (FPR95 by default; = :func:`~cigl_bayes.metrics.fpr_at_tpr`)."""

    higher_is_better = False

    def __init__(self, tpr: float = 0.95, validate_args: bool = True, **kwargs: Any) -> None:
        super().__init__(validate_args=validate_args, **kwargs)
        self.tpr = ood.check_tpr(tpr)

    def compute(self) -> Tensor:
        return self._value(lambda s_id, s_ood: ood.fpr_at_tpr(s_id, s_ood, self.tpr))


class OODAUPRIn(_OODMetric):
    """Streaming average precision, ID positive (= :func:`~cigl_bayes.metrics.aupr_in`)."""

    higher_is_better = True

    def compute(self) -> Tensor:
        return self._value(ood.aupr_in)


class OODAUPROut(_OODMetric):
    """Streaming average precision, OOD positive with score ``-S`` (= :func:`~cigl_bayes.metrics.aupr_out`)."""

    higher_is_better = True

    def compute(self) -> Tensor:
        return self._value(ood.aupr_out)


class OODReport(_OODMetric):
    """All four OOD metrics at once: ``{"auroc", "fpr95", "aupr_in", "aupr_out"}``
    (= :func:`~cigl_bayes.metrics.ood_report`)."""

    def compute(self) -> dict[str, Tensor]:
        report = ood.ood_report(*self._split())
        return {k: torch.tensor(v, dtype=_F64, device=self.device) for k, v in report.items()}
