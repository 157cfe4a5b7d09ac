r"""KL terms of the hierarchical (spike-and-slab) variational family against a Gaussian prior.

Per active weight, with keep probability :math:`p`, rescaling :math:`c` (1, or :math:`1/p`
for inverted dropout), slab scale :math:`s` and prior :math:`\mathcal N(0, l^{-2})`:

.. math::
    q(w) = p\,\mathcal N(w; c v, s^2) + (1-p)\,\mathcal N(w; 0, s^2).

Gal & Ghahramani's approximation (components well separated, :math:`|c v| \gg s`):

.. math::
    \mathrm{KL}(q\,\|\,p) \approx \sum_z q(z)\,\mathrm{KL}(q(w|z)\,\|\,p) - H(p)
    = \tfrac{p\,c^2 l^2}{2} v^2 + \tfrac{l^2 s^2}{2} - \log(l s) - \tfrac12 - H(p).

It is exact up to the overlap of the two components and always lies between the bounds
``E_z KL(q(w|z)||p) - H(p) <= KL(q||p) <= E_z KL(q(w|z)||p)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def bernoulli_entropy(p: float) -> float:
    """:math:`H(p) = -p \\log p - (1-p) \\log(1-p)` (nats; 0 at p in {0, 1})."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"a probability must lie in [0, 1], got {p}")
    if p == 0.0 or p == 1.0:
        return 0.0
    return -(p * math.log(p) + (1.0 - p) * math.log(1.0 - p))


def gaussian_kl(mean: Tensor, std: float, prior_std: float) -> Tensor:
    """Element-wise :math:`\\mathrm{KL}(\\mathcal N(m, s^2) \\| \\mathcal N(0, \\sigma^2))`."""
    ratio = (std / prior_std) ** 2
    return 0.5 * (ratio + mean.pow(2) / prior_std**2 - 1.0 - math.log(ratio))


def gal_kl(values: Tensor, keep: float | Tensor, prior_precision: float, slab_std: float, scale: float | Tensor = 1.0) -> Tensor:
    """Gal's closed-form approximation of :math:`\\sum_i \\mathrm{KL}(q(w_i) \\| p(w_i))` (a scalar).

    ``values`` are the variational means :math:`v` of the active weights, ``prior_precision``
    is :math:`l^2`, ``scale`` is :math:`c`. The :math:`v`-dependent part is the L2 penalty
    :math:`\\tfrac{p c^2 l^2}{2}\\|v\\|^2` of the CigL loss. ``keep`` (and ``scale``) may be
    tensors — a learned keep probability (concrete dropout), for which :math:`-K H(p)` matters.
    """
    return gal_kl_from_square_norm(values.pow(2).sum(), values.numel(), keep, prior_precision, slab_std, scale)


def gal_kl_from_square_norm(
    square_norm: Tensor, n: int, keep: float | Tensor, prior_precision: float, slab_std: float, scale: float | Tensor = 1.0
) -> Tensor:
    """``gal_kl`` given :math:`\\|v\\|^2` and the number :math:`K` = ``n`` of active weights."""
    l2 = prior_precision
    if torch.is_tensor(keep):
        entropy = -(keep * keep.log() + (1.0 - keep) * torch.log1p(-keep))
    else:
        entropy = bernoulli_entropy(keep)
    constant = 0.5 * l2 * slab_std**2 - 0.5 * math.log(l2 * slab_std**2) - 0.5 - entropy
    return 0.5 * keep * scale**2 * l2 * square_norm + n * constant


def equivalent_l2_coefficient(keep: float, prior_precision: float, num_data: int, tau: float = 1.0, scale: float = 1.0) -> float:
    """:math:`\\lambda = p c^2 l^2 / (2 N \\tau)`: the L2 coefficient making ``-ELBO / N`` equal the CigL loss.

    (SGD's ``weight_decay`` :math:`\\omega` adds :math:`\\omega/2 \\|w\\|^2`, i.e. :math:`\\omega = 2\\lambda`.)
    """
    return keep * scale**2 * prior_precision / (2.0 * num_data * tau)


def prior_precision_for_weight_decay(weight_decay: float, keep: float, num_data: int, tau: float = 1.0, scale: float = 1.0) -> float:
    """The :math:`l^2` whose KL term equals SGD weight decay ``weight_decay`` on the values."""
    if weight_decay <= 0:
        raise ValueError(f"weight decay must be > 0 to define a prior precision, got {weight_decay}")
    return weight_decay * num_data * tau / (keep * scale**2)
