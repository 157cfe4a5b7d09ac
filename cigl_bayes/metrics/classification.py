"""Proper scoring rules and accuracy for probabilistic classifiers.

All functions take ``probs`` (float tensor of shape ``(N, K)``, rows summing to one)
and ``labels`` (integer tensor of shape ``(N,)`` with values in ``[0, K)``), on any
device, and return Python floats. Computation is vectorised (no per-example host loops).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["accuracy", "negative_log_likelihood", "brier_score"]


def _check_labels(labels: Tensor, n: int, k: int, what: str = "probs") -> None:
    """Validate ``labels`` against an ``(n, k)`` score matrix called ``what``."""
    if not isinstance(labels, Tensor):
        raise ValueError(f"labels must be a torch.Tensor, got {type(labels).__name__}; wrap it with torch.as_tensor(...).")
    if labels.dim() != 1:
        raise ValueError(
            f"labels must be 1-D of shape (N,), got shape {tuple(labels.shape)}; pass class indices, not one-hot rows "
            "(use labels.argmax(1) or labels.reshape(-1))."
        )
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"labels must be an integer tensor of class indices, got dtype {labels.dtype}; use labels.long().")
    if labels.shape[0] != n:
        raise ValueError(
            f"length mismatch: {what} has {n} rows but labels has {labels.shape[0]} entries; pass one label per row."
        )
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= k:
        raise ValueError(
            f"labels must lie in [0, {k}) for {k} classes, got values in [{lo}, {hi}]; "
            f"check the label encoding or the number of columns of {what}."
        )


def _check_scores(x: Tensor, name: str) -> None:
    """Validate a 2-D, non-empty, finite floating score matrix (probs or logits)."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}; wrap it with torch.as_tensor(...).")
    if x.dim() != 2:
        raise ValueError(
            f"{name} must be 2-D of shape (N, K), got shape {tuple(x.shape)}; "
            f"reshape to (N, K) (for binary scores stack [1 - p, p] along dim 1)."
        )
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"empty input: {name} has shape {tuple(x.shape)}; pass at least one example and one class.")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}; use {name}.float().")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or Inf values; fix the upstream computation or filter those rows.")


def check_probs_labels(probs: Tensor, labels: Tensor, name: str = "probs") -> tuple[Tensor, Tensor]:
    """Validate a ``(probs, labels)`` pair and return them with ``labels`` as int64 on ``probs``' device.

    Raises:
        ValueError: with a one-line message naming the fix.
    """
    _check_scores(probs, name)
    _check_labels(labels, probs.shape[0], probs.shape[1], name)
    return probs, labels.to(device=probs.device, dtype=torch.long)


def accuracy(probs: Tensor, labels: Tensor) -> float:
    r"""Top-1 accuracy :math:`\frac1N \sum_i 1[\arg\max_k p_{ik} = y_i]` (ties: first maximal index)."""
    probs, labels = check_probs_labels(probs, labels)
    pred = probs.argmax(dim=1)
    return float((pred == labels).to(torch.float64).mean())


def check_eps(eps: float) -> float:
    """The NLL clamp ``eps`` as a float > 0, else a ValueError naming the fix."""
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}; use a small positive clamp such as 1e-12.")
    return float(eps)


def negative_log_likelihood(probs: Tensor, labels: Tensor, eps: float = 1e-12) -> float:
    r"""Mean negative log-likelihood :math:`-\frac1N \sum_i \log \max(p_{i y_i}, \varepsilon)`."""
    probs, labels = check_probs_labels(probs, labels)
    check_eps(eps)
    p_y = probs.gather(1, labels[:, None]).squeeze(1).to(torch.float64)
    return float(-torch.log(p_y.clamp_min(eps)).mean())


def nll_from_log_probs(log_probs: Tensor, labels: Tensor) -> float:
    r"""Mean negative log-likelihood from log-probabilities, :math:`-\frac1N \sum_i \log p_{i y_i}`,
    with no clamp: exact for the over-confident predictions a probability clamp would cap
    (logits ``[0, 100]`` with label 0 have NLL 100, not ``-log(1e-12) = 27.6``)."""
    _check_scores(log_probs, "log_probs")
    _check_labels(labels, log_probs.shape[0], log_probs.shape[1], "log_probs")
    labels = labels.to(device=log_probs.device, dtype=torch.long)
    return float(-log_probs.gather(1, labels[:, None]).squeeze(1).to(torch.float64).mean())


def brier_score(probs: Tensor, labels: Tensor) -> float:
    r"""Multi-class Brier score :math:`\frac1N \sum_i \sum_k (p_{ik} - 1[y_i = k])^2` (range ``[0, 2]``).

    For ``K = 2`` this is twice the usual binary Brier score :math:`\frac1N\sum_i (p_{i1} - y_i)^2`.
    """
    probs, labels = check_probs_labels(probs, labels)
    p = probs.to(torch.float64)
    sq = (p * p).sum(dim=1) - 2.0 * p.gather(1, labels[:, None]).squeeze(1) + 1.0
    return float(sq.mean())
