r"""The sparse network as a Pyro model.

Latent sites (one per role, over the whole network's active weights — few sites keep
Pyro's per-site tracing cost small):

- ``"mask"``: :math:`Z \sim \mathrm{Bernoulli}(p)^{\otimes K}`, :math:`K` = number of active
  weights (the support :math:`M` comes from the sparse engine; RigL keeps updating it).
  Its prior equals the guide's :math:`q(Z)`, so it adds nothing to the KL: the ELBO is
  :math:`\mathbb E_{q(Z)}[\mathrm{ELBO}(q(W \mid Z))]`, a valid bound (see ``theory/``).
- ``"weights"`` (``kl="mc"``): :math:`W \sim \mathcal N(0, l^{-2})^{\otimes K}`; the KL is then
  estimated by Monte Carlo through ``Trace_ELBO``. With ``kl="gal"`` the weights are the
  deterministic :math:`W = c\,Z \odot V` and Gal's closed-form KL enters as a ``pyro.factor``.
- ``"obs"``: categorical (logits) or Gaussian (precision :math:`\tau`) likelihood inside a data
  plate of size :math:`N` subsampled to the mini-batch (scale :math:`N/B`). Gaussian targets have
  the output's shape, or (B,) for a one-output net.

Biases and BatchNorm parameters are point estimates (ordinary torch parameters).
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn

from ..sparse.network import SparseNet
from .kl import gal_kl

LIKELIHOODS = ("categorical", "gaussian")
KL_MODES = ("mc", "gal")


class LearnableKeep(nn.Module):
    """A learned keep probability :math:`p = \\sigma(\\theta)` (concrete dropout, Gal et al. 2017).

    Registered on the ``SparseNet`` (``net.variational_keep``) so the optimiser trains it and
    checkpoints hold it. The mask is then a relaxed Bernoulli of ``temperature`` (reparameterised).
    """

    def __init__(self, keep: float, temperature: float = 0.1) -> None:
        super().__init__()
        if not 0.0 < keep < 1.0:
            raise ValueError(f"a learnable keep probability must start in (0, 1), got {keep}")
        if temperature <= 0:
            raise ValueError(f"relaxation temperature must be > 0, got {temperature}")
        self.logit = nn.Parameter(torch.tensor(math.log(keep / (1.0 - keep))))
        self.temperature = temperature

    @property
    def probs(self) -> Tensor:
        return torch.sigmoid(self.logit)


def mask_distribution(keep: float | LearnableKeep, like: Tensor) -> dist.Distribution:
    """:math:`q(Z)` over the active entries: Bernoulli(p), or a relaxed Bernoulli for a learned p.

    The model uses the same distribution as its "prior" on ``Z``, so the mask contributes nothing
    to the KL beyond Gal's closed form (whose :math:`-K H(p)` carries the dependence on p).
    """
    if isinstance(keep, LearnableKeep):
        probs = keep.probs.to(like.dtype).expand(like.shape)
        return dist.RelaxedBernoulli(like.new_tensor(keep.temperature), probs=probs, validate_args=False).to_event(1)
    return dist.Bernoulli(probs=like.new_full(like.shape, keep), validate_args=False).to_event(1)


def keep_and_scale(keep: float | LearnableKeep, rescale: bool) -> tuple[float | Tensor, float | Tensor]:
    """:math:`p` and :math:`c` (``1/p`` with inverted-dropout rescaling, else 1)."""
    p = keep.probs if isinstance(keep, LearnableKeep) else keep
    return p, (1.0 / p if rescale else 1.0)


def active_values(net: SparseNet) -> Tensor:
    """The stored weights at the support's active positions, as one flat vector (the :math:`V`)."""
    flat = torch.cat([w.reshape(-1) for w in net.weights()])
    return flat[net.support.active_indices()]


def scatter_active(net: SparseNet, values: Tensor) -> Tensor:
    """A flat vector over all maskable entries holding ``values`` at the active positions, zeros elsewhere."""
    support = net.support
    return values.new_zeros(support.total).index_put((support.active_indices(),), values)


def scatter_to_layers(net: SparseNet, values: Tensor) -> list[Tensor]:
    """Per-layer weight tensors holding ``values`` at the active positions and zeros elsewhere."""
    return net.support.layer_views(scatter_active(net, values))


def gaussian_targets(output: Tensor, y: Tensor | None) -> Tensor | None:
    """``y`` in the shape of the network's ``output``: targets (B,) of a one-output net become (B, 1).

    Any other shape is refused: broadcasting would silently sum :math:`\\log \\mathcal N(y_j; f_i, 1/\\tau)`
    over every pair of examples (i, j).
    """
    if y is None or y.shape == output.shape:
        return y
    if output.shape[-1] == 1 and y.shape == output.shape[:-1]:
        return y.unsqueeze(-1)
    raise ValueError(f"regression targets of shape {tuple(y.shape)} do not match the network output {tuple(output.shape)}")


class SparseBayesModel:
    """Pyro model :math:`p(y, W, Z \\mid x)` of a ``SparseNet`` (see module docstring).

    Args:
        net: the sparse network (its support defines the active weights).
        num_data: :math:`N`, the training-set size (data-plate size).
        prior_precision: :math:`l^2` of the weight prior.
        keep: :math:`p`, the keep probability of the random mask, or a ``LearnableKeep``.
        rescale: inverted-dropout scaling :math:`c = 1/p` (else :math:`c = 1`).
        kl: ``"mc"`` (prior site, Monte-Carlo KL) or ``"gal"`` (closed-form factor).
        likelihood: ``"categorical"`` or ``"gaussian"``; ``tau`` is the Gaussian precision.
        slab_scale: :math:`s`, used by the closed-form KL's constant.
    """

    def __init__(
        self,
        net: SparseNet,
        num_data: int,
        prior_precision: float,
        keep: float | LearnableKeep,
        rescale: bool = True,
        kl: str = "mc",
        likelihood: str = "categorical",
        tau: float = 1.0,
        slab_scale: float = 1e-3,
    ) -> None:
        if kl not in KL_MODES:
            raise ValueError(f"unknown KL mode {kl!r}; choose one of {KL_MODES}")
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"unknown likelihood {likelihood!r}; choose one of {LIKELIHOODS}")
        if isinstance(keep, LearnableKeep):
            if kl != "gal":
                raise ValueError("a learnable keep probability needs the closed-form KL (kl='gal'): its -K H(p) term")
        elif not 0.0 < keep <= 1.0:
            raise ValueError(f"keep probability must be in (0, 1], got {keep}")
        if prior_precision <= 0 or num_data < 1 or tau <= 0:
            raise ValueError("prior_precision and tau must be > 0 and num_data >= 1")
        self.net = net
        self.num_data = num_data
        self.prior_precision = prior_precision
        self.keep = keep
        self.rescale = rescale
        self.kl = kl
        self.likelihood = likelihood
        self.tau = tau
        self.slab_scale = slab_scale

    def __call__(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        if self.kl == "mc":  # the weights come from the prior site: V itself is not needed here
            like = self.net.weights()[0].new_empty(self.net.support.nnz)
            pyro.sample("mask", mask_distribution(self.keep, like))
            prior_std = torch.full_like(like, 1.0 / math.sqrt(self.prior_precision))
            weights = pyro.sample("weights", dist.Normal(torch.zeros_like(like), prior_std, validate_args=False).to_event(1))
        else:
            values = active_values(self.net)
            z = pyro.sample("mask", mask_distribution(self.keep, values))
            keep, scale = keep_and_scale(self.keep, self.rescale)
            weights = z * values * scale
            pyro.factor("kl_gal", -gal_kl(values, keep, self.prior_precision, self.slab_scale, scale))
        output = self.net.forward_with(scatter_to_layers(self.net, weights), x)
        batch = x.shape[0]
        with pyro.plate("data", size=self.num_data, subsample=torch.arange(batch, device=x.device)):
            if self.likelihood == "categorical":
                if y is None:
                    pyro.deterministic("probs", output.softmax(-1), event_dim=1)
                    pyro.deterministic("log_probs", output.log_softmax(-1), event_dim=1)
                pyro.sample("obs", dist.Categorical(logits=output, validate_args=False), obs=y)
            else:
                if y is None:
                    pyro.deterministic("mean", output, event_dim=output.dim() - 1)
                noise = output.new_tensor(self.tau**-0.5)
                obs = gaussian_targets(output, y)
                pyro.sample("obs", dist.Normal(output, noise, validate_args=False).to_event(output.dim() - 1), obs=obs)
        return output
