"""MC predictive samples as ``arviz.InferenceData`` (posterior_predictive, observed_data,
log_likelihood) so that ``az.loo``, ``az.plot_ppc`` and ``az.plot_loo_pit`` work on them.

Each MC draw ``W_s`` (random mask, dropout or guide sample) is one posterior "draw"; several
seeds or averaged models can be stacked as chains. ``arviz`` is imported only inside these
functions (it is slow to import and warns at import time).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from ..cigl.averaging import batches_of
from ..evaluate import mc_sampling

if TYPE_CHECKING:  # pragma: no cover
    import arviz as az


def _arviz() -> Any:
    """``import arviz`` without its import-time FutureWarning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import arviz

    return arviz


@torch.no_grad()
def mc_outputs(model: nn.Module, x: Tensor, draws: int, batch_size: int = 1024, link: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """Per-draw outputs ``link(f(x; W_s))`` (identity by default), shape ``(draws, N, outputs)``,
    under :func:`cigl_bayes.evaluate.mc_sampling`, in the same draw order as
    ``cigl_bayes.evaluate.mc_predict_probs``."""
    if draws < 1:
        raise ValueError(f"MC draws must be >= 1, got {draws}")
    link = link or (lambda out: out)
    with mc_sampling(model):
        return torch.stack([torch.cat([link(model(b)) for b in batches_of(x, batch_size)]) for _ in range(draws)])


def mc_class_probs(model: nn.Module, x: Tensor, draws: int, batch_size: int = 1024) -> Tensor:
    """Per-draw class probabilities ``softmax(f(x; W_s))``, shape ``(draws, N, K)`` (not averaged);
    with the same generator state their mean equals ``mc_predict_probs``."""
    return mc_outputs(model, x, draws, batch_size, link=lambda logits: logits.softmax(-1))


def _as_numpy(a: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(a, Tensor):
        return a.detach().cpu().double().numpy()
    return np.asarray(a, dtype=np.float64)


def to_inference_data(probs: Tensor | np.ndarray, y: Tensor | np.ndarray, seed: int = 0, sample_ppc: bool = True) -> "az.InferenceData":
    """``InferenceData`` from per-draw class probabilities ``probs`` and labels ``y``.

    Args:
        probs: ``(chains, draws, N, K)`` or ``(draws, N, K)`` (one chain); e.g. several seeds or
            averaged models as chains, MC draws (``mc_class_probs``) as draws.
        y: integer labels, shape ``(N,)``.
        seed: seeds the numpy generator of the posterior-predictive labels.
        sample_ppc: add ``posterior_predictive["y"]`` (one categorical label per draw and point).

    Groups: ``log_likelihood["y"] = log p(y_n | draw)`` (chain, draw, obs), ``observed_data["y"]``
    (obs), ``posterior_predictive["y"]`` (chain, draw, obs), and ``posterior["log_lik_total"]``
    (chain, draw) = ``sum_n log p(y_n | draw)``, which ``az.loo`` needs for its relative ESS.
    """
    az = _arviz()
    p = _as_numpy(probs)
    if p.ndim == 3:
        p = p[None]
    if p.ndim != 4:
        raise ValueError(f"probs must be (chains, draws, N, K) or (draws, N, K), got shape {p.shape}")
    chains, draws, n, k = p.shape
    labels = (y.detach().cpu().numpy() if isinstance(y, Tensor) else np.asarray(y)).astype(np.int64).reshape(-1)
    if labels.shape != (n,):
        raise ValueError(f"y must have shape ({n},), got {labels.shape}")
    if labels.min(initial=0) < 0 or labels.max(initial=0) >= k:
        raise ValueError(f"labels must lie in [0, {k}), got range [{labels.min()}, {labels.max()}]")
    selected = np.take_along_axis(p, labels[None, None, :, None], axis=-1)[..., 0]
    with np.errstate(divide="ignore"):
        log_lik = np.log(selected)
    coords = {"obs": np.arange(n)}
    dims = {"y": ["obs"]}
    groups: dict[str, Any] = {
        "posterior": {"log_lik_total": log_lik.sum(-1)},
        "log_likelihood": {"y": log_lik},
        "observed_data": {"y": labels},
    }
    if sample_ppc:
        rng = np.random.default_rng(seed)
        cdf = np.cumsum(p, axis=-1)
        u = rng.random((chains, draws, n, 1)) * cdf[..., -1:]  # normalise rows that do not sum to 1 exactly
        groups["posterior_predictive"] = {"y": np.minimum((u >= cdf).sum(-1), k - 1).astype(np.int64)}
    return az.from_dict(**groups, coords=coords, dims=dims)


def _psis_loo(idata: "az.InferenceData"):
    az = _arviz()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "shape parameter of Pareto is greater than 0.7" / pointwise
        return az.loo(idata, pointwise=True)


def loo_report(idata: "az.InferenceData") -> dict[str, float]:
    """PSIS-LOO of ``idata``: ``elpd_loo``, ``se``, ``p_loo`` and ``frac_k_gt_0.7`` (Pareto k > 0.7).

    Meaningful for the points the draws were conditioned on (the training data). For held-out
    points use :func:`held_out_report`: there LOO's "leaving out" removes a point that was never in.
    """
    loo = _psis_loo(idata)
    k = np.asarray(loo.pareto_k)
    return {
        "elpd_loo": float(loo.elpd_loo),
        "se": float(loo.se),
        "p_loo": float(loo.p_loo),
        "frac_k_gt_0.7": float(np.mean(k > 0.7)),
        "n_obs": int(k.size),
    }


def held_out_report(idata: "az.InferenceData") -> dict[str, float]:
    r"""Scores of draws on points they were *not* conditioned on (a test split).

    * ``lpd`` = :math:`\sum_n \log \frac1S \sum_s p(y_n \mid W_s)`: on held-out points this is
      itself the estimate of the expected log predictive density (= :math:`-N \cdot` NLL of the MC
      predictive); ``se`` its standard error :math:`\sqrt{N}\,\mathrm{sd}_n(\mathrm{lpd}_n)`.
    * ``psis_reweighted_lpd``: what ``az.loo`` reports as ``elpd_loo`` on these points -- the draws
      importance-reweighted by :math:`1/p(y_n \mid W_s)` as if each point had to be removed from a
      posterior it was never in; not an elpd.
    * ``draw_disagreement`` = ``lpd - psis_reweighted_lpd`` >= 0 (``az.loo``'s ``p_loo`` on these
      points): how much the draws differ on the observed labels; 0 when all draws agree. Not an
      effective number of parameters here.
    * ``frac_k_gt_0.7``: share of points whose Pareto k exceeds 0.7 (unreliable reweighting).
    """
    log_lik = np.asarray(idata.log_likelihood["y"]).reshape(-1, idata.log_likelihood["y"].shape[-1])  # (draws, N)
    pointwise = np.logaddexp.reduce(log_lik, axis=0) - np.log(log_lik.shape[0])
    loo = _psis_loo(idata)
    lpd, reweighted = float(pointwise.sum()), float(loo.elpd_loo)
    return {
        "lpd": lpd,
        "se": float(np.sqrt(pointwise.size) * pointwise.std(ddof=1)) if pointwise.size > 1 else 0.0,
        "psis_reweighted_lpd": reweighted,
        "draw_disagreement": lpd - reweighted,
        "frac_k_gt_0.7": float(np.mean(np.asarray(loo.pareto_k) > 0.7)),
        "n_obs": int(pointwise.size),
    }
