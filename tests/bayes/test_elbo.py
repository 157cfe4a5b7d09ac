"""ELBO terms of the Pyro formulation: unbiasedness (exact enumeration), the gradient identity
with the plain CigL loss, Predictive vs an explicit mask average, RigL updates under SVI."""

import itertools
import math

import pyro
import pyro.poutine as poutine
import pytest
import torch
import torch.nn.functional as F
from pyro.infer import Predictive, Trace_ELBO
from torch import nn

from cigl_bayes.bayes import (
    HierarchicalGuide,
    NegativeELBO,
    SparseBayesModel,
    active_values,
    equivalent_l2_coefficient,
    gal_kl,
    gaussian_kl,
    scatter_to_layers,
)
from cigl_bayes.cigl import RandomMask
from cigl_bayes.sparse import DropSchedule, SparseNet, TopologyUpdater



def tiny_net(seed=0, density=1.0):
    """A 2-3-2 ReLU network (12 maskable weights at density 1, 6 at density 0.5)."""
    torch.manual_seed(seed)
    net = SparseNet(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2)), density, random_mask=RandomMask(0.3))
    return net.double()


def tiny_data(n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=g, dtype=torch.float64), torch.randint(0, 2, (n,), generator=g)


def closed_form_gal_kl(values, keep, precision, slab, scale):
    """Gal's KL written out (theory/cigl_as_deep_gp.md), independently of ``gal_kl``:
    p c^2 l^2 / 2 ||V||^2 + K (l^2 s^2 / 2 - log(l^2 s^2) / 2 - 1/2 - H(p))."""
    entropy = -(keep * math.log(keep) + (1 - keep) * math.log(1 - keep))
    per_weight = precision * slab**2 / 2 - math.log(precision * slab**2) / 2 - 0.5 - entropy
    return keep * scale**2 * precision / 2 * sum(v * v for v in values.tolist()) + len(values) * per_weight


def exact_expected_elbo(net, x, y, num_data, keep, scale, precision, slab, kl):
    """E_q[ELBO] by enumerating every mask z in {0,1}^K (weights at their means, s -> 0)."""
    values = active_values(net).detach()
    k = values.numel()
    batch = x.shape[0]
    total = 0.0
    for bits in itertools.product([0.0, 1.0], repeat=k):
        z = torch.tensor(bits, dtype=values.dtype)
        prob = math.prod(keep if b else 1 - keep for b in bits)
        with torch.no_grad():
            logits = net.forward_with(scatter_to_layers(net, z * values * scale), x)
        loglik = -F.cross_entropy(logits, y, reduction="sum").item() * num_data / batch
        if kl == "mc":  # E over W|z of log p(W) - log q(W|z) = -KL(N(z v c, s^2) || N(0, 1/l^2))
            loglik -= gaussian_kl(z * values * scale, slab, precision**-0.5).sum().item()
        total += prob * loglik
    if kl == "gal":
        total -= closed_form_gal_kl(values, keep, precision, slab, scale)
    return total


@pytest.mark.parametrize("kl", ["gal", "mc"])
def test_elbo_estimator_is_unbiased_against_enumeration(kl):
    """Mean of many Trace_ELBO draws == exact expectation over all 2^6 masks (within 4 SE)."""
    net = tiny_net(density=0.5)
    x, y = tiny_data()
    keep, precision, slab, num_data = 0.7, 2.0, 1e-5, 60
    scale = 1 / keep
    model = SparseBayesModel(net, num_data, precision, keep, rescale=True, kl=kl, slab_scale=slab)
    guide = HierarchicalGuide(net, keep, rescale=True, slab_scale=slab, kl=kl)
    assert [int(m.sum()) for m in net.support.layers()] == [3, 3]  # both layers carry masked weights
    exact = exact_expected_elbo(net, x, y, num_data, keep, scale, precision, slab, kl)
    pyro.set_rng_seed(0)
    elbo = Trace_ELBO()
    with torch.no_grad():
        draws = torch.tensor([-elbo.differentiable_loss(model, guide, x, y).item() for _ in range(600)], dtype=torch.float64)
    mean, se = draws.mean().item(), draws.std().item() / math.sqrt(len(draws))
    assert se > 0
    assert abs(mean - exact) < 4 * se, (mean, exact, se)
    # ... and a biased estimator (e.g. forgetting the N/B scale) would be far off
    assert abs(mean - exact) < 0.05 * abs(exact)


@pytest.mark.filterwarnings("ignore:Found non-auxiliary vars")
def test_gradient_identity_gal_kl():
    """d(-ELBO/N)/dV == d(NLL + lambda ||M V||^2)/dV on a fixed mask, lambda = p c^2 l^2 / (2 N)."""
    net = tiny_net(seed=3)
    x, y = tiny_data(n=8, seed=4)
    keep, precision, num_data = 0.8, 3.0, 40
    for rescale in (False, True):
        scale = 1 / keep if rescale else 1.0
        model = SparseBayesModel(net, num_data, precision, keep, rescale=rescale, kl="gal")
        guide = HierarchicalGuide(net, keep, rescale=rescale, kl="gal")
        z = (torch.rand(active_values(net).numel(), generator=torch.Generator().manual_seed(5)) < keep).double()
        fixed = {"mask": z}
        net.zero_grad()
        loss = NegativeELBO(poutine.condition(model, fixed), poutine.condition(guide, fixed), num_data)(x, y)
        loss.backward()
        elbo_grads = [p.grad.clone() for p in net.parameters()]

        net.zero_grad()
        lam = equivalent_l2_coefficient(keep, precision, num_data, scale=scale)
        values = active_values(net)
        logits = net.forward_with(scatter_to_layers(net, z * values * scale), x)
        cigl_loss = F.cross_entropy(logits, y) + lam * values.pow(2).sum()
        cigl_loss.backward()
        for a, (name, p) in zip(elbo_grads, net.named_parameters()):
            torch.testing.assert_close(a, p.grad, rtol=1e-10, atol=1e-12, msg=name)
        # the identity fails for any other lambda
        assert not torch.allclose(elbo_grads[0], net.module[0].weight.grad + 0.1 * lam * net.module[0].weight)


def test_predictive_equals_explicit_mask_average():
    """pyro Predictive over the guide == explicit average of softmax(f(x; W_t)) over the same draws."""
    net = tiny_net(seed=6).eval()
    x, _ = tiny_data(n=5, seed=7)
    keep, draws = 0.75, 64
    model = SparseBayesModel(net, 100, 1.0, keep, kl="mc", slab_scale=1e-3)
    guide = HierarchicalGuide(net, keep, slab_scale=1e-3, kl="mc")
    pyro.set_rng_seed(8)
    with torch.no_grad():
        posterior = Predictive(guide, num_samples=draws)(x)
        predictive = Predictive(model, posterior_samples=posterior, return_sites=("probs",))(x)["probs"]
        explicit = torch.stack([
            net.forward_with(scatter_to_layers(net, posterior["weights"][t]), x).softmax(-1) for t in range(draws)
        ])
    assert predictive.shape == (draws, 5, 2)
    torch.testing.assert_close(predictive, explicit)
    # masks really vary across draws, and the weights sit at c * z * v (+ slab noise)
    masks = posterior["mask"]
    assert 0 < masks.float().mean() < 1 and not torch.equal(masks[0], masks[1])
    values = active_values(net).detach()
    torch.testing.assert_close(posterior["weights"], masks * values / keep, atol=6e-3, rtol=0)


def test_rigl_updates_keep_running_during_svi():
    """The topology updater works on the SVI objective: dense gradients are captured through the
    model's forward, counts are preserved and stored weights stay zero off the support."""
    torch.manual_seed(0)
    net = SparseNet(nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3)), 0.3, random_mask=RandomMask(0.1))
    x, y = torch.randn(64, 10), torch.randint(0, 3, (64,))
    model = SparseBayesModel(net, 64, 1.0, 0.9, kl="mc")
    guide = HierarchicalGuide(net, 0.9, kl="mc")
    objective = NegativeELBO(model, guide, 64)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    updater = TopologyUpdater(net, optimizer, DropSchedule(end_step=50, update_every=5), "rigl")
    before = net.support.flat.clone()
    for _ in range(20):
        optimizer.zero_grad()
        objective(x, y).backward()
        if updater():
            optimizer.step()
        for mask, count, weight in zip(net.support.layers(), net.support.counts, net.weights()):
            assert int(mask.sum()) == count
            assert torch.count_nonzero(weight.detach()[~mask]) == 0
    assert updater.updates_done == 3
    assert not torch.equal(before, net.support.flat)


def test_regression_predictive_variance_is_noise_plus_spread_of_draws():
    """Gaussian likelihood: Var[y* | x*] = 1/tau + Var_t f_t(x*) (theory.md), from Predictive's samples:
    y* - f_t(x*) is N(0, 1/tau) noise (pooled over the points) uncorrelated with the draw f_t."""
    torch.manual_seed(0)
    net = SparseNet(nn.Sequential(nn.Linear(1, 64), nn.ReLU(), nn.Linear(64, 1)), 0.5, random_mask=RandomMask(0.2)).eval()
    tau, draws, points = 25.0, 1000, 5
    model = SparseBayesModel(net, 100, 1.0, 0.8, kl="mc", likelihood="gaussian", tau=tau)
    guide = HierarchicalGuide(net, 0.8, kl="mc")
    x = torch.linspace(-2, 2, points).unsqueeze(-1)
    pyro.set_rng_seed(1)
    with torch.no_grad():
        samples = Predictive(model, guide=guide, num_samples=draws, return_sites=("obs", "mean"))(x)
    obs, mean = samples["obs"].squeeze(-1), samples["mean"].squeeze(-1)
    assert obs.shape == (draws, points)
    assert (mean.var(0) > 0.1 / tau).all()  # the network spread is a real part of the variance
    noise = obs - mean
    # a sample variance's relative standard error is sqrt(2/n), a sample correlation's 1/sqrt(n): allow 4 SE
    torch.testing.assert_close(noise.pow(2).mean(), torch.tensor(1.0 / tau), rtol=4 * math.sqrt(2 / noise.numel()), atol=0)
    centred = mean - mean.mean(0)
    correlation = (noise * centred).mean(0) / (noise.std(0) * centred.std(0))
    assert (correlation.abs() < 4 / math.sqrt(draws)).all()
    torch.testing.assert_close(obs.var(0), 1.0 / tau + mean.var(0), rtol=4 * math.sqrt(2 / draws), atol=0)


def test_gaussian_svi_fits_a_line():
    """A few hundred SVI steps with the Gaussian likelihood bring the predictive mean to the data."""
    torch.manual_seed(0)
    x = torch.linspace(-1, 1, 64).unsqueeze(-1)
    y = 2 * x + 0.5
    net = SparseNet(nn.Sequential(nn.Linear(1, 32), nn.ReLU(), nn.Linear(32, 1)), 0.5, random_mask=RandomMask(0.05))
    model = SparseBayesModel(net, 64, 1e-2, 0.95, kl="gal", likelihood="gaussian", tau=100.0)
    guide = HierarchicalGuide(net, 0.95, kl="gal")
    objective = NegativeELBO(model, guide, 64)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(400):
        optimizer.zero_grad()
        objective(x, y).backward()
        optimizer.step()
    net.eval()
    with torch.no_grad():
        fitted = Predictive(model, guide=guide, num_samples=50, return_sites=("mean",))(x)["mean"].mean(0)
    assert (fitted - y).abs().mean() < 0.1


def test_gal_kl_gradient_in_a_learned_keep_probability():
    """d/dp [p c^2 l^2/2 ||v||^2 - K H(p)] with c = 1/p: -l^2 ||v||^2 / (2 p^2) - K log((1-p)/p)."""
    v = torch.randn(50, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    p = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    l2 = 3.0
    (grad,) = torch.autograd.grad(gal_kl(v, p, l2, 1e-3, 1.0 / p), p)
    expected = -l2 * v.pow(2).sum() / (2 * 0.8**2) - 50 * math.log(0.2 / 0.8)
    torch.testing.assert_close(grad, expected)


def test_learnable_keep_trains_by_svi_and_mask_terms_cancel():
    """Concrete-dropout option: relaxed masks, identical model/guide mask densities (no KL from Z
    beyond Gal's -K H(p)), a non-zero gradient in p, and p moves under SVI; MC KL is refused."""
    from cigl_bayes.bayes import LearnableKeep

    torch.manual_seed(0)
    net = SparseNet(nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3)), 0.5, random_mask=RandomMask(0.2))
    net.variational_keep = keep = LearnableKeep(0.8)
    x, y = torch.randn(64, 10), torch.randint(0, 3, (64,))
    model = SparseBayesModel(net, 64, 1.0, keep, kl="gal")
    guide = HierarchicalGuide(net, keep, kl="gal")
    guide_trace = poutine.trace(guide).get_trace(x, y)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, y)
    z = guide_trace.nodes["mask"]["value"]
    assert ((z > 0) & (z < 1)).all()  # relaxed, not hard, masks
    torch.testing.assert_close(model_trace.nodes["mask"]["fn"].log_prob(z), guide_trace.nodes["mask"]["fn"].log_prob(z))
    objective = NegativeELBO(model, guide, 64)
    objective(x, y).backward()
    assert keep.logit.grad is not None and keep.logit.grad != 0
    optimizer = torch.optim.Adam(net.parameters(), lr=0.05)
    start = float(keep.probs.detach())
    for _ in range(30):
        optimizer.zero_grad()
        objective(x, y).backward()
        optimizer.step()
    assert 0 < float(keep.probs.detach()) < 1 and abs(float(keep.probs.detach()) - start) > 1e-3
    with pytest.raises(ValueError, match="kl='gal'"):
        SparseBayesModel(net, 64, 1.0, keep, kl="mc")


def test_cigl_svi_with_learned_keep_syncs_the_random_mask(digits_data, tiny_config):
    from cigl_bayes.methods import assemble

    config = tiny_config("cigl-svi", bayes__kl="gal", bayes__learn_keep=True, averaging__start_fraction=0.5)
    parts = assemble(config, digits_data, None, progress=False)
    parts.trainer.fit()
    learned = float(parts.model.variational_keep.probs.detach())
    assert learned != pytest.approx(0.9, abs=1e-6)
    assert parts.model.random_mask.keep == pytest.approx(learned)
    assert "variational_keep.logit" in parts.model.state_dict()
