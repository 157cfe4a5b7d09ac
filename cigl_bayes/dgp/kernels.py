r"""Kernels of one-hidden-layer ReLU networks with Bernoulli masks (the deep-GP reading, one layer).

Analytic kernel (order-1 arc-cosine kernel, Cho & Saul 2009). For first-layer weights
:math:`w \sim \mathcal N(0, \sigma^2 I)` (``prior_var`` :math:`=\sigma^2`),

.. math::
    k(x, y) = \mathbb E_w[\mathrm{relu}(w^\top x)\,\mathrm{relu}(w^\top y)]
            = \frac{\sigma^2 |x|\,|y|}{2\pi}\bigl(\sin t + (\pi - t)\cos t\bigr),
    \qquad t = \angle(x, y).

Masked network. :math:`f(x) = \frac{c}{\sqrt W}\sum_{j=1}^W a_j z_j\,\mathrm{relu}(w_j^\top x)` with
readout weights :math:`a_j \sim \mathcal N(0, 1)` and *unit* masks :math:`z_j \sim \mathrm{Bernoulli}(p)`
(for a scalar output a unit mask is the same thing as an element-wise CigL mask on the readout
weight :math:`a_j`). Because :math:`a_j` has mean zero, the :math:`W` terms are uncorrelated and

.. math::
    \mathrm{Cov}_{a,z}\bigl(f(x), f(y) \mid w_{1:W}\bigr)
      = p c^2\,\hat k_W(x, y),\qquad
    \hat k_W(x, y) = \frac1W \sum_{j=1}^W \mathrm{relu}(w_j^\top x)\,\mathrm{relu}(w_j^\top y),

i.e. :math:`p c^2` times Gal & Ghahramani's Monte-Carlo (random-feature) approximation of the
kernel integral. :math:`\hat k_W` is an average of :math:`W` i.i.d. terms with mean :math:`k`, so
:math:`\hat k_W \to k` almost surely and its error is :math:`O_P(W^{-1/2})` (exactly:
:math:`\mathbb E\|\hat k_W - k\|_F^2 = \frac1W \sum_{x,y}\mathrm{Var}_w[\mathrm{relu}(w^\top x)\mathrm{relu}(w^\top y)]`).
Hence the limit of the masked network's kernel is

.. math::
    p\,c^2\,k(x, y):\quad c = 1\ \Rightarrow\ p\,k;\qquad
    c = 1/p\ (\text{inverted dropout, CigL's forward})\ \Rightarrow\ k/p;\qquad
    c = 1/\sqrt p\ \Rightarrow\ k\ \text{exactly}.

Why unit (readout) masks rather than element-wise masks on the first layer: with
:math:`w_j \odot z_j` the pre-activation variance becomes :math:`\sigma^2 |z_j \odot x|^2`, so the
kernel is :math:`c^2\,\mathbb E_z\,k(z\odot x, z\odot y)`, which equals a multiple of :math:`k` only
approximately (for large input dimension). Masks on the readout enter the covariance only
through :math:`\mathbb E[(c z)^2] = p c^2`, which makes the limit exact.

Note that the covariance over *all* the randomness (:math:`w`, :math:`a`, :math:`z`) equals
:math:`p c^2 k` exactly at every width; the :math:`W^{-1/2}` convergence is a statement about one
network draw (fixed first layer), which is what :func:`empirical_masked_relu_kernel` measures.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["arccos_kernel", "empirical_masked_relu_kernel", "mask_factor", "masked_relu_kernel_limit"]


def _as_matrix(x: Tensor, name: str) -> Tensor:
    if x.dim() == 1:
        return x.unsqueeze(0)
    if x.dim() != 2:
        raise ValueError(f"{name} must be (n, d) or (d,), got shape {tuple(x.shape)}")
    return x


def arccos_kernel(x: Tensor, y: Tensor | None = None, prior_var: float = 1.0) -> Tensor:
    """Order-1 arc-cosine kernel :math:`\\mathbb E_{w \\sim N(0, \\sigma^2 I)}[\\mathrm{relu}(w\\cdot x)\\mathrm{relu}(w\\cdot y)]`.

    ``x`` is (n, d), ``y`` is (m, d) (default ``x``); returns the (n, m) Gram matrix
    ``prior_var * |x||y| / (2 pi) * (sin t + (pi - t) cos t)``. Rows that are zero vectors give
    zero (``relu(w . 0) = 0``); the cosine is clamped to [-1, 1] against rounding.
    """
    x = _as_matrix(x, "x")
    y = x if y is None else _as_matrix(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension, got {x.shape[1]} and {y.shape[1]}")
    nx = x.norm(dim=1)
    ny = y.norm(dim=1)
    norms = nx[:, None] * ny[None, :]
    positive = norms > 0
    cos = torch.where(positive, (x @ y.T) / torch.where(positive, norms, torch.ones_like(norms)), torch.ones_like(norms))
    cos = cos.clamp(-1.0, 1.0)
    t = torch.arccos(cos)
    sin = (1.0 - cos * cos).clamp_min(0.0).sqrt()
    return prior_var * norms / (2.0 * math.pi) * (sin + (math.pi - t) * cos)


def mask_factor(keep: float, rescale: bool = True, scale: float | None = None) -> float:
    """:math:`\\mathbb E[(c z)^2] = p c^2` with ``c = scale`` if given, else ``1/keep`` (``rescale``) or 1.

    ``rescale=True`` is inverted-dropout scaling, as in :class:`cigl_bayes.cigl.random_mask.RandomMask`
    (factor ``1/keep``); ``scale=keep ** -0.5`` makes the factor exactly 1.
    """
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep probability must be in (0, 1], got {keep}")
    c = scale if scale is not None else (1.0 / keep if rescale else 1.0)
    return keep * c * c


def masked_relu_kernel_limit(x: Tensor, keep: float, prior_var: float = 1.0, rescale: bool = True, scale: float | None = None) -> Tensor:
    """Width -> infinity limit of :func:`empirical_masked_relu_kernel`: ``p c^2 * arccos_kernel(x)``."""
    return mask_factor(keep, rescale, scale) * arccos_kernel(x, prior_var=prior_var)


def empirical_masked_relu_kernel(
    x: Tensor,
    width: int,
    keep: float,
    draws: int | None,
    prior_var: float = 1.0,
    rescale: bool = True,
    generator: torch.Generator | None = None,
    chunk: int = 1 << 22,
    scale: float | None = None,
) -> Tensor:
    """Empirical output covariance of ONE random width-``width`` masked ReLU network, (n, n).

    The network is :math:`f(x) = \\frac{c}{\\sqrt W}\\sum_j a_j z_j\\,\\mathrm{relu}(w_j^\\top x)`.
    Its first layer :math:`w_j \\sim N(0, \\sigma^2 I)` is drawn once (``prior_var`` :math:`=\\sigma^2`);
    then ``draws`` independent pairs (readout :math:`a \\sim N(0, I)`, unit masks
    :math:`z \\sim \\mathrm{Bernoulli}(keep)`) are drawn and the sample covariance of the outputs
    (centred by the sample mean, divided by ``draws - 1``) is returned. ``c`` is ``scale`` if
    given, else ``1/keep`` with ``rescale`` (inverted dropout, as CigL's forward) or 1.

    ``draws=None`` returns the exact average over readout and masks given the first layer,
    :math:`p c^2 \\hat k_W` with :math:`\\hat k_W = \\frac1W\\sum_j \\mathrm{relu}(w_j^\\top x)\\mathrm{relu}(w_j^\\top y)`.

    Convergence: to :func:`masked_relu_kernel_limit` (``p c^2 * arccos_kernel``; exactly the
    arc-cosine kernel for ``scale = keep ** -0.5``). The width error (first layer) is
    :math:`O(W^{-1/2})`; the draw error (sample covariance) is :math:`O(\\text{draws}^{-1/2})`
    and does not shrink with width, so use ``draws`` :math:`\\gg W` (or ``None``) to see the
    width scaling. Memory: at most ``chunk`` elements of (draws x width) are held at once.
    Sampling happens in ``x.dtype``; accumulation in float64.
    """
    x = _as_matrix(x, "x")
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    if draws is not None and draws < 2:
        raise ValueError(f"need at least 2 draws for a sample covariance, got {draws}")
    factor = mask_factor(keep, rescale, scale)
    c = math.sqrt(factor / keep)
    n, d = x.shape
    dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
    x = x.to(dtype)
    weights = torch.randn(d, width, generator=generator, dtype=dtype, device=x.device) * math.sqrt(prior_var)
    features = torch.relu(x @ weights)  # (n, W)
    if draws is None:
        f64 = features.double()
        return (factor / width) * (f64 @ f64.T)
    per_chunk = max(1, chunk // width)
    total = torch.zeros(n, dtype=torch.float64, device=x.device)
    outer = torch.zeros(n, n, dtype=torch.float64, device=x.device)
    features_t = features.T * (c / math.sqrt(width))  # (W, n)
    done = 0
    while done < draws:
        m = min(per_chunk, draws - done)
        readout = torch.randn(m, width, generator=generator, dtype=dtype, device=x.device)
        masks = torch.rand(m, width, generator=generator, dtype=dtype, device=x.device) < keep
        outputs = (readout * masks).matmul(features_t).double()  # (m, n)
        total += outputs.sum(0)
        outer += outputs.T @ outputs
        done += m
    mean = total / draws
    return (outer - draws * torch.outer(mean, mean)) / (draws - 1)
