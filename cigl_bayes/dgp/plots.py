"""The network-vs-deep-GP comparison figure (matplotlib object API, no pyplot state)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .._plotting import as_axes, finish, new_figure
from ..metrics.calibration import calibration_bins
from ..metrics.regression import CALIBRATION_LEVELS, mixture_cdf, mixture_moments

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from .compare import DGPComparison, Predictive

COLOURS = {"cigl-mc": "tab:blue", "cigl-wma": "tab:green", "dgp": "tab:red"}


def plot_comparison(comparison: "DGPComparison", path: str | os.PathLike | None = None, *,
                    axes: "Sequence[Axes] | None" = None) -> "Path | Figure":
    """Two panels, seed 0. Left: the 1-D toy's predictive mean ± 2 sd over the input range with
    the training data (``gap-toy``), else per-point uncertainty of the network's MC predictive
    against the DGP's (log scale, Spearman in the title). Right: calibration curves (accuracy vs
    confidence, or observed vs nominal quantile level).

    ``axes``: two of the caller's ``Axes`` (left, right) to draw into, instead of a new figure
    with its title. Writes ``path`` (PNG) when given. Returns ``axes``' figure when ``axes`` is
    given, else the path when ``path`` is given, else the new figure."""
    if axes is None:
        fig = new_figure(figsize=(11.0, 4.2), dpi=100)
        left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    else:
        left, right = as_axes(axes, 2)
        fig = left.figure
    if "grid" in comparison.predictives["dgp"]:
        _plot_curves(left, comparison)
    else:
        _plot_uncertainty_scatter(left, comparison)
    _plot_calibration(right, comparison)
    if axes is None:
        fig.suptitle(f"{comparison.dataset}: sparse network (MC over random masks) vs deep GP")
    return finish(fig, path, axes is not None, format="png", bbox_inches="tight")


def _data_units(comparison: "DGPComparison", values: torch.Tensor, variance: bool = False) -> np.ndarray:
    data = comparison.data
    if variance:
        return (values * data.target_std**2).numpy()
    return (values * data.target_std + data.target_mean).numpy()


def _plot_curves(ax: "Axes", comparison: "DGPComparison") -> None:
    data = comparison.data
    grid_x = comparison.grid_x.numpy()
    for row, preds in comparison.predictives.items():
        grid = preds["grid"]
        mean, variance = mixture_moments(grid.means, grid.variances)
        mean, sd = _data_units(comparison, mean), np.sqrt(_data_units(comparison, variance, variance=True))
        ax.plot(grid_x, mean, color=COLOURS.get(row), label=row)
        ax.fill_between(grid_x, mean - 2 * sd, mean + 2 * sd, color=COLOURS.get(row), alpha=0.15)
    x_train = data.x_train.reshape(-1).double() * data.std[0] + data.mean[0]
    ax.scatter(x_train.numpy(), _data_units(comparison, data.y_train.double()), s=6, color="black", label="train")
    ax.set_xlabel("x")
    ax.set_ylabel("y (mean ± 2 sd)")
    ax.legend(fontsize="small")


def _plot_uncertainty_scatter(ax: "Axes", comparison: "DGPComparison") -> None:
    net, dgp = comparison.predictives["cigl-mc"]["test"], comparison.predictives["dgp"]["test"]
    floor = 1e-12  # near-certain points: shown at the floor of the log axes
    a, b = net.uncertainty().clamp_min(floor).numpy(), dgp.uncertainty().clamp_min(floor).numpy()
    ax.scatter(b, a, s=8, alpha=0.6)
    floor = min(a.min(), b.min())
    top = max(a.max(), b.max())
    ax.plot([floor, top], [floor, top], linestyle="--", color="gray", linewidth=1.0)
    ax.set_xscale("log")
    ax.set_yscale("log")
    what = "entropy" if net.probs is not None else "variance"
    ax.set_xlabel(f"deep GP predictive {what}")
    ax.set_ylabel(f"network MC predictive {what}")
    rho = comparison.scores["cigl-mc"][0].get("spearman", float("nan"))
    ax.set_title(f"per-point uncertainty, Spearman {rho:.2f}")


def _plot_calibration(ax: "Axes", comparison: "DGPComparison") -> None:
    y = comparison.data.y_test
    for row, preds in comparison.predictives.items():
        test: "Predictive" = preds["test"]
        if test.probs is not None:
            bins = calibration_bins(test.probs.double().mean(0), y, n_bins=10)
            used = bins.counts > 0
            ax.plot(bins.confidence[used].numpy(), bins.accuracy[used].numpy(), marker="o", color=COLOURS.get(row), label=row)
        else:
            pit = mixture_cdf(y, test.means, test.variances)
            levels = np.array(CALIBRATION_LEVELS)
            observed = (pit.numpy()[None, :] <= levels[:, None]).mean(1)
            ax.plot(levels, observed, marker="o", color=COLOURS.get(row), label=row)
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", linewidth=1.0)
    regression = comparison.task == "regression"
    ax.set_xlabel("nominal quantile level" if regression else "confidence")
    ax.set_ylabel("observed frequency" if regression else "accuracy")
    ax.set_title("calibration (test)")
    ax.legend(fontsize="small")
