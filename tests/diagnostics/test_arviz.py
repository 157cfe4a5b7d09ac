"""``cigl_bayes.diagnostics``: MC draws -> ``InferenceData``, PSIS-LOO, PPC / LOO-PIT plots."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from cigl_bayes.cigl.random_mask import RandomMask
from cigl_bayes.diagnostics import held_out_report, loo_report, mc_class_probs, to_inference_data, write_diagnostic_plots
from cigl_bayes.evaluate import mc_predict_probs
from cigl_bayes.metrics import nll_from_log_probs
from cigl_bayes.sparse.network import SparseNet

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def smooth_probs(chains: int, draws: int, n: int, k: int, noise: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-draw probabilities = softmax(point logits + small draw noise), labels drawn from the mean."""
    g = torch.Generator().manual_seed(seed)
    centre = 1.5 * torch.randn(n, k, generator=g, dtype=torch.float64)
    probs = torch.softmax(centre + noise * torch.randn(chains, draws, n, k, generator=g, dtype=torch.float64), -1)
    y = torch.multinomial(probs.mean((0, 1)), 1, generator=g).squeeze(-1)
    return probs, y


def test_groups_shapes_and_dims() -> None:
    probs, y = smooth_probs(2, 30, 50, 4, noise=0.2)
    idata = to_inference_data(probs, y)
    for group in ("posterior", "posterior_predictive", "log_likelihood", "observed_data"):
        assert hasattr(idata, group)
    assert idata.log_likelihood["y"].dims == ("chain", "draw", "obs")
    assert idata.log_likelihood["y"].shape == (2, 30, 50)
    assert idata.posterior_predictive["y"].dims == ("chain", "draw", "obs")
    assert idata.posterior_predictive["y"].shape == (2, 30, 50)
    assert idata.observed_data["y"].dims == ("obs",)
    np.testing.assert_array_equal(idata.observed_data["y"].values, y.numpy())
    np.testing.assert_array_equal(idata.log_likelihood["obs"].values, np.arange(50))
    pp = idata.posterior_predictive["y"].values
    assert np.issubdtype(pp.dtype, np.integer) and pp.min() >= 0 and pp.max() < 4

    single = to_inference_data(probs[0].numpy(), y, sample_ppc=False)  # (draws, N, K) -> one chain
    assert single.log_likelihood["y"].shape == (1, 30, 50)
    assert not hasattr(single, "posterior_predictive")

    with pytest.raises(ValueError):
        to_inference_data(probs[0, 0], y)
    with pytest.raises(ValueError):
        to_inference_data(probs, y[:-1])


def test_log_likelihood_is_log_of_selected_probs() -> None:
    probs, y = smooth_probs(3, 10, 40, 5, noise=0.5)
    idata = to_inference_data(probs, y)
    expected = np.log(probs[..., torch.arange(40), y].numpy())
    np.testing.assert_array_equal(idata.log_likelihood["y"].values, expected)


def test_ppc_is_seeded() -> None:
    probs, y = smooth_probs(1, 5, 20, 3, noise=0.5)
    a, b, c = (to_inference_data(probs, y, seed=s).posterior_predictive["y"].values for s in (0, 0, 1))
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()


def test_loo_close_to_naive_for_smooth_draws() -> None:
    probs, y = smooth_probs(2, 200, 300, 4, noise=0.05)
    idata = to_inference_data(probs, y, sample_ppc=False)
    report = loo_report(idata)
    assert set(report) >= {"elpd_loo", "se", "p_loo", "frac_k_gt_0.7"}
    pointwise = probs[..., torch.arange(300), y].reshape(-1, 300)
    naive = float(pointwise.mean(0).log().sum())  # lppd = sum_n log mean_s p(y_n | s)
    assert abs(report["elpd_loo"] - naive) < 0.02 * abs(naive)
    assert report["elpd_loo"] <= naive
    assert report["p_loo"] == pytest.approx(naive - report["elpd_loo"], rel=1e-6)
    assert report["frac_k_gt_0.7"] == 0.0
    assert report["se"] > 0
    # the report agrees with arviz itself
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert float(az.loo(idata).elpd_loo) == pytest.approx(report["elpd_loo"])


def test_held_out_report_names_what_loo_computes_on_test_points() -> None:
    """On held-out points: lpd is the exact log predictive density of the MC mean (= -N NLL), the
    PSIS value is a reweighting below it, and their gap vanishes when every draw agrees."""
    probs, y = smooth_probs(1, 100, 200, 4, noise=0.5, seed=4)
    report = held_out_report(to_inference_data(probs, y, sample_ppc=False))
    mean = probs.reshape(-1, 200, 4).double().mean(0)
    assert report["lpd"] == pytest.approx(-200 * nll_from_log_probs(mean.log(), y), rel=1e-9)
    assert report["draw_disagreement"] == pytest.approx(report["lpd"] - report["psis_reweighted_lpd"])
    assert report["draw_disagreement"] > 0 and report["n_obs"] == 200
    same = held_out_report(to_inference_data(probs[:, :1].expand(1, 5, 200, 4), y, sample_ppc=False))
    assert same["draw_disagreement"] == pytest.approx(0.0, abs=1e-9)


def test_posterior_predictive_frequencies_match_mean_probs() -> None:
    probs, y = smooth_probs(2, 50, 400, 3, noise=1.0, seed=3)
    pp = to_inference_data(probs, y, seed=7).posterior_predictive["y"].values  # (2, 50, 400)
    freq = np.stack([(pp == c).mean((0, 1)) for c in range(3)], -1)  # per point, over 100 draws
    mean = probs.mean((0, 1)).numpy()
    # overall class frequencies: 40 000 categorical samples
    np.testing.assert_allclose(freq.mean(0), mean.mean(0), atol=0.01)
    # per point: 100 samples each, binomial sd <= 0.05
    assert np.abs(freq - mean).max() < 0.25
    assert np.abs(freq - mean).mean() < 0.05


def test_write_diagnostic_plots(tmp_path) -> None:
    probs, y = smooth_probs(2, 40, 60, 3, noise=0.3)
    paths = write_diagnostic_plots(to_inference_data(probs, y), tmp_path / "plots", prefix="run_")
    assert [p.name for p in paths] == ["run_ppc.png", "run_loo_pit.png"]
    for p in paths:
        data = p.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000
    import matplotlib.pyplot as plt

    assert plt.get_fignums() == []
    few, y = smooth_probs(1, 10, 30, 3, noise=0.3)  # fewer draws than the 50 PPC curves drawn by default
    assert all(p.is_file() for p in write_diagnostic_plots(to_inference_data(few, y), tmp_path / "few"))


def tiny_sparse_net() -> tuple[SparseNet, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    centres = 2.0 * torch.randn(3, 6, generator=g)
    y = torch.arange(300) % 3
    x = centres[y] + torch.randn(300, 6, generator=g)
    torch.manual_seed(0)
    net = SparseNet(nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 3)), 0.5, random_mask=RandomMask(0.2, seed=1))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net.train()
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return net, x, y


def test_mc_class_probs_sparse_net() -> None:
    net, x, y = tiny_sparse_net()
    state = copy.deepcopy(net.random_mask.state_dict())
    draws = mc_class_probs(net, x, 20, batch_size=128)
    assert draws.shape == (20, 300, 3)
    assert net.training and not net.sampling  # restored
    torch.testing.assert_close(draws.sum(-1), torch.ones(20, 300))
    assert (draws[0] - draws[1]).abs().max() > 1e-3  # fresh random mask per draw
    net.random_mask.load_state_dict(state)
    torch.testing.assert_close(draws.mean(0), mc_predict_probs(net, x, 20, batch_size=128), atol=1e-5, rtol=0)

    idata = to_inference_data(draws, y)
    report = loo_report(idata)
    assert report["elpd_loo"] < 0 and np.isfinite(report["se"])
    assert report["elpd_loo"] > 300 * np.log(1 / 3)  # trained: better than uniform


def test_mc_class_probs_dropout() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))
    model.eval()
    x = torch.randn(30, 4)
    draws = mc_class_probs(model, x, 5)
    assert draws.shape == (5, 30, 3)
    assert (draws[0] - draws[1]).abs().max() > 1e-4
    assert not model.training and not any(m.training for m in model.modules())
    with pytest.raises(ValueError):
        mc_class_probs(model, x, 0)
