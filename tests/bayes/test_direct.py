"""DirectELBO == Trace_ELBO on the same draws (value, every parameter's gradient, the recorded mask,
the RNG consumed), for both KL modes, both likelihoods, a learned keep probability and the data-plate
scale N/B; NegativeELBO picks the direct path by default and keeps Trace_ELBO on request."""

import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import Trace_ELBO
from torch import nn

from cigl_bayes.bayes import DirectELBO, HierarchicalGuide, LearnableKeep, NegativeELBO, SparseBayesModel
from cigl_bayes.cigl import RandomMask
from cigl_bayes.models import build_model
from cigl_bayes.sparse import SparseNet

NUM_DATA, BATCH = 200, 8  # plate scale N/B = 25


def bn_net(outputs=3, seed=0):
    """Two masked layers, a bias and BatchNorm parameters (point estimates), in float64."""
    torch.manual_seed(seed)
    module = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, outputs))
    return SparseNet(module, 0.5, random_mask=RandomMask(0.2)).double()


def data(likelihood, outputs=3, target_shape=None, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, 4, generator=g, dtype=torch.float64)
    if likelihood == "categorical":
        return x, torch.randint(0, outputs, (BATCH,), generator=g)
    return x, torch.randn(target_shape or (BATCH, outputs), generator=g, dtype=torch.float64)


def run(estimator, model, guide, x, y, seed=7):
    """Loss, gradients of every parameter, the recorded mask and the RNG state after one draw."""
    params = list(model.net.parameters())
    for p in params:
        p.grad = None
    pyro.set_rng_seed(seed)
    loss = estimator.differentiable_loss(model, guide, x, y)
    loss.backward()
    assert all(p.grad is not None for p in params)
    return loss.detach(), [p.grad.clone() for p in params], model.net.last_sampled_mask.clone(), torch.get_rng_state()


def assert_same(direct, trace, rtol=1e-9, atol=1e-12):
    loss_d, grads_d, mask_d, rng_d = direct
    loss_t, grads_t, mask_t, rng_t = trace
    torch.testing.assert_close(loss_d, loss_t, rtol=rtol, atol=0)
    for g_d, g_t in zip(grads_d, grads_t):
        torch.testing.assert_close(g_d, g_t, rtol=rtol, atol=atol)
    assert torch.equal(mask_d, mask_t)  # the same Z (times c) was drawn and recorded
    assert torch.equal(rng_d, rng_t)  # ... with the same RNG calls: later draws stay aligned


@pytest.mark.parametrize("kl", ["mc", "gal"])
@pytest.mark.parametrize("rescale", [True, False])
@pytest.mark.parametrize("likelihood, outputs, target_shape", [
    ("categorical", 3, None), ("gaussian", 2, (BATCH, 2)), ("gaussian", 1, (BATCH,)),
])
def test_direct_equals_trace_elbo_on_the_same_draws(kl, rescale, likelihood, outputs, target_shape):
    net = bn_net(outputs)
    model = SparseBayesModel(net, NUM_DATA, 2.5, 0.7, rescale=rescale, kl=kl, likelihood=likelihood, tau=3.0, slab_scale=0.05)
    guide = HierarchicalGuide(net, 0.7, rescale=rescale, slab_scale=0.05, kl=kl)
    x, y = data(likelihood, outputs, target_shape)
    direct = run(DirectELBO(), model, guide, x, y)
    assert_same(direct, run(Trace_ELBO(), model, guide, x, y))
    # a different seed draws another mask, so the comparison above is not vacuous
    assert not torch.equal(run(DirectELBO(), model, guide, x, y, seed=8)[2], direct[2])


def test_direct_equals_trace_elbo_with_a_learned_keep_probability():
    """Concrete dropout: relaxed masks, the gradient in the keep logit included."""
    net = bn_net()
    net.variational_keep = keep = LearnableKeep(0.8, temperature=0.3).double()
    model = SparseBayesModel(net, NUM_DATA, 2.0, keep, kl="gal")
    guide = HierarchicalGuide(net, keep, kl="gal")
    x, y = data("categorical")
    direct = run(DirectELBO(), model, guide, x, y)
    assert keep.logit.grad is not None and keep.logit.grad != 0
    assert_same(direct, run(Trace_ELBO(), model, guide, x, y))


def test_the_data_plate_scale_enters_as_n_over_b():
    """-ELBO is linear in N through the plate scale N/B: doubling N adds exactly the scaled NLL again."""
    net = bn_net()
    x, y = data("categorical")
    losses = []
    for n in (NUM_DATA, 2 * NUM_DATA):
        model = SparseBayesModel(net, n, 2.5, 0.7, kl="mc", slab_scale=0.05)
        losses.append(run(DirectELBO(), model, HierarchicalGuide(net, 0.7, slab_scale=0.05, kl="mc"), x, y)[0])
    # the NLL of the same draw (same seed: same mask and noise), from the model's own likelihood site
    model = SparseBayesModel(net, NUM_DATA, 2.5, 0.7, kl="mc", slab_scale=0.05)
    pyro.set_rng_seed(7)
    guide_trace = poutine.trace(HierarchicalGuide(net, 0.7, slab_scale=0.05, kl="mc")).get_trace(x, y)
    trace = poutine.trace(poutine.replay(model, guide_trace)).get_trace(x, y)
    obs = trace.nodes["obs"]
    nll_over_batch = -obs["fn"].log_prob(obs["value"]).sum() / BATCH
    torch.testing.assert_close(losses[1] - losses[0], NUM_DATA * nll_over_batch.detach(), rtol=1e-6, atol=0)


def test_captured_dense_gradient_is_the_likelihood_gradient_as_under_trace():
    """RigL's growth signal: gradients w.r.t. the sampled layer weights, without the KL's share."""
    net = bn_net()
    model = SparseBayesModel(net, NUM_DATA, 2.5, 0.7, kl="mc", slab_scale=0.05)
    guide = HierarchicalGuide(net, 0.7, slab_scale=0.05, kl="mc")
    x, y = data("categorical")
    captured = []
    for estimator in (DirectELBO(), Trace_ELBO()):
        net.capture_dense_grad = True
        run(estimator, model, guide, x, y)
        captured.append(net.dense_gradients())
    for a, b in zip(*captured):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_bench_cnn_in_float32_matches_trace():
    """The benchmark's case (digits CNN, density 0.1, keep 0.9, MC KL), float32, built as bench_step.make does."""
    torch.manual_seed(0)
    net = SparseNet(build_model("cnn", (1, 8, 8), 10), 0.1, "erk", RandomMask(0.1))
    num_data = 50_000
    objective = NegativeELBO(SparseBayesModel(net, num_data, 1.0, 0.9), HierarchicalGuide(net, 0.9), num_data)
    assert objective.estimator == "direct" and isinstance(objective.elbo, DirectELBO)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 1, 8, 8, generator=g), torch.randint(0, 10, (64,), generator=g)
    results = []
    for estimator in (objective.elbo, Trace_ELBO()):
        results.append(run(estimator, objective.model, objective.guide, x, y))
    (loss_d, grads_d, mask_d, _), (loss_t, grads_t, mask_t, _) = results
    torch.testing.assert_close(loss_d, loss_t, rtol=1e-5, atol=0)
    for g_d, g_t in zip(grads_d, grads_t):
        torch.testing.assert_close(g_d, g_t, rtol=1e-4, atol=1e-5 * float(g_t.abs().max()))
    assert torch.equal(mask_d, mask_t)


def test_negative_elbo_chooses_its_estimator():
    net = bn_net()
    model = SparseBayesModel(net, NUM_DATA, 2.5, 0.7, kl="mc")
    guide = HierarchicalGuide(net, 0.7, kl="mc")
    x, y = data("categorical")
    default = NegativeELBO(model, guide, NUM_DATA)
    trace = NegativeELBO(model, guide, NUM_DATA, estimator="trace")
    assert default.estimator == "direct" and trace.estimator == "trace" and isinstance(trace.elbo, Trace_ELBO)
    pyro.set_rng_seed(3)
    a = default(x, y)
    pyro.set_rng_seed(3)
    torch.testing.assert_close(a, trace(x, y), rtol=1e-9, atol=0)
    # a wrapped model, an explicit elbo, or a guide whose q(Z) is not the model's prior: Trace_ELBO
    fixed = {"mask": torch.ones(net.support.nnz, dtype=torch.float64)}
    assert NegativeELBO(poutine.condition(model, fixed), poutine.condition(guide, fixed), NUM_DATA).estimator == "trace"
    assert NegativeELBO(model, guide, NUM_DATA, elbo=Trace_ELBO()).estimator == "trace"
    other_keep = HierarchicalGuide(net, 0.6, kl="mc")
    assert NegativeELBO(model, other_keep, NUM_DATA).estimator == "trace"
    with pytest.raises(ValueError, match="estimator='trace'"):
        NegativeELBO(model, other_keep, NUM_DATA, estimator="direct")
    with pytest.raises(ValueError, match="estimator='trace'"):
        DirectELBO().differentiable_loss(model, HierarchicalGuide(net, 0.7, kl="gal"), x, y)
    with pytest.raises(ValueError, match="choose one of"):
        NegativeELBO(model, guide, NUM_DATA, estimator="fast")


def test_cli_svi_objective_uses_the_direct_path(digits_data, tiny_config):
    from cigl_bayes.methods import assemble

    for kl in ("mc", "gal"):
        parts = assemble(tiny_config("cigl-svi", bayes__kl=kl), digits_data, None, progress=False)
        assert parts.trainer.objective.estimator == "direct"
