"""Gaussian-mixture regression scores against scipy and numerical integration."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from cigl_bayes.metrics.regression import (
    mixture_cdf,
    mixture_log_density,
    mixture_moments,
    quantile_calibration_error,
    regression_report,
)


trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy >= 2 / < 2


def _mixture(seed: int = 0, s: int = 4, n: int = 7) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(s, n, generator=g, dtype=torch.float64)
    variances = torch.rand(s, n, generator=g, dtype=torch.float64) + 0.1
    y = torch.randn(n, generator=g, dtype=torch.float64)
    return y, means, variances


def test_log_density_and_cdf_match_scipy() -> None:
    y, means, variances = _mixture()
    sd = variances.sqrt().numpy()
    pdf = stats.norm.pdf(y.numpy()[None], means.numpy(), sd).mean(0)
    cdf = stats.norm.cdf(y.numpy()[None], means.numpy(), sd).mean(0)
    np.testing.assert_allclose(mixture_log_density(y, means, variances).numpy(), np.log(pdf), rtol=1e-12)
    np.testing.assert_allclose(mixture_cdf(y, means, variances).numpy(), cdf, rtol=1e-12)
    # one component: the plain Gaussian log density
    np.testing.assert_allclose(mixture_log_density(y, means[0], variances[0]).numpy(),
                               stats.norm.logpdf(y.numpy(), means[0].numpy(), sd[0]), rtol=1e-12)


def test_moments_match_numerical_integration() -> None:
    _, means, variances = _mixture(s=3, n=2)
    mean, variance = mixture_moments(means, variances)
    grid = np.linspace(-15, 15, 200_001)
    for i in range(2):
        pdf = stats.norm.pdf(grid[:, None], means[:, i].numpy(), variances[:, i].sqrt().numpy()).mean(1)
        m1 = trapezoid(grid * pdf, grid)
        m2 = trapezoid((grid - m1) ** 2 * pdf, grid)
        assert mean[i].item() == pytest.approx(m1, abs=1e-8)
        assert variance[i].item() == pytest.approx(m2, rel=1e-7)


def test_calibration_error_zero_when_calibrated_and_large_when_overconfident() -> None:
    n = 20_000
    g = torch.Generator().manual_seed(1)
    y = torch.randn(n, generator=g, dtype=torch.float64)
    zeros, ones = torch.zeros(1, n, dtype=torch.float64), torch.ones(1, n, dtype=torch.float64)
    assert quantile_calibration_error(mixture_cdf(y, zeros, ones)) < 0.01
    overconfident = quantile_calibration_error(mixture_cdf(y, zeros, ones / 16))
    assert overconfident > 0.15
    # exactly uniform PIT values on a midpoint grid: zero error at every level
    assert quantile_calibration_error(torch.arange(100, dtype=torch.float64).add(0.5) / 100) == pytest.approx(0.0, abs=1e-12)


def test_report_converts_to_data_units() -> None:
    y, means, variances = _mixture(seed=3, n=50)
    scale, shift = 7.5, 100.0
    standard = regression_report(y, means, variances, scale=scale)
    data = regression_report(y * scale + shift, means * scale + shift, variances * scale**2)
    for key in ("nll", "rmse", "calibration_error", "mean_variance"):
        assert standard[key] == pytest.approx(data[key], rel=1e-10)
    mean, _ = mixture_moments(means, variances)
    assert data["rmse"] == pytest.approx(math.sqrt(float(((mean - y) ** 2).mean())) * scale, rel=1e-12)


@pytest.mark.parametrize(
    "args, match",
    [
        ((torch.zeros(3), torch.zeros(2, 3), torch.ones(2, 3)), None),
        ((torch.zeros(3), torch.zeros(2, 3), torch.zeros(2, 3)), "> 0"),
        ((torch.zeros(4), torch.zeros(2, 3), torch.ones(2, 3)), "targets"),
        ((torch.zeros(3), torch.zeros(2, 3), torch.ones(3, 2)), r"\(S, N\)"),
    ],
)
def test_input_checks(args, match) -> None:
    if match is None:
        assert torch.isfinite(mixture_log_density(*args)).all()
    else:
        with pytest.raises(ValueError, match=match):
            mixture_log_density(*args)
