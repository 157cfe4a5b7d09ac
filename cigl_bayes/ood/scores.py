"""Out-of-distribution scores: one number per example, larger = more in-distribution.

For a (K+1)-way head (MOON, spec section 6) pass ``num_known=K``: the logit-based scores then
look only at the K known classes, but :func:`msp_score` keeps the unknown class's mass in the
softmax denominator.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

__all__ = ["SCORES", "energy_score", "entropy_score", "max_logit_score", "msp_score"]


def _check_logits(logits: Tensor, num_known: int | None) -> tuple[Tensor, int]:
    """Validate ``(N, C)`` logits and ``num_known`` in ``1..C``; return float logits and K."""
    if not isinstance(logits, Tensor):
        raise ValueError(f"logits must be a torch.Tensor of shape (N, C), got {type(logits).__name__}")
    if logits.dim() != 2 or logits.shape[1] == 0:
        raise ValueError(f"logits must have shape (N, C) with C >= 1, got {tuple(logits.shape)}")
    if not logits.is_floating_point():
        logits = logits.float()
    c = logits.shape[1]
    if num_known is None:
        return logits, c
    if isinstance(num_known, bool) or not isinstance(num_known, int) or not 1 <= num_known <= c:
        raise ValueError(f"num_known must be an int in 1..{c} (the number of logit columns), got {num_known!r}")
    return logits, num_known


def msp_score(logits: Tensor, num_known: int | None = None) -> Tensor:
    """Maximum softmax probability over the first ``num_known`` classes of the softmax over all logits."""
    logits, k = _check_logits(logits, num_known)
    return torch.softmax(logits, dim=1)[:, :k].amax(dim=1)


def max_logit_score(logits: Tensor, num_known: int | None = None) -> Tensor:
    """Largest logit among the first ``num_known`` classes."""
    logits, k = _check_logits(logits, num_known)
    return logits[:, :k].amax(dim=1)


def energy_score(logits: Tensor, num_known: int | None = None, temperature: float = 1.0) -> Tensor:
    """Negative free energy ``T * logsumexp(logits[:, :K] / T)``."""
    logits, k = _check_logits(logits, num_known)
    t = float(temperature)
    if not (t > 0.0 and t < float("inf")):
        raise ValueError(f"temperature must be a finite positive number, got {temperature!r}")
    return t * torch.logsumexp(logits[:, :k] / t, dim=1)


def entropy_score(probs: Tensor) -> Tensor:
    """Negative predictive entropy ``sum_c p_c log p_c`` of ``(N, C)`` probabilities (``0 log 0 = 0``)."""
    if not isinstance(probs, Tensor):
        raise ValueError(f"probs must be a torch.Tensor of shape (N, C), got {type(probs).__name__}")
    if probs.dim() != 2 or probs.shape[1] == 0:
        raise ValueError(f"probs must have shape (N, C) with C >= 1, got {tuple(probs.shape)}")
    if not probs.is_floating_point():
        probs = probs.float()
    if probs.numel() and (not torch.isfinite(probs).all() or (probs < 0).any()):
        raise ValueError("probs must be finite and non-negative (e.g. softmax outputs, possibly MC-averaged)")
    return torch.xlogy(probs, probs).sum(dim=1)


#: Logit-based scores by name; each is ``f(logits, num_known=None) -> (N,)``.
SCORES: dict[str, Callable[..., Tensor]] = {
    "msp": msp_score,
    "max_logit": max_logit_score,
    "energy": energy_score,
}
