r"""Temperature scaling (Guo et al., 2017): a one-parameter post-hoc calibration baseline.

Given validation logits :math:`z_i` and labels :math:`y_i`, fit

.. math::
    T^\star = \arg\min_{T > 0} \; -\frac1N \sum_i \log \operatorname{softmax}(z_i / T)_{y_i},

optimising :math:`\log T` (unconstrained) with L-BFGS and a strong-Wolfe line search.
The objective is convex in :math:`1/T`, hence unimodal in :math:`\log T`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from cigl_bayes.metrics.classification import check_probs_labels, _check_scores

__all__ = ["fit_temperature", "apply_temperature"]

_LOG_T_BOUND = math.log(1e6)  # keep T in [1e-6, 1e6]


def fit_temperature(logits: Tensor, labels: Tensor, max_iter: int = 100) -> float:
    """Fit the temperature ``T > 0`` minimising the NLL of ``softmax(logits / T)``.

    Args:
        logits: ``(N, K)`` validation logits (finite).
        labels: ``(N,)`` integer labels in ``[0, K)``.
        max_iter: maximum L-BFGS iterations.

    Returns:
        The fitted temperature as a Python float, never worse in NLL than ``T = 1``; kept in
        ``[1e-6, 1e6]`` (uninformative logits drive ``T`` towards the upper bound).
    """
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}; pass e.g. max_iter=100.")
    logits, labels = check_probs_labels(logits, labels, name="logits")
    z = logits.detach().to(torch.float64)

    def nll(log_t: Tensor) -> Tensor:
        return F.cross_entropy(z * torch.exp(-log_t), labels)

    with torch.enable_grad():
        log_t = torch.zeros((), dtype=torch.float64, device=z.device, requires_grad=True)
        opt = torch.optim.LBFGS(
            [log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe",
            tolerance_grad=1e-10, tolerance_change=1e-12,
        )

        def closure() -> Tensor:
            opt.zero_grad()
            loss = nll(log_t)
            loss.backward()
            return loss

        opt.step(closure)

    with torch.no_grad():
        fitted = log_t.detach().clamp(-_LOG_T_BOUND, _LOG_T_BOUND)
        if not bool(torch.isfinite(fitted)):
            return 1.0
        if float(nll(fitted)) > float(nll(torch.zeros_like(fitted))):
            return 1.0
        return float(torch.exp(fitted))


def apply_temperature(logits: Tensor, temperature: float) -> Tensor:
    """Temperature-scaled probabilities ``softmax(logits / T, dim=1)`` (same dtype/device as ``logits``)."""
    _check_scores(logits, "logits")
    t = float(temperature)
    if not math.isfinite(t) or t <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}; fit one with fit_temperature().")
    return torch.softmax(logits / t, dim=1)
