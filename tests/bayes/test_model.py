"""The Pyro model's likelihood sites: the Gaussian log-likelihood in closed form, shape-safe targets."""

import math

import pyro.poutine as poutine
import pytest
import torch
from torch import nn

from cigl_bayes.bayes import SparseBayesModel
from cigl_bayes.sparse import SparseNet


def regression_setup(batch=8, tau=4.0):
    """A one-output sparse MLP, its Gaussian model (keep 1: W = M * V, plate scale N/B = 1) and data."""
    torch.manual_seed(0)
    net = SparseNet(nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 1)), 0.5).double()
    model = SparseBayesModel(net, batch, 1.0, 1.0, kl="gal", likelihood="gaussian", tau=tau)
    g = torch.Generator().manual_seed(1)
    return net, model, torch.randn(batch, 3, generator=g, dtype=torch.float64), torch.randn(batch, generator=g, dtype=torch.float64)


def obs_log_prob(model, x, y):
    trace = poutine.trace(model).get_trace(x, y)
    trace.compute_log_prob()
    return trace.nodes["obs"]["log_prob_sum"]


@pytest.mark.parametrize("target_shape", ["(B,)", "(B, 1)"])
def test_gaussian_log_likelihood_is_the_closed_form_sum_over_examples(target_shape):
    """sum_i log N(y_i; f_i, 1/tau) for targets of shape (B,) (the library's) or (B, 1), not an all-pairs sum."""
    tau = 4.0
    net, model, x, y = regression_setup(tau=tau)
    with torch.no_grad():
        f = net.eval()(x).squeeze(-1)
    expected = (0.5 * math.log(tau / (2 * math.pi)) - 0.5 * tau * (y - f) ** 2).sum()
    target = y if target_shape == "(B,)" else y.unsqueeze(-1)
    torch.testing.assert_close(obs_log_prob(model, x, target).detach(), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(8, 2), (7,), (7, 1), (1, 8)])
def test_gaussian_targets_of_another_shape_are_refused(shape):
    _, model, x, _ = regression_setup()
    with pytest.raises(ValueError, match="target"):
        poutine.trace(model).get_trace(x, torch.zeros(shape, dtype=torch.float64))
