r"""CigL's MC predictive against a GPyTorch deep GP, trained on the same split.

For each dataset and seed, :func:`compare_with_dgp` trains

* the sparse network of ``config.method`` (default CigL) with the library's training loop; its
  predictive is the MC average over ``mc_samples`` fresh random masks of the final network
  (the variational posterior :math:`q(Z)` over the RigL support), and, as a second row, the
  weight-and-mask-averaged network alone;
* a deep GP (:func:`~cigl_bayes.dgp.deep_gp.fit_deep_gp`) on the same standardised inputs;

and scores both on the test split. Classification: NLL, accuracy, ECE (10 bins), mean predictive
entropy. Regression: NLL, RMSE, quantile-calibration error, mean predictive variance (data units).
The network's regression predictive is the mixture :math:`\frac1S\sum_s \mathcal N(f_s(x), \sigma^2)`
with :math:`\sigma^2` chosen on the validation split by maximum likelihood (Gal & Ghahramani tune
the precision :math:`\tau` the same way); the deep GP learns its noise by the ELBO.
``spearman`` is the rank correlation of per-point uncertainty (entropy / variance) with the DGP's.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from torch import Tensor

from ..config import RunConfig, recipe
from ..data import DataSplits, load_dataset
from ..data.tabular import GAP_TOY_GAP, GAP_TOY_RANGE
from ..metrics.calibration import expected_calibration_error
from ..metrics.classification import accuracy, negative_log_likelihood
from ..metrics.regression import mixture_moments, regression_report
from ..names import COMPARE_DATASETS
from ..ood.scores import entropy_score
from .kernels import arccos_kernel, empirical_masked_relu_kernel, mask_factor

if TYPE_CHECKING:  # gpytorch is imported where the deep GP is fitted
    from .deep_gp import DGPConfig, FittedDGP

__all__ = ["COMPARE_DATASETS", "DGPComparison", "Predictive", "compare_with_dgp", "fit_noise_variance", "kernel_relative_errors"]

NET_MC, NET_WMA, DGP = "cigl-mc", "cigl-wma", "dgp"
GRID_POINTS = 200


@dataclass
class Predictive:
    """A test-set predictive as equal-weight mixture components (``S`` draws).

    Classification: ``probs`` ``(S, N, K)``. Regression: ``means`` and ``variances`` ``(S, N)`` in
    standardised target units.
    """

    probs: Tensor | None = None
    means: Tensor | None = None
    variances: Tensor | None = None

    def uncertainty(self) -> Tensor:
        """Per-point predictive entropy (classification) or variance (regression), ``(N,)``."""
        if self.probs is not None:
            return -entropy_score(self.probs.double().mean(0))
        return mixture_moments(self.means, self.variances)[1]

    def scores(self, y: Tensor, target_scale: float = 1.0) -> dict[str, float]:
        """Scores against targets ``y`` (regression: standardised, reported in data units via
        ``target_scale``; see the module docstring)."""
        if self.probs is not None:
            p = self.probs.double().mean(0)
            return {
                "nll": negative_log_likelihood(p, y),
                "accuracy": accuracy(p, y),
                "ece": expected_calibration_error(p, y, n_bins=10),
                "mean_entropy": float(self.uncertainty().mean()),
            }
        return regression_report(y, self.means, self.variances, scale=target_scale)


def fit_noise_variance(outputs: Tensor, y: Tensor, grid: int = 401) -> float:
    """:math:`\\sigma^2` maximising :math:`\\sum_i \\log \\frac1S\\sum_s \\mathcal N(y_i; f_{s,i}, \\sigma^2)`.

    ``outputs``: ``(S, N)`` network draws; ``y``: ``(N,)``. A log-spaced grid over
    :math:`[10^{-4}, 10]` (standardised units) in one vectorised pass.
    """
    f, y = outputs.double().cpu(), y.double().cpu().reshape(-1)
    candidates = torch.logspace(-4, 1, grid, dtype=torch.float64)
    sq = (y - f) ** 2  # (S, N)
    log_n = -0.5 * (torch.log(2 * math.pi * candidates)[:, None, None] + sq[None] / candidates[:, None, None])
    total = (torch.logsumexp(log_n, dim=1) - math.log(f.shape[0])).sum(-1)
    return float(candidates[int(total.argmax())])


def _network_predictives(parts: Any, data: DataSplits, inputs: dict[str, Tensor], mc_samples: int) -> dict[str, dict[str, Predictive]]:
    """MC (random masks of the final net) and WMA predictives of a trained network on ``inputs``."""
    from ..diagnostics.arviz import mc_outputs
    from ..evaluate import predict_logits
    from ..runner import final_model

    averaged, sets = final_model(parts), {"val": data.x_val, **inputs}
    link = None if data.is_regression else (lambda logits: logits.softmax(-1))
    mc = {k: mc_outputs(parts.model, x, mc_samples, link=link).cpu() for k, x in sets.items()}
    point = {k: predict_logits(averaged, x).cpu()[None] for k, x in sets.items()}
    if not data.is_regression:
        return {NET_MC: {k: Predictive(probs=v) for k, v in mc.items() if k != "val"},
                NET_WMA: {k: Predictive(probs=v.softmax(-1)) for k, v in point.items() if k != "val"}}
    out: dict[str, dict[str, Predictive]] = {}
    for name, draws in ((NET_MC, mc), (NET_WMA, point)):
        draws = {k: v.squeeze(-1).double() for k, v in draws.items()}
        noise = fit_noise_variance(draws["val"], data.y_val)
        out[name] = {k: Predictive(means=v, variances=torch.full_like(v, noise)) for k, v in draws.items() if k != "val"}
    return out


def _dgp_predictives(fitted: FittedDGP, inputs: dict[str, Tensor]) -> dict[str, Predictive]:
    preds = {k: fitted.predict(x) for k, x in inputs.items()}
    if fitted.config.task == "classification":
        return {k: Predictive(probs=torch.as_tensor(p["sample_probs"])) for k, p in preds.items()}
    return {k: Predictive(means=torch.as_tensor(p["sample_means"]), variances=torch.as_tensor(p["sample_variances"]))
            for k, p in preds.items()}


def _spearman(a: Tensor, b: Tensor) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a.cpu().numpy(), b.cpu().numpy()).statistic)


def kernel_relative_errors(x: Tensor, widths: Sequence[int] = (64, 1024, 16384), keep: float = 0.9, seed: int = 0,
                           max_points: int = 200) -> dict[int, float]:
    """Relative Frobenius error :math:`\\|\\hat K_W - p c^2 K_{\\arccos}\\|_F / \\|p c^2 K_{\\arccos}\\|_F` on data.

    :math:`\\hat K_W`: the output covariance of one width-``W`` one-hidden-layer ReLU network over its
    Bernoulli(``keep``) masks and Gaussian readout weights (exact average given the first layer, see
    :func:`~cigl_bayes.dgp.kernels.empirical_masked_relu_kernel`), on up to ``max_points`` rows of ``x``.
    """
    x = x.reshape(x.shape[0], -1).double().cpu()[:max_points]
    limit = mask_factor(keep) * arccos_kernel(x)
    generator = torch.Generator().manual_seed(seed)
    errors = {}
    for width in widths:
        empirical = empirical_masked_relu_kernel(x, int(width), keep, draws=None, generator=generator)
        errors[int(width)] = float(torch.linalg.norm(empirical - limit) / torch.linalg.norm(limit))
    return errors


@dataclass
class DGPComparison:
    """Per-seed test scores of the network rows and the deep GP, the kernel report, and seed 0's
    predictives (for plots)."""

    dataset: str
    task: str
    scores: dict[str, list[dict[str, float]]]
    kernel_errors: dict[int, float]
    predictives: dict[str, dict[str, Predictive]] = field(repr=False, default_factory=dict)
    data: DataSplits | None = field(repr=False, default=None)
    config: dict[str, Any] = field(default_factory=dict)
    grid_x: Tensor | None = field(repr=False, default=None)  # 1-D sets: the "grid" inputs in data units

    def summary(self) -> dict[str, dict[str, tuple[float, float]]]:
        """Mean and standard deviation over seeds of every score, per row."""
        out: dict[str, dict[str, tuple[float, float]]] = {}
        for row, per_seed in self.scores.items():
            keys = [k for k in per_seed[0] if all(np.isfinite(s.get(k, np.nan)) for s in per_seed)]
            out[row] = {k: (float(np.mean([s[k] for s in per_seed])), float(np.std([s[k] for s in per_seed]))) for k in keys}
        return out

    @property
    def columns(self) -> tuple[str, ...]:
        if self.task == "classification":
            return ("nll", "accuracy", "ece", "mean_entropy", "spearman")
        extra = ("gap_variance_ratio",) if self.dataset == "gap-toy" else ()
        return ("nll", "rmse", "calibration_error", "mean_variance", *extra, "spearman")

    def nll_difference(self) -> float:
        """Mean test NLL of the network's MC predictive minus the DGP's, in nats per point."""
        s = self.summary()
        return s[NET_MC]["nll"][0] - s[DGP]["nll"][0]

    def nll_gap(self) -> float:
        """Relative NLL gap of the network's MC predictive to the DGP: ``(NLL_net - NLL_dgp) / |NLL_dgp|``
        (unit-dependent for regression; see :meth:`nll_difference`)."""
        return self.nll_difference() / abs(self.summary()[DGP]["nll"][0])

    def to_markdown(self) -> str:
        summary = self.summary()
        seeds = len(next(iter(self.scores.values())))
        lines = [f"| {self.dataset} ({self.task}, {seeds} seed{'s' if seeds > 1 else ''}) | " + " | ".join(self.columns) + " |",
                 "|---" * (len(self.columns) + 1) + "|"]
        for row, values in summary.items():
            cells = [f"{values[c][0]:.4g} ± {values[c][1]:.2g}" if c in values else "–" for c in self.columns]
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "task": self.task, "scores": self.scores,
                "summary": {r: {k: list(v) for k, v in s.items()} for r, s in self.summary().items()},
                "nll_gap": self.nll_gap(), "nll_difference": self.nll_difference(), "kernel_relative_errors": self.kernel_errors, "config": self.config}

    def plot(self, path: str | os.PathLike) -> Path:
        """Write the comparison figure (see :func:`cigl_bayes.dgp.plots.plot_comparison`)."""
        from .plots import plot_comparison

        return plot_comparison(self, path)


def _gap_variance_ratio(x_test: Tensor, variance: Tensor, data: DataSplits) -> float:
    """Mean predictive variance at test inputs inside the gap over that outside it (data units)."""
    raw = x_test.reshape(-1).cpu().double() * data.std[0] + data.mean[0]
    inside = (raw > GAP_TOY_GAP[0]) & (raw < GAP_TOY_GAP[1])
    return float(variance[inside].mean() / variance[~inside].mean())


def compare_with_dgp(
    dataset: str,
    seeds: Sequence[int] = (0,),
    config: RunConfig | None = None,
    dgp_config: DGPConfig | None = None,
    mc_samples: int = 50,
    kernel_widths: Sequence[int] = (64, 1024, 16384),
    progress: bool = True,
) -> DGPComparison:
    """Train the network of ``config`` (default: ``recipe(dataset)`` with CigL) and a deep GP on
    the same split of ``dataset`` for each seed, and score both on the test split."""
    from ..methods import assemble, validate
    from .deep_gp import DGPConfig, fit_deep_gp

    if dataset not in COMPARE_DATASETS:
        raise ValueError(f"unknown comparison dataset {dataset!r}; choose from {', '.join(COMPARE_DATASETS)}")
    if not seeds:
        raise ValueError("give at least one seed")
    if mc_samples < 2:
        raise ValueError(f"mc_samples must be >= 2, got {mc_samples}")
    config = config or recipe(dataset).with_(method="cigl")
    config = config.with_(data__dataset=dataset)
    validate(config, regression_ok=True)
    data = load_dataset(dataset, config.data.data_dir, config.data.val_fraction).to(config.device)
    task = "regression" if data.is_regression else "classification"
    dgp_config = (dgp_config or DGPConfig(task=task)).with_(task=task, device=config.device)
    inputs, grid_x = {"test": data.x_test}, None
    if dataset == "gap-toy":
        lo, hi = GAP_TOY_RANGE
        grid_x = torch.linspace(lo - 0.5, hi + 0.5, GRID_POINTS, dtype=torch.float64)
        inputs["grid"] = ((grid_x - data.mean[0]) / data.std[0]).to(data.x_test).reshape(-1, 1)

    scores: dict[str, list[dict[str, float]]] = {NET_MC: [], NET_WMA: [], DGP: []}
    kept: dict[str, dict[str, Predictive]] = {}
    for seed in seeds:
        parts = assemble(config.with_(seed=int(seed)), data, progress=progress)
        parts.trainer.fit()
        predictives = _network_predictives(parts, data, inputs, mc_samples)
        fitted = fit_deep_gp(data.x_train, data.y_train, dgp_config.with_(seed=int(seed)), progress=progress)
        predictives[DGP] = _dgp_predictives(fitted, inputs)
        reference = predictives[DGP]["test"].uncertainty()
        for row, preds in predictives.items():
            test = preds["test"]
            row_scores = test.scores(data.y_test.cpu(), data.target_std)
            if dataset == "gap-toy":  # (1 for WMA: one fitted noise, a constant variance)
                row_scores["gap_variance_ratio"] = _gap_variance_ratio(data.x_test, test.uncertainty(), data)
            if row == NET_MC or (row == NET_WMA and not data.is_regression):  # WMA regression: constant variance
                row_scores["spearman"] = _spearman(test.uncertainty(), reference)
            scores[row].append(row_scores)
        if not kept:
            kept = predictives
    keep = 1.0 - config.random_mask.drop_rate
    kernel = kernel_relative_errors(data.x_test, kernel_widths, keep=keep) if kernel_widths else {}
    return DGPComparison(dataset, task, scores, kernel, kept, data.to("cpu"),
                         config={"network": config.to_dict(), "dgp": asdict(dgp_config), "mc_samples": mc_samples,
                                 "seeds": [int(s) for s in seeds]}, grid_x=grid_x)
