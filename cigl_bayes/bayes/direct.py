r"""``Trace_ELBO``'s objective for ``SparseBayesModel`` + ``HierarchicalGuide``, without Pyro's tracing.

One particle of ``Trace_ELBO().differentiable_loss(model, guide, x, y)`` draws
:math:`Z \sim q(Z)` and (``kl="mc"``) :math:`w = c\,Z \odot V + s\,\varepsilon`, then returns

.. math::
    -\mathrm{ELBO} = -\tfrac{N}{B} \sum_{i \le B} \log p(y_i \mid x_i, w)
        - \sum_{k \le K} \big[\log \mathcal N(w_k; 0, l^{-2}) - \log \mathcal N(w_k; c z_k v_k, s^2)\big]
        - \big[\log p(Z) - \log q(Z)\big],

or, with ``kl="gal"``, :math:`w = c\,Z \odot V` and the bracketed sum replaced by Gal's closed form.
Since the model's prior on :math:`Z` is the guide's :math:`q(Z)`, the last bracket is zero in value and
gradient; :math:`\log q(w \mid z) = -\tfrac12 \sum_k \varepsilon_k^2 - K \log(s\sqrt{2\pi})` has zero
gradient (the reparameterised paths through :math:`w` and through the mean cancel); and
:math:`\log \mathcal N(w; 0, l^{-2})` is :math:`-\tfrac{l^2}{2}\|w\|^2` plus a constant. So

.. math::
    -\mathrm{ELBO} = \tfrac{N}{B}\,\mathrm{NLL} + \tfrac{l^2}{2}\|w\|^2 - \tfrac12\|\varepsilon\|^2 + K \log\frac{l^{-1}}{s}.

``DirectELBO`` computes exactly this, drawing :math:`Z` and :math:`\varepsilon` with the same torch
calls in the same order as the guide under ``Trace_ELBO`` (the same seed gives the same draws), and
works in the per-layer layout like the plain CigL forward: :math:`W_{\text{eff}} = W \odot E + S` with
:math:`E = M \odot cZ` and :math:`S = M \odot s\varepsilon` scattered once, so :math:`V` is never gathered
and the sample never scattered back through autograd. ``tests/bayes/test_direct.py`` checks value and
gradients against ``Trace_ELBO``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .guide import HierarchicalGuide
from .kl import gal_kl_from_square_norm
from .model import LearnableKeep, SparseBayesModel, gaussian_targets, keep_and_scale, mask_distribution


def direct_unsupported(model: object, guide: object) -> str | None:
    """Why ``DirectELBO`` cannot evaluate this model/guide pair (None: it can)."""
    if type(model) is not SparseBayesModel or type(guide) is not HierarchicalGuide:
        return "the model and guide must be a SparseBayesModel and a HierarchicalGuide (not wrapped, e.g. by poutine.condition)"
    if guide.net is not model.net:
        return "the model and the guide wrap different networks"
    if (guide.kl, guide.rescale) != (model.kl, model.rescale):
        return f"the model and the guide disagree on kl/rescale: {(model.kl, model.rescale)} vs {(guide.kl, guide.rescale)}"
    same_keep = guide.keep is model.keep if isinstance(model.keep, LearnableKeep) else guide.keep == model.keep
    if not same_keep:
        return "the model's prior on the mask is not the guide's q(Z) (different keep probabilities)"
    return None


class _SquareNorm(torch.autograd.Function):
    """:math:`\\sum_t \\|t\\|^2` over several tensors; backward is one fused :math:`2 g\\,t` (no per-tensor norm backward)."""

    @staticmethod
    def forward(ctx, *tensors: Tensor) -> Tensor:
        ctx.save_for_backward(*tensors)
        return torch.stack(torch._foreach_norm(tensors)).square().sum()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, ...]:
        return tuple(torch._foreach_mul(ctx.saved_tensors, 2.0 * grad))


def _square_norm(tensors: list[Tensor]) -> Tensor:
    """:math:`\\sum_t \\|t\\|^2` over a list of tensors, differentiable."""
    return _SquareNorm.apply(*tensors)


class _SampledWeights(torch.autograd.Function):
    """Per layer :math:`W_{\\text{eff}} = W \\odot E + S`, and :math:`\\sum \\|W_{\\text{eff}}\\|^2`, with one fused
    backward :math:`\\partial W = (g_{\\text{eff}} + 2 g_{\\Sigma} W_{\\text{eff}}) \\odot E` (``E``, ``S`` are constants)."""

    @staticmethod
    def forward(ctx, layers: int, *tensors: Tensor) -> tuple[Tensor, ...]:
        weights, effective, noise = tensors[:layers], tensors[layers : 2 * layers], tensors[2 * layers :]
        sampled = torch._foreach_addcmul(noise, weights, effective)
        ctx.save_for_backward(*effective, *sampled)
        ctx.layers = layers
        return (*sampled, torch.stack(torch._foreach_norm(sampled)).square().sum())

    @staticmethod
    def backward(ctx, *grads: Tensor) -> tuple[Tensor | None, ...]:
        n = ctx.layers
        effective, sampled = ctx.saved_tensors[:n], ctx.saved_tensors[n:]
        weight_grads = torch._foreach_mul(sampled, 2.0 * grads[n])
        torch._foreach_add_(weight_grads, grads[:n])
        torch._foreach_mul_(weight_grads, effective)
        return (None, *weight_grads, *(None,) * (2 * n))


def sampled_weights(weights: list[Tensor], effective: list[Tensor], noise: list[Tensor]) -> tuple[list[Tensor], Tensor]:
    """``([W * E + S per layer], sum of their squares)``, differentiable in the weights ``W`` only."""
    *sampled, square_norm = _SampledWeights.apply(len(weights), *weights, *effective, *noise)
    return sampled, square_norm


class DirectELBO:
    """``differentiable_loss(model, guide, x, y)``: ``Trace_ELBO``'s ``-ELBO`` (one particle) computed in torch.

    Same value and gradients as ``pyro.infer.Trace_ELBO().differentiable_loss`` on the same draws
    (module docstring); records the step's ``M * Z * c`` as ``net.last_sampled_mask`` like the guide.
    Pyro effect handlers around the call (``poutine.scale``, ``condition``, ...) are not seen: use
    ``Trace_ELBO`` (``NegativeELBO(..., estimator="trace")``) under them.
    """

    def differentiable_loss(self, model: SparseBayesModel, guide: HierarchicalGuide, x: Tensor, y: Tensor | None) -> Tensor:
        reason = direct_unsupported(model, guide)
        if reason is not None:
            raise ValueError(f"DirectELBO cannot evaluate this pair: {reason}; use NegativeELBO(..., estimator='trace')")
        if y is None:
            raise ValueError("DirectELBO needs targets y (the training objective); use pyro.infer.Predictive to predict")
        net = model.net
        support = net.support
        weights = net.weights()
        like = weights[0]
        active, nnz = support.active_indices(), support.nnz
        keep, scale = keep_and_scale(model.keep, model.rescale)
        if isinstance(model.keep, LearnableKeep):  # relaxed Bernoulli: the guide's rsample
            z = mask_distribution(model.keep, like.new_empty(nnz)).rsample()
        else:  # Bernoulli.sample's own call, so a seed gives the guide's draw
            z = torch.bernoulli(like.new_full((nnz,), keep))
        effective = like.new_zeros(support.total).index_put_((active,), z * scale)
        net.last_sampled_mask = effective.detach()
        effective_layers = support.layer_views(effective)
        if model.kl == "mc":
            eps = like.new_empty(nnz).normal_()  # Normal.rsample's standard-normal draw
            slab = guide.slab_scale
            noise = like.new_zeros(support.total).index_put_((active,), eps * slab)
            layers, square_norm = sampled_weights(weights, effective_layers, support.layer_views(noise))
            prior_std = model.prior_precision**-0.5
            kl = 0.5 * model.prior_precision * square_norm - 0.5 * torch.dot(eps, eps) + nnz * math.log(prior_std / slab)
        else:
            layers = list(torch._foreach_mul(weights, effective_layers))
            values_sq = _square_norm(list(torch._foreach_mul(weights, support.layers())))
            kl = gal_kl_from_square_norm(values_sq, nnz, keep, model.prior_precision, model.slab_scale, scale)
        output = net.forward_with(layers, x)  # the KL does not read `layers`: a captured dense gradient is the likelihood's
        data_scale = model.num_data / x.shape[0]
        if model.likelihood == "categorical":
            nll = F.cross_entropy(output, y, reduction="sum")
        else:
            residual = gaussian_targets(output, y) - output
            nll = 0.5 * model.tau * residual.square().sum() + 0.5 * residual.numel() * math.log(2 * math.pi / model.tau)
        return data_scale * nll + kl
