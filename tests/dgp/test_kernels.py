"""Claim 4 of the theory: the kernel of a one-hidden-layer masked ReLU network.

f(x) = c / sqrt(W) sum_j a_j z_j relu(w_j . x), w_j ~ N(0, prior_var I) (prior_var = 1/d as in
the spec), a_j ~ N(0, 1), unit (readout) masks z_j ~ Bernoulli(p). Given the first layer the
output covariance is p c^2 (1/W) sum_j relu(w_j . x) relu(w_j . y), which converges to
p c^2 * arccos_kernel with error ~ W^-1/2 (see theory/cigl_as_deep_gp.md).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from cigl_bayes.dgp import arccos_kernel, empirical_masked_relu_kernel, mask_factor, masked_relu_kernel_limit


D = 3
PRIOR_VAR = 1.0 / D
KEEP = 0.9


def points(n: int = 5, d: int = D, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def rel_error(estimate: torch.Tensor, reference: torch.Tensor) -> float:
    return ((estimate.double() - reference.double()).norm() / reference.double().norm()).item()


def test_arccos_kernel_matches_monte_carlo_over_weights():
    x = points()
    n_draws = 1_000_000
    w = torch.randn(n_draws, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * math.sqrt(PRIOR_VAR)
    feats = torch.relu(w @ x.T)  # (draws, n)
    mc = feats.T @ feats / n_draws
    products = feats[:, :, None] * feats[:, None, :]  # (draws, n, n): fine at n = 5
    se = products.std(dim=0) / math.sqrt(n_draws)
    k = arccos_kernel(x, prior_var=PRIOR_VAR)
    assert torch.all((mc - k).abs() <= 4 * se + 1e-12), ((mc - k).abs() / se).max()


def test_arccos_kernel_closed_forms_and_structure():
    x = points(20, 5, seed=2)
    k = arccos_kernel(x, prior_var=2.0)
    torch.testing.assert_close(k, k.T, rtol=0, atol=1e-14)
    assert torch.linalg.eigvalsh(k).min() > -1e-10
    torch.testing.assert_close(torch.diagonal(k), 2.0 * x.pow(2).sum(1) / 2, rtol=1e-12, atol=0)
    torch.testing.assert_close(arccos_kernel(x, x, prior_var=2.0), k)
    a = torch.tensor([[3.0, 0.0]], dtype=torch.float64)
    b = torch.tensor([[0.0, 2.0]], dtype=torch.float64)
    # t = 0 (parallel): prior_var |x||y| / 2; t = pi/2: prior_var |x||y| / (2 pi); t = pi: 0
    assert arccos_kernel(a, 2 * a, prior_var=0.7).item() == pytest.approx(0.7 * 3 * 6 / 2, rel=1e-12)
    assert arccos_kernel(a, b, prior_var=0.7).item() == pytest.approx(0.7 * 3 * 2 / (2 * math.pi), rel=1e-12)
    assert arccos_kernel(a, -a, prior_var=0.7).item() == pytest.approx(0.0, abs=1e-12)
    # rectangular Gram matrix, zero vectors, 1-D input and rounding at cos = 1
    y = torch.cat([torch.zeros(1, 5, dtype=torch.float64), x[:3] * 1e8], 0)
    kxy = arccos_kernel(x, y)
    assert kxy.shape == (20, 4) and torch.isfinite(kxy).all() and (kxy[:, 0] == 0).all()
    assert arccos_kernel(x[0]).shape == (1, 1)
    assert torch.isfinite(arccos_kernel(torch.zeros(3, 4))).all()


def test_mask_factor_and_limit():
    assert mask_factor(0.8, rescale=False) == pytest.approx(0.8)
    assert mask_factor(0.8, rescale=True) == pytest.approx(1 / 0.8)  # inverted dropout: k / p
    assert mask_factor(0.8, scale=0.8**-0.5) == pytest.approx(1.0)  # variance-preserving: exactly k
    x = points()
    torch.testing.assert_close(masked_relu_kernel_limit(x, 0.8, PRIOR_VAR, rescale=False), 0.8 * arccos_kernel(x, prior_var=PRIOR_VAR))
    with pytest.raises(ValueError):
        mask_factor(0.0)


@pytest.mark.parametrize("rescale,scale", [(False, None), (True, None), (True, KEEP**-0.5)])
def test_sampled_masks_give_the_mask_factor(rescale, scale):
    """At a fixed network, the sample covariance over (readout, mask) draws estimates the exact
    conditional kernel p c^2 k_W (draws=None): the simulated masks carry the factor p c^2."""
    x = points(dtype=torch.float32)
    exact = empirical_masked_relu_kernel(x, 64, KEEP, None, PRIOR_VAR, rescale, torch.Generator().manual_seed(5), scale=scale)
    sampled = empirical_masked_relu_kernel(x, 64, KEEP, 40_000, PRIOR_VAR, rescale, torch.Generator().manual_seed(5), scale=scale)
    assert rel_error(sampled, exact) < 0.03
    plain = empirical_masked_relu_kernel(x, 64, KEEP, None, PRIOR_VAR, False, torch.Generator().manual_seed(5))
    torch.testing.assert_close(exact, plain * mask_factor(KEEP, rescale, scale) / KEEP)


def test_kernel_error_shrinks_like_inverse_sqrt_width():
    x = points()
    limit = masked_relu_kernel_limit(x, KEEP, PRIOR_VAR)
    width, seeds = 64, range(200)

    def rms_error(w: int) -> float:
        errs = [rel_error(empirical_masked_relu_kernel(x, w, KEEP, None, PRIOR_VAR, generator=torch.Generator().manual_seed(s)), limit) for s in seeds]
        return math.sqrt(sum(e * e for e in errs) / len(errs))

    small, large = rms_error(width), rms_error(16 * width)
    assert 0.15 < large / small < 0.45, (small, large)
    assert rms_error(16_384) < 0.05


def rms(errors: list[float]) -> float:
    return math.sqrt(sum(e * e for e in errors) / len(errors))


def test_sampled_kernel_error_shrinks_like_inverse_sqrt_width():
    """The literal estimator (sample covariance over readout and mask draws, draws >> width)."""
    x = points(dtype=torch.float32)
    limit = masked_relu_kernel_limit(x, KEEP, PRIOR_VAR)

    def errors(width: int) -> list[float]:
        return [rel_error(empirical_masked_relu_kernel(x, width, KEEP, 20_000, PRIOR_VAR, generator=torch.Generator().manual_seed(s)), limit) for s in range(6)]

    small, large = errors(64), errors(1024)
    assert 0.15 < rms(large) / rms(small) < 0.45, (small, large)


def test_sampled_kernel_is_close_at_large_width():
    x = points(dtype=torch.float32)
    limit = masked_relu_kernel_limit(x, KEEP, PRIOR_VAR)
    errs = [rel_error(empirical_masked_relu_kernel(x, 8192, KEEP, 4_000, PRIOR_VAR, generator=torch.Generator().manual_seed(s)), limit) for s in range(3)]
    assert rms(errs) < 0.05, errs


def test_draw_error_shrinks_like_inverse_sqrt_draws():
    """At a fixed network, the sample covariance converges to its exact conditional kernel
    (draws=None) like draws^-1/2, whatever the width; chunking bounds memory."""
    x = points(dtype=torch.float32)

    def draw_error(draws: int, seed: int) -> float:
        exact = empirical_masked_relu_kernel(x, 32, KEEP, None, PRIOR_VAR, generator=torch.Generator().manual_seed(seed))
        sampled = empirical_masked_relu_kernel(x, 32, KEEP, draws, PRIOR_VAR, generator=torch.Generator().manual_seed(seed), chunk=32 * 300)
        return rel_error(sampled, exact)  # same seed: same first layer (drawn first)

    few, many = [draw_error(1_000, s) for s in range(30)], [draw_error(16_000, s) for s in range(30)]
    assert 0.15 < rms(many) / rms(few) < 0.45, (rms(few), rms(many))


def test_covariance_over_all_randomness_is_exact_at_any_width():
    """Averaging the conditional kernel over first-layer draws removes the width error:
    Cov_{w,a,z}(f(x), f(y)) = p c^2 k(x, y) at every width (only its fluctuation is O(W^-1/2))."""
    x = points()
    limit = masked_relu_kernel_limit(x, KEEP, PRIOR_VAR)
    mean = sum(empirical_masked_relu_kernel(x, 4, KEEP, None, PRIOR_VAR, generator=torch.Generator().manual_seed(s)) for s in range(4000)) / 4000
    assert rel_error(mean, limit) < 0.05


def test_input_validation():
    x = points()
    with pytest.raises(ValueError):
        empirical_masked_relu_kernel(x, 0, KEEP, 10)
    with pytest.raises(ValueError):
        empirical_masked_relu_kernel(x, 8, KEEP, 1)
    with pytest.raises(ValueError):
        arccos_kernel(x, torch.ones(2, D + 1))


def test_averaged_weights_approach_mc_predictive_mean_for_small_drop_rates():
    """Claim 5 (second half), one hidden layer with CigL's element-wise masks on the first-layer
    weights and inverted-dropout scaling (E[c z] = 1): the exact MC-predictive mean E_z f(x; c z w)
    (all 2^d masks of each unit enumerated; units are independent) approaches the output of the
    averaged weights f(x; E[c z w]) = f(x; w) like O(1 - p)."""
    g = torch.Generator().manual_seed(0)
    d, width, n = 10, 256, 8
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    w = torch.randn(width, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    a = torch.randn(width, generator=g, dtype=torch.float64) / math.sqrt(width)
    averaged = torch.relu(x @ w.T) @ a
    masks = torch.tensor(list(itertools.product([0.0, 1.0], repeat=d)), dtype=torch.float64)  # (2^d, d)

    def relative_gap(drop: float) -> float:
        keep = 1.0 - drop
        probs = (keep ** masks.sum(1)) * (drop ** (d - masks.sum(1)))  # (2^d,)
        pre = torch.einsum("nd,md,wd->mnw", x, masks / keep, w)  # (2^d, n, W)
        mean = torch.einsum("m,mnw,w->n", probs, torch.relu(pre), a)
        return ((mean - averaged).norm() / averaged.norm()).item()

    gaps = [relative_gap(r) for r in (0.2, 0.05, 0.0125)]
    assert gaps[0] > gaps[1] > gaps[2]
    assert 0.15 < gaps[1] / gaps[0] < 0.45 and 0.15 < gaps[2] / gaps[1] < 0.45  # ~ linear in the drop rate
    assert gaps[2] < 0.02
