"""The MC predictive :math:`p(y^* \\mid x^*) \\approx \\frac1T \\sum_t p(y^* \\mid x^*, W_t)`, :math:`W_t \\sim q`."""

from __future__ import annotations

from collections.abc import Callable

import torch
from pyro.infer import Predictive
from torch import Tensor

from ..cigl.averaging import batches_of


@torch.no_grad()
def mc_predictive_probs(model: Callable, guide: Callable, x: Tensor, num_samples: int, batch_size: int = 1024) -> Tensor:
    """Mean over ``num_samples`` guide draws of the model's class probabilities (``"probs"`` site).

    The network runs in eval mode (BatchNorm running statistics); each batch of ``x`` gets
    its own draws.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    net = model.net
    was_training = net.training
    net.eval()
    predictive = Predictive(model, guide=guide, num_samples=num_samples, return_sites=("probs",))
    chunks = [predictive(b)["probs"].mean(0) for b in batches_of(x, batch_size)]
    net.train(was_training)
    return torch.cat(chunks)
