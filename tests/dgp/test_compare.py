"""The network-vs-deep-GP comparison: noise fit, kernel report, scores and the figure."""

from __future__ import annotations

import math

import pytest
import torch

from cigl_bayes.config import recipe
from cigl_bayes.data import load_dataset
from cigl_bayes.dgp.compare import DGP, NET_MC, NET_WMA, Predictive, compare_with_dgp, fit_noise_variance, kernel_relative_errors
from cigl_bayes.dgp.deep_gp import DGPConfig
from cigl_bayes.metrics.calibration import expected_calibration_error
from cigl_bayes.metrics.regression import mixture_log_density

TINY_DGP = DGPConfig(epochs=3, num_inducing=8, num_predict_samples=4)


def test_noise_fit_is_the_maximum_likelihood_variance() -> None:
    """One draw: the ML variance of N(y; f, s^2) is mean((y - f)^2); the grid finds it to its step."""
    g = torch.Generator().manual_seed(0)
    f = torch.randn(1, 500, generator=g, dtype=torch.float64)
    y = f[0] + 0.3 * torch.randn(500, generator=g, dtype=torch.float64)
    fitted = fit_noise_variance(f, y)
    assert fitted == pytest.approx(float(((y - f[0]) ** 2).mean()), rel=10 ** (5 / 400))
    # several draws: the fitted value maximises the mixture likelihood over its neighbours
    draws = f + 0.2 * torch.randn(8, 500, generator=g, dtype=torch.float64)
    best = fit_noise_variance(draws, y)
    ll = lambda v: float(mixture_log_density(y, draws, torch.full_like(draws, v)).sum())  # noqa: E731
    assert ll(best) >= max(ll(best * 1.1), ll(best / 1.1))


def test_kernel_error_shrinks_with_width_on_data() -> None:
    x = load_dataset("breast_cancer").x_test
    errors = kernel_relative_errors(x, widths=(16, 256, 4096), keep=0.9)
    assert errors[16] > errors[256] > errors[4096]
    assert errors[4096] < 0.1
    assert errors[16] / errors[4096] == pytest.approx(math.sqrt(4096 / 16), rel=0.6)  # ~ width^-1/2


def test_predictive_scores_classification() -> None:
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(5, 40, 3, generator=g), -1)
    y = torch.randint(0, 3, (40,), generator=g)
    scores = Predictive(probs=probs).scores(y)
    mean = probs.double().mean(0)
    assert scores["nll"] == pytest.approx(float(-mean[torch.arange(40), y].log().mean()), rel=1e-6)
    assert scores["ece"] == pytest.approx(expected_calibration_error(mean, y, n_bins=10), rel=1e-9)
    assert scores["mean_entropy"] == pytest.approx(float(-(mean * mean.log()).sum(-1).mean()), rel=1e-9)


@pytest.fixture(scope="module")
def wine_comparison():
    config = recipe("wine").with_(method="cigl", optim__epochs=4)
    return compare_with_dgp("wine", seeds=(0, 1), config=config, dgp_config=TINY_DGP, mc_samples=4,
                            kernel_widths=(64,), progress=False)


def test_classification_comparison(wine_comparison, tmp_path) -> None:
    c = wine_comparison
    assert c.task == "classification" and set(c.scores) == {NET_MC, NET_WMA, DGP}
    assert all(len(per_seed) == 2 for per_seed in c.scores.values())
    summary = c.summary()
    for row in (NET_MC, NET_WMA, DGP):
        nll = [s["nll"] for s in c.scores[row]]
        assert summary[row]["nll"][0] == pytest.approx(sum(nll) / 2)
        assert 0 <= summary[row]["accuracy"][0] <= 1
    assert -1 <= c.scores[NET_MC][0]["spearman"] <= 1 and "spearman" not in c.scores[DGP][0]
    assert c.predictives[NET_MC]["test"].probs.shape == (4, 53, 3)
    assert c.nll_difference() == pytest.approx(summary[NET_MC]["nll"][0] - summary[DGP]["nll"][0])
    assert c.nll_gap() == pytest.approx((summary[NET_MC]["nll"][0] - summary[DGP]["nll"][0]) / abs(summary[DGP]["nll"][0]))
    table = c.to_markdown()
    assert table.count("\n") == 4 and "cigl-mc" in table and "spearman" in table
    assert c.plot(tmp_path / "c.png").stat().st_size > 10_000
    assert set(c.to_dict()) >= {"summary", "nll_gap", "kernel_relative_errors"}


def test_regression_comparison_scores_in_data_units(tmp_path) -> None:
    config = recipe("gap-toy").with_(method="cigl", optim__epochs=3)
    c = compare_with_dgp("gap-toy", config=config, dgp_config=TINY_DGP, mc_samples=3, kernel_widths=(), progress=False)
    data = c.data
    test = c.predictives[NET_MC]["test"]
    assert test.means.shape == (3, 200) and torch.all(test.variances == test.variances[0, 0])  # one fitted noise
    y = data.y_test.double() * data.target_std + data.target_mean
    nll = -mixture_log_density(y, test.means * data.target_std + data.target_mean, test.variances * data.target_std**2).mean()
    assert c.scores[NET_MC][0]["nll"] == pytest.approx(float(nll), rel=1e-9)
    assert c.scores[NET_MC][0]["gap_variance_ratio"] > 0 and c.scores[DGP][0]["gap_variance_ratio"] > 0
    assert "spearman" not in c.scores[NET_WMA][0] and c.scores[NET_WMA][0]["gap_variance_ratio"] == pytest.approx(1.0)
    assert c.predictives[DGP]["grid"].means.shape[1] == c.grid_x.numel()
    assert c.plot(tmp_path / "toy.png").is_file()
    assert c.kernel_errors == {}


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown comparison dataset"):
        compare_with_dgp("iris")
    with pytest.raises(ValueError, match="classification only"):
        compare_with_dgp("diabetes", config=recipe("diabetes").with_(method="moon"))
    with pytest.raises(ValueError, match="mc_samples"):
        compare_with_dgp("wine", mc_samples=1)
