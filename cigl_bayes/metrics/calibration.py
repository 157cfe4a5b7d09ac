r"""Calibration metrics: binned top-label ECE/MCE, adaptive ECE and class-wise ECE.

Top-label binning uses the confidence :math:`c_i = \max_k p_{ik}` and correctness
:math:`a_i = 1[\arg\max_k p_{ik} = y_i]` (ties: first maximal index, as ``Tensor.max``).
For a partition into bins :math:`B_b`,

.. math::
    \mathrm{ECE} = \sum_b \frac{|B_b|}{N}\,\bigl|\mathrm{acc}(B_b) - \mathrm{conf}(B_b)\bigr|,\qquad
    \mathrm{MCE} = \max_{b:\,|B_b|>0} \bigl|\mathrm{acc}(B_b) - \mathrm{conf}(B_b)\bigr|.

Bin-edge convention for ``binning="uniform"`` (identical to ``torchmetrics`` 1.x,
``multiclass_calibration_error``; verified against it in the tests):

* edges are ``e = torch.linspace(0, 1, n_bins + 1, dtype=torch.float32)`` and the
  confidence is compared in float32 (torchmetrics casts confidences with ``.float()``);
* the bin index is ``torch.bucketize(c, e, right=True) - 1``, i.e. bins are
  **left-closed, right-open** ``[e_b, e_{b+1})``: a confidence exactly on an edge
  (0.5, 0.7, ...) opens the *upper* bin;
* a confidence of exactly 1.0 falls in an extra, degenerate bin ``{1.0}`` (index
  ``n_bins``), so :class:`CalibrationBins` holds ``n_bins + 1`` uniform bins.

``binning="quantile"`` gives equal-mass (adaptive) bins: examples are stably sorted by
confidence and split like ``numpy.array_split`` (the first ``N mod n_bins`` bins get one
extra example), so every bin holds ``floor(N/n_bins)`` or ``ceil(N/n_bins)`` examples.

Bin statistics are accumulated in float64 with ``scatter_add_`` (device-agnostic, no host
loops).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
from torch import Tensor

from cigl_bayes.metrics.classification import accuracy, brier_score, check_probs_labels, nll_from_log_probs, negative_log_likelihood

__all__ = [
    "ECE_BINS",
    "CalibrationBins",
    "calibration_bins",
    "expected_calibration_error",
    "maximum_calibration_error",
    "classwise_ece",
    "calibration_report",
]

_BINNINGS = ("uniform", "quantile")
#: Equal-width bins of the reported ``ece`` (the CigL code's choice); reliability diagrams use the same.
ECE_BINS = 10


@dataclass(frozen=True)
class CalibrationBins:
    """Per-bin statistics of a top-label (or one-vs-rest) calibration binning.

    Attributes:
        confidence: ``(B,)`` float64, mean confidence per bin (0 for empty bins).
        accuracy: ``(B,)`` float64, mean correctness per bin (0 for empty bins).
        counts: ``(B,)`` int64, number of examples per bin.
        lower: ``(B,)`` float64, lower edge of each bin.
        upper: ``(B,)`` float64, upper edge of each bin.
        edges: ``(n_bins + 1,)`` float64 bin boundaries (uniform: the float32 linspace used
            for assignment; quantile: sorted-confidence values at the bin starts, then the max).
        n_bins: requested number of bins (``B = n_bins + 1`` for uniform, see module doc).
        binning: ``"uniform"`` or ``"quantile"``.
    """

    confidence: Tensor
    accuracy: Tensor
    counts: Tensor
    lower: Tensor
    upper: Tensor
    edges: Tensor
    n_bins: int
    binning: str

    @property
    def total(self) -> int:
        """Number of binned examples :math:`N`."""
        return int(self.counts.sum())

    @property
    def proportions(self) -> Tensor:
        """Fraction of examples per bin, :math:`|B_b|/N`."""
        return self.counts.to(torch.float64) / self.counts.sum().clamp_min(1)

    @property
    def gaps(self) -> Tensor:
        """Per-bin calibration gap :math:`|\\mathrm{acc}_b - \\mathrm{conf}_b|` (0 for empty bins)."""
        return (self.accuracy - self.confidence).abs()

    def ece(self) -> float:
        """Expected calibration error of this binning."""
        return float((self.proportions * self.gaps).sum())

    def mce(self) -> float:
        """Maximum calibration error over non-empty bins."""
        return float(torch.where(self.counts > 0, self.gaps, torch.zeros_like(self.gaps)).max())


# ----------------------------------------------------------------------------------------
# validation helpers
# ----------------------------------------------------------------------------------------
def _check_n_bins(n_bins: int) -> int:
    if isinstance(n_bins, bool):
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}; pass e.g. n_bins=15.")
    try:
        n = operator.index(n_bins)
    except TypeError:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}; pass e.g. n_bins=15.") from None
    if n < 1:
        raise ValueError(f"n_bins must be >= 1, got {n}; pass e.g. n_bins=15.")
    return n


def _check_binning(binning: str) -> str:
    if binning not in _BINNINGS:
        raise ValueError(f"unknown binning {binning!r}; use one of {_BINNINGS} ('quantile' = equal-mass/adaptive).")
    return binning


# ----------------------------------------------------------------------------------------
# core (unvalidated) kernels
# ----------------------------------------------------------------------------------------
def _uniform_edges(n_bins: int, device: torch.device) -> Tensor:
    """Float32 equal-width edges exactly as torchmetrics builds them for float32 confidences."""
    return torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float32, device=device)


def _uniform_index(conf: Tensor, n_bins: int) -> Tensor:
    """Bin index in ``[0, n_bins]`` (``n_bins`` = the ``{1.0}`` bin), torchmetrics convention."""
    edges = _uniform_edges(n_bins, conf.device)
    idx = torch.bucketize(conf.to(torch.float32).contiguous(), edges, right=True) - 1
    return idx.clamp_(0, n_bins)


def _quantile_index(conf: Tensor, n_bins: int) -> tuple[Tensor, Tensor]:
    """Equal-mass bin index (``numpy.array_split`` sizes over the stable sort) and edges."""
    n = conf.shape[0]
    device = conf.device
    sorted_conf, order = torch.sort(conf, stable=True)
    q, rem = divmod(n, n_bins)
    ranks = torch.arange(n, device=device)
    big = rem * (q + 1)  # ranks covered by the first `rem` bins of size q + 1
    if q == 0:
        bin_of_rank = ranks  # fewer examples than bins: one per bin, rest empty
    else:
        bin_of_rank = torch.where(ranks < big, ranks // (q + 1), rem + (ranks - big).clamp_min(0) // q)
    idx = torch.empty_like(bin_of_rank)
    idx[order] = bin_of_rank
    b = torch.arange(n_bins, device=device)
    starts = (b * q + b.clamp_max(rem)).clamp_max(n - 1)
    edges = torch.cat([sorted_conf[starts], sorted_conf[-1:]]).to(torch.float64)
    return idx, edges


def _bin_stats(idx: Tensor, conf: Tensor, correct: Tensor, n_slots: int) -> tuple[Tensor, Tensor, Tensor]:
    """Scatter-add per-slot counts, mean confidence and mean correctness."""
    device = conf.device
    counts = torch.zeros(n_slots, dtype=torch.long, device=device).scatter_add_(0, idx, torch.ones_like(idx))
    conf_sum = torch.zeros(n_slots, dtype=torch.float64, device=device).scatter_add_(0, idx, conf.to(torch.float64))
    acc_sum = torch.zeros(n_slots, dtype=torch.float64, device=device).scatter_add_(0, idx, correct.to(torch.float64))
    denom = counts.clamp_min(1).to(torch.float64)
    return conf_sum / denom, acc_sum / denom, counts


def _bins(probs: Tensor, labels: Tensor, n_bins: int, binning: str) -> CalibrationBins:
    conf, pred = probs.max(dim=1)
    correct = pred == labels
    if binning == "uniform":
        idx = _uniform_index(conf, n_bins)
        edges = _uniform_edges(n_bins, probs.device).to(torch.float64)
        lower = edges
        upper = torch.cat([edges[1:], edges[-1:]])
        n_slots = n_bins + 1
    else:
        idx, edges = _quantile_index(conf, n_bins)
        lower, upper = edges[:-1], edges[1:]
        n_slots = n_bins
    mean_conf, mean_acc, counts = _bin_stats(idx, conf, correct, n_slots)
    return CalibrationBins(mean_conf, mean_acc, counts, lower, upper, edges, n_bins, binning)


def _classwise_ece(probs: Tensor, labels: Tensor, n_bins: int) -> float:
    n, k = probs.shape
    slots = n_bins + 1
    idx = _uniform_index(probs, n_bins) + torch.arange(k, device=probs.device) * slots  # (N, K)
    target = labels[:, None] == torch.arange(k, device=probs.device)
    conf, acc, counts = _bin_stats(idx.reshape(-1), probs.reshape(-1), target.reshape(-1), k * slots)
    per_class = ((acc - conf).abs() * counts.to(torch.float64)).reshape(k, slots).sum(dim=1) / n
    return float(per_class.mean())


# ----------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------
def calibration_bins(probs: Tensor, labels: Tensor, n_bins: int = 15, binning: str = "uniform") -> CalibrationBins:
    """Top-label calibration bins (see the module docstring for the edge convention).

    Args:
        probs: ``(N, K)`` class probabilities.
        labels: ``(N,)`` integer labels in ``[0, K)``.
        n_bins: number of bins (``>= 1``).
        binning: ``"uniform"`` (equal-width on [0, 1]) or ``"quantile"`` (equal-mass).
    """
    n_bins = _check_n_bins(n_bins)
    binning = _check_binning(binning)
    probs, labels = check_probs_labels(probs, labels)
    return _bins(probs, labels, n_bins, binning)


def expected_calibration_error(probs: Tensor, labels: Tensor, n_bins: int = 15, binning: str = "uniform") -> float:
    r"""Top-label ECE :math:`\sum_b \frac{|B_b|}{N}|\mathrm{acc}_b - \mathrm{conf}_b|`.

    With ``binning="uniform"`` this equals torchmetrics'
    ``multiclass_calibration_error(..., norm="l1")``; ``"quantile"`` gives adaptive ECE.
    """
    return calibration_bins(probs, labels, n_bins, binning).ece()


def maximum_calibration_error(probs: Tensor, labels: Tensor, n_bins: int = 15, binning: str = "uniform") -> float:
    r"""Top-label MCE :math:`\max_{b: |B_b| > 0} |\mathrm{acc}_b - \mathrm{conf}_b|` (torchmetrics ``norm="max"``)."""
    return calibration_bins(probs, labels, n_bins, binning).mce()


def classwise_ece(probs: Tensor, labels: Tensor, n_bins: int = 15) -> float:
    r"""Class-wise ECE :math:`\frac1K\sum_k \sum_b \frac{|B_{kb}|}{N}\,|\bar y_{kb} - \bar p_{kb}|`.

    For each class ``k`` the one-vs-rest problem (score ``p_k``, target ``1[y = k]``) is binned
    with the same equal-width convention as the top-label ECE (bins over ``p_k``); the ``K``
    resulting ECEs are averaged. Per class this equals torchmetrics'
    ``binary_calibration_error(p[:, k], y == k)`` for float32 inputs.
    """
    n_bins = _check_n_bins(n_bins)
    probs, labels = check_probs_labels(probs, labels)
    return _classwise_ece(probs, labels, n_bins)


def calibration_report(probs: Tensor, labels: Tensor, log_probs: Tensor | None = None) -> dict[str, float]:
    """Summary of accuracy, proper scores and calibration errors.

    ``log_probs`` (the log of ``probs``, computed in log space): the NLL is read from them
    exactly; without them it is ``-log max(p, 1e-12)``, which caps it at 27.6 nats per example.

    Keys: ``accuracy``; ``ece`` (10 equal-width bins, the CigL code's choice); ``ece_15``;
    ``ece_adaptive`` (15 equal-mass bins); ``mce`` (15 equal-width); ``nll``; ``brier``;
    ``classwise_ece`` (15 equal-width); ``confidence``, the mean top-label probability
    (``confidence - accuracy`` > 0: over-confident on average).
    """
    probs, labels = check_probs_labels(probs, labels)
    b15 = _bins(probs, labels, 15, "uniform")
    return {
        "accuracy": accuracy(probs, labels),
        "ece": _bins(probs, labels, ECE_BINS, "uniform").ece(),
        "ece_15": b15.ece(),
        "ece_adaptive": _bins(probs, labels, 15, "quantile").ece(),
        "mce": b15.mce(),
        "nll": negative_log_likelihood(probs, labels) if log_probs is None else nll_from_log_probs(log_probs, labels),
        "brier": brier_score(probs, labels),
        "classwise_ece": _classwise_ece(probs, labels, 15),
        "confidence": float(probs.max(-1).values.double().mean()),
    }
