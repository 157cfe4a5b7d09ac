"""The MC predictive :math:`p(y^* \\mid x^*) \\approx \\frac1T \\sum_t p(y^* \\mid x^*, W_t)`, :math:`W_t \\sim q`."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from pyro.infer import Predictive
from torch import Tensor

from ..cigl.averaging import batches_of


@torch.no_grad()
def mc_predictive_log_probs(model: Callable, guide: Callable, x: Tensor, num_samples: int, batch_size: int = 1024) -> Tensor:
    """Log of the mean over ``num_samples`` guide draws of the model's class probabilities: a
    log-mean-exp of the ``"log_probs"`` site, exact where the probabilities would underflow.

    The network runs in eval mode (BatchNorm running statistics); each batch of ``x`` gets
    its own draws.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    net = model.net
    was_training = net.training
    net.eval()
    predictive = Predictive(model, guide=guide, num_samples=num_samples, return_sites=("log_probs",))
    chunks = [predictive(b)["log_probs"].logsumexp(0) - math.log(num_samples) for b in batches_of(x, batch_size)]
    net.train(was_training)
    return torch.cat(chunks)


def mc_predictive_probs(model: Callable, guide: Callable, x: Tensor, num_samples: int, batch_size: int = 1024) -> Tensor:
    """Mean over ``num_samples`` guide draws of the model's class probabilities (``mc_predictive_log_probs``, exponentiated)."""
    return mc_predictive_log_probs(model, guide, x, num_samples, batch_size).exp()
