"""Claim 1 of the theory: the KL of the spike-and-slab family against N(0, 1/l^2).

Per weight, q(w) = p N(c v, s^2) + (1 - p) N(0, s^2). The exact KL is computed by adaptive
quadrature of the mixture entropy (the cross-entropy against the Gaussian prior is closed
form) and compared with Gal's approximation ``gal_kl``, its bounds, a Monte-Carlo estimate,
and the identity KL = E_z KL(q(w|z) || p) - H(p) + E_w H(q(z|w)) (theory/cigl_as_deep_gp.md).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate

from cigl_bayes.bayes.kl import (
    bernoulli_entropy,
    equivalent_l2_coefficient,
    gal_kl,
    gaussian_kl,
    prior_precision_for_weight_decay,
)


LOG_2PI = math.log(2.0 * math.pi)


# --------------------------------------------------------------------------- exact 1-D KL
def _log_normal(u, mean):
    return -0.5 * (u - mean) ** 2 - 0.5 * LOG_2PI


def _log_mixture(u, delta, p):
    """log of the standardised mixture p N(delta, 1) + (1 - p) N(0, 1)."""
    return np.logaddexp(math.log(p) + _log_normal(u, delta), math.log1p(-p) + _log_normal(u, 0.0))


def _component_expectation(fn, centre, delta):
    """E_{u ~ N(centre, 1)} fn(u) by adaptive quadrature (the other component's centre as a breakpoint)."""
    lo, hi = centre - 40.0, centre + 40.0
    points = [x for x in (0.0, delta / 2.0, delta) if lo < x < hi]
    value, _ = integrate.quad(lambda u: math.exp(_log_normal(u, centre)) * fn(u), lo, hi, points=points, limit=500, epsabs=1e-14, epsrel=1e-12)
    return value


def _mixture_expectation(fn, delta, p):
    return p * _component_expectation(fn, delta, delta) + (1.0 - p) * _component_expectation(fn, 0.0, delta)


def exact_kl_1d(v, keep, prior_precision, slab_std, scale=1.0):
    """KL(p N(c v, s^2) + (1-p) N(0, s^2) || N(0, 1/l^2)) to quadrature accuracy (float64)."""
    s, l2 = slab_std, prior_precision
    delta = abs(scale * v) / s
    if keep >= 1.0:
        entropy = 0.5 * (LOG_2PI + 1.0)
    else:
        entropy = -_mixture_expectation(lambda u: float(_log_mixture(u, delta, keep)), delta, keep)
    entropy += math.log(s)  # H(q_w) = H(q_u) + log s
    cross = 0.5 * (LOG_2PI - math.log(l2)) + 0.5 * l2 * (s**2 + keep * (scale * v) ** 2)
    return cross - entropy


def mask_posterior_entropy(v, keep, slab_std, scale=1.0):
    """E_{w ~ q} H(q(z | w)): the overlap error of Gal's approximation."""
    delta = abs(scale * v) / slab_std

    def h(u):
        r = math.exp(math.log(keep) + _log_normal(u, delta) - _log_mixture(u, delta, keep))
        return bernoulli_entropy(min(max(r, 0.0), 1.0))

    return _mixture_expectation(h, delta, keep)


def gal_1d(v, keep, prior_precision, slab_std, scale=1.0):
    return gal_kl(torch.tensor([v], dtype=torch.float64), keep, prior_precision, slab_std, scale).item()


def expected_conditional_kl(v, keep, prior_precision, slab_std, scale=1.0):
    """E_z KL(q(w|z) || p): the upper bound (and the KL term of the joint-model ELBO)."""
    prior_std = prior_precision**-0.5
    on = gaussian_kl(torch.tensor(scale * v, dtype=torch.float64), slab_std, prior_std).item()
    off = gaussian_kl(torch.tensor(0.0, dtype=torch.float64), slab_std, prior_std).item()
    return keep * on + (1.0 - keep) * off


def mc_kl(sample_w, log_q, log_prior):
    terms = log_q(sample_w) - log_prior(sample_w)
    return terms.mean(), terms.std(ddof=1) / math.sqrt(terms.shape[0])


def sample_mixture_1d(rng, n, v, keep, slab_std, scale=1.0):
    z = rng.random(n) < keep
    return np.where(z, scale * v, 0.0) + slab_std * rng.standard_normal(n)


def log_q_1d(w, v, keep, slab_std, scale=1.0):
    """log q(w) of the mixture in original units (v * scale >= 0)."""
    return _log_mixture(w / slab_std, scale * v / slab_std, keep) - math.log(slab_std)


def log_gauss(w, std):
    return -0.5 * (w / std) ** 2 - math.log(std) - 0.5 * LOG_2PI


# --------------------------------------------------------------------------- tests
@pytest.mark.parametrize("keep", [0.5, 0.9, 0.99])
@pytest.mark.parametrize("rescale", [False, True])
def test_gal_kl_is_exact_when_components_separate(keep, rescale):
    scale = 1.0 / keep if rescale else 1.0
    v, s, l2 = 1.0, 0.01, 2.5
    exact = exact_kl_1d(v, keep, l2, s, scale)
    assert exact == pytest.approx(gal_1d(v, keep, l2, s, scale), abs=1e-6)
    assert mask_posterior_entropy(v, keep, s, scale) < 1e-12


def test_exact_kl_within_bounds_and_equals_gal_plus_overlap_error():
    s, l2 = 0.1, 1.7
    for keep in [0.1, 0.5, 0.9, 0.99]:
        h = bernoulli_entropy(keep)
        gaps = []
        for ratio in [0.0, 0.1, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0]:
            v = ratio * s
            exact = exact_kl_1d(v, keep, l2, s)
            lower = gal_1d(v, keep, l2, s)
            upper = expected_conditional_kl(v, keep, l2, s)
            assert upper - lower == pytest.approx(h, abs=1e-12)
            assert lower - 1e-9 <= exact <= upper + 1e-9, (keep, ratio, lower, exact, upper)
            # KL = E_z KL(q(w|z)||p) - H(p) + E_w H(q(z|w)) (overlap error), exactly
            assert exact - lower == pytest.approx(mask_posterior_entropy(v, keep, s), abs=1e-8)
            gaps.append(exact - lower)
        assert gaps[0] == pytest.approx(h, abs=1e-9)  # v = 0: identical components, KL = upper bound
        assert all(a >= b - 1e-10 for a, b in zip(gaps, gaps[1:]))  # error shrinks as |v|/s grows
        assert gaps[-1] < 1e-6


@pytest.mark.parametrize("ratio", [0.5, 2.0, 100.0])
def test_monte_carlo_kl_matches_quadrature(ratio):
    rng = np.random.default_rng(1234)
    keep, s, l2, scale = 0.8, 0.05, 3.0, 1.25
    v = ratio * s / scale
    w = sample_mixture_1d(rng, 1_000_000, v, keep, s, scale)
    estimate, se = mc_kl(w, lambda w: log_q_1d(w, v, keep, s, scale), lambda w: log_gauss(w, l2**-0.5))
    exact = exact_kl_1d(v, keep, l2, s, scale)
    assert abs(estimate - exact) < 4 * se, (estimate, exact, se)
    if ratio >= 100:  # separated regime: the MC estimate also agrees with Gal's closed form
        assert abs(estimate - gal_1d(v, keep, l2, s, scale)) < 4 * se


def test_k_dimensional_independent_elements_sum_of_1d():
    """Element-wise masks (CigL): the K-dim KL is the sum of 1-D KLs; gal_kl sums per element."""
    rng = np.random.default_rng(7)
    keep, s, l2, n = 0.9, 0.1, 2.0, 200_000
    values = np.array([0.0, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, -0.3])
    exact = sum(exact_kl_1d(v, keep, l2, s) for v in values)
    z = rng.random((n, values.size)) < keep
    w = np.where(z, values, 0.0) + s * rng.standard_normal((n, values.size))
    log_q = np.logaddexp(math.log(keep) + log_gauss(w - values, s), math.log1p(-keep) + log_gauss(w, s)).sum(1)
    terms = log_q - log_gauss(w, l2**-0.5).sum(1)
    se = terms.std(ddof=1) / math.sqrt(n)
    assert abs(terms.mean() - exact) < 4 * se
    t = torch.tensor(values)
    assert gal_kl(t, keep, l2, s).item() == pytest.approx(sum(gal_1d(v, keep, l2, s) for v in values), rel=1e-12)
    same = torch.full((16,), 0.37, dtype=torch.float64)
    assert gal_kl(same, keep, l2, s).item() == pytest.approx(16 * gal_1d(0.37, keep, l2, s), rel=1e-12)


def _row_exact_kl(row, keep, l2, s):
    """Gal's unit dropout: one z shared by the K weights leaving a unit. Rotating m onto an axis
    reduces the mixture to a 1-D mixture along m plus K - 1 identical N(0, s^2) coordinates."""
    k = row.size
    norm = float(np.linalg.norm(row))
    rest = gaussian_kl(torch.tensor(0.0, dtype=torch.float64), s, l2**-0.5).item()
    return exact_kl_1d(norm, keep, l2, s) + (k - 1) * rest


def test_unit_shared_mask_kl_approaches_gal_as_dimension_grows():
    """Claim 1, "as K grows": K weights sharing one mask separate like |m|/s = sqrt(K) v/s."""
    keep, s, l2, per_element = 0.9, 0.1, 2.0, 0.05  # v/s = 0.5: heavy overlap element-wise
    gaps = []
    for k in [1, 4, 16, 64, 256, 1024]:
        row = np.full(k, per_element)
        gal_row = gal_kl(torch.tensor(row), keep, l2, s).item() + (k - 1) * bernoulli_entropy(keep)  # one H(p) per unit
        gap = _row_exact_kl(row, keep, l2, s) - gal_row
        assert -1e-9 <= gap <= bernoulli_entropy(keep) + 1e-9
        gaps.append(gap)
    assert all(a > b for a, b in zip(gaps, gaps[1:]))
    assert gaps[0] > 0.1 and gaps[-1] < 1e-6
    # the rotation reduction agrees with a K-dim Monte-Carlo estimate
    rng = np.random.default_rng(3)
    k, n = 8, 200_000
    row = np.linspace(-0.1, 0.1, k)
    z = rng.random((n, 1)) < keep
    w = np.where(z, row, 0.0) + s * rng.standard_normal((n, k))
    log_q = np.logaddexp(math.log(keep) + log_gauss(w - row, s).sum(1), math.log1p(-keep) + log_gauss(w, s).sum(1))
    terms = log_q - log_gauss(w, l2**-0.5).sum(1)
    se = terms.std(ddof=1) / math.sqrt(n)
    assert abs(terms.mean() - _row_exact_kl(row, keep, l2, s)) < 4 * se


def test_gal_kl_equals_expected_conditional_kl_minus_entropy():
    values = torch.linspace(-2, 2, 9, dtype=torch.float64)
    keep, l2, s, c = 0.7, 4.0, 0.03, 1 / 0.7
    prior_std = l2**-0.5
    expected = (keep * gaussian_kl(c * values, s, prior_std) + (1 - keep) * gaussian_kl(torch.zeros_like(values), s, prior_std)).sum()
    assert gal_kl(values, keep, l2, s, scale=c).item() == pytest.approx(expected.item() - 9 * bernoulli_entropy(keep), rel=1e-12)


def test_gaussian_kl_matches_torch_distributions():
    mean = torch.linspace(-3, 3, 13, dtype=torch.float64)
    for std, prior_std in [(0.01, 1.0), (0.5, 0.3), (2.0, 2.0)]:
        ours = gaussian_kl(mean, std, prior_std)
        ref = torch.distributions.kl_divergence(
            torch.distributions.Normal(mean, torch.full_like(mean, std)), torch.distributions.Normal(torch.zeros_like(mean), torch.full_like(mean, prior_std))
        )
        torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    assert gaussian_kl(torch.tensor(0.0), 1.3, 1.3).item() == pytest.approx(0.0, abs=1e-7)


def test_bernoulli_entropy_values_and_edges():
    assert bernoulli_entropy(0.5) == pytest.approx(math.log(2.0))
    assert bernoulli_entropy(0.0) == 0.0 and bernoulli_entropy(1.0) == 0.0
    for p in [1e-12, 0.01, 0.1, 0.3, 0.9, 0.999]:
        ref = -(p * math.log(p) + (1 - p) * math.log1p(-p))
        torch_ref = torch.distributions.Bernoulli(probs=torch.tensor(p, dtype=torch.float64)).entropy().item()
        assert bernoulli_entropy(p) == pytest.approx(torch_ref, rel=1e-3)  # torch clamps logits near 0 / 1
        assert bernoulli_entropy(p) == pytest.approx(ref, rel=1e-9, abs=1e-15)
        assert bernoulli_entropy(p) == pytest.approx(bernoulli_entropy(1 - p), rel=1e-6, abs=1e-15)
        assert 0.0 < bernoulli_entropy(p) <= math.log(2.0)


@pytest.mark.parametrize("keep,scale,tau", [(0.9, 1.0, 1.0), (0.9, 1 / 0.9, 1.0), (0.5, 2.0, 3.0)])
def test_weight_decay_maps_are_inverses(keep, scale, tau):
    n, l2 = 45_000, 12.5
    lam = equivalent_l2_coefficient(keep, l2, n, tau=tau, scale=scale)
    assert lam == pytest.approx(keep * scale**2 * l2 / (2 * n * tau))
    # SGD weight decay omega = 2 lambda  <->  l^2 = omega N tau / (p c^2)
    assert prior_precision_for_weight_decay(2 * lam, keep, n, tau=tau, scale=scale) == pytest.approx(l2, rel=1e-12)
    omega = 5e-4
    l2_back = prior_precision_for_weight_decay(omega, keep, n, tau=tau, scale=scale)
    assert 2 * equivalent_l2_coefficient(keep, l2_back, n, tau=tau, scale=scale) == pytest.approx(omega, rel=1e-12)
    with pytest.raises(ValueError):
        prior_precision_for_weight_decay(0.0, keep, n)


@pytest.mark.parametrize("keep,scale,tau", [(0.9, 1.0, 1.0), (0.9, 1 / 0.9, 1.0), (0.75, 1.0, 2.0)])
def test_gal_kl_gradient_is_weight_decay(keep, scale, tau):
    """d(KL / (N tau))/dv = 2 lambda v, lambda = p c^2 l^2 / (2 N tau); SGD weight_decay = 2 lambda."""
    n, l2, s = 1000, 7.0, 0.01
    v = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    (gal_kl(v, keep, l2, s, scale=scale) / (n * tau)).backward()
    lam = equivalent_l2_coefficient(keep, l2, n, tau=tau, scale=scale)
    torch.testing.assert_close(v.grad, 2 * lam * v.detach(), rtol=1e-12, atol=0)
    # the same update from torch's SGD weight decay on a zero data loss
    w = v.detach().clone().requires_grad_(True)
    opt = torch.optim.SGD([w], lr=0.1, weight_decay=2 * lam)
    w.grad = torch.zeros_like(w)
    opt.step()
    torch.testing.assert_close(w.detach(), v.detach() - 0.1 * v.grad, rtol=1e-12, atol=1e-15)
