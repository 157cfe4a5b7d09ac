r"""Scores of a regression predictive that is a mixture of Gaussians.

Both the MC predictive of a masked network (:math:`S` random masks, shared noise :math:`\sigma^2`)
and a deep GP's (:math:`S` propagated samples) are equal-weight mixtures

.. math::
    p(y \mid x) = \frac1S \sum_{s=1}^S \mathcal N\bigl(y;\ m_s(x),\ v_s(x)\bigr),

given here as ``means`` and ``variances`` of shape ``(S, N)``.

* NLL: :math:`-\frac1N\sum_i \log p(y_i \mid x_i)` (log-sum-exp over components).
* RMSE of the mixture mean :math:`\bar m = \frac1S\sum_s m_s`.
* Predictive variance :math:`\frac1S\sum_s v_s + \frac1S\sum_s (m_s - \bar m)^2`.
* Calibration error (quantile calibration, Kuleshov et al. 2018): with the PIT values
  :math:`u_i = F_i(y_i) = \frac1S\sum_s \Phi((y_i - m_{s,i}) / \sqrt{v_{s,i}})`, the mean over
  levels :math:`q \in \{0.05, 0.10, \dots, 0.95\}` of :math:`|\frac1N\#\{u_i \le q\} - q|`; zero for a
  calibrated predictive (then :math:`u \sim U(0, 1)`). The regression analogue of ECE.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

CALIBRATION_LEVELS = tuple(round(0.05 * k, 2) for k in range(1, 20))


def _check(means: Tensor, variances: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
    means, variances = torch.as_tensor(means, dtype=torch.float64), torch.as_tensor(variances, dtype=torch.float64)
    if means.dim() == 1:
        means, variances = means.unsqueeze(0), variances.unsqueeze(0)
    if means.dim() != 2 or means.shape != variances.shape:
        raise ValueError(f"means and variances must both be (S, N) (or (N,)), got {tuple(means.shape)} and {tuple(variances.shape)}")
    if not bool((variances > 0).all()):
        raise ValueError("predictive variances must be > 0")
    if y is not None and y.reshape(-1).shape[0] != means.shape[1]:
        raise ValueError(f"{y.reshape(-1).shape[0]} targets for {means.shape[1]} predictions")
    return means, variances


def _targets(y: Tensor) -> Tensor:
    return torch.as_tensor(y, dtype=torch.float64).reshape(-1)


def mixture_moments(means: Tensor, variances: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and variance of the equal-weight Gaussian mixture, each ``(N,)``."""
    means, variances = _check(means, variances)
    mean = means.mean(0)
    return mean, variances.mean(0) + means.var(0, unbiased=False)


def mixture_log_density(y: Tensor, means: Tensor, variances: Tensor) -> Tensor:
    """:math:`\\log \\frac1S \\sum_s \\mathcal N(y_i; m_{s,i}, v_{s,i})` per point, ``(N,)``."""
    means, variances = _check(means, variances, y)
    y = _targets(y)
    log_n = -0.5 * (torch.log(2 * math.pi * variances) + (y - means) ** 2 / variances)
    return torch.logsumexp(log_n, dim=0) - math.log(means.shape[0])


def mixture_cdf(y: Tensor, means: Tensor, variances: Tensor) -> Tensor:
    """PIT values :math:`F_i(y_i)` of the mixture, ``(N,)``."""
    means, variances = _check(means, variances, y)
    z = (_targets(y) - means) / variances.sqrt()
    return (0.5 * torch.erfc(-z / math.sqrt(2.0))).mean(0)


def quantile_calibration_error(pit: Tensor, levels: tuple[float, ...] = CALIBRATION_LEVELS) -> float:
    """Mean over ``levels`` of :math:`|\\text{fraction of PIT values} \\le q - q|`."""
    pit = torch.as_tensor(pit, dtype=torch.float64).reshape(-1)
    q = torch.tensor(levels, dtype=torch.float64)
    observed = (pit[None, :] <= q[:, None]).double().mean(1)
    return float((observed - q).abs().mean())


def regression_report(y: Tensor, means: Tensor, variances: Tensor, scale: float = 1.0) -> dict[str, float]:
    """NLL, RMSE, calibration error and mean predictive variance, in data units.

    ``y``, ``means``, ``variances`` may be in standardised units (data = ``scale * y + shift``);
    ``scale`` converts: RMSE x scale, variance x scale², NLL + log(scale); the PIT (and so the
    calibration error) does not change.
    """
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    mean, variance = mixture_moments(means, variances)
    y = _targets(y)
    return {
        "nll": float(-mixture_log_density(y, means, variances).mean()) + math.log(scale),
        "rmse": float(((mean - y) ** 2).mean().sqrt()) * scale,
        "calibration_error": quantile_calibration_error(mixture_cdf(y, means, variances)),
        "mean_variance": float(variance.mean()) * scale**2,
    }
