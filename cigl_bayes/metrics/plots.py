"""Reliability diagrams (matplotlib, object-oriented API only: no pyplot global state)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from cigl_bayes._plotting import as_axes, finish, new_figure
from cigl_bayes.metrics.calibration import ECE_BINS, calibration_bins

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["plot_reliability_diagram"]


def plot_reliability_diagram(
    probs: Tensor,
    labels: Tensor,
    path: str | os.PathLike[str] | None = None,
    n_bins: int = ECE_BINS,
    title: str | None = None,
    *,
    ax: "Axes | Sequence[Axes] | None" = None,
) -> "Path | Figure":
    """Draw a top-label reliability diagram; write it to ``path`` (PNG) when given.

    Top panel: per-bin accuracy bars (equal-width bins), the gap to the mean confidence
    shaded, the identity line, and the ECE with its bin count in the legend (by default the
    ``ece`` of ``calibration_report``, ``ECE_BINS`` bins). Bottom panel: histogram of the
    top-label confidences. Parent folders of ``path`` are created.

    ``ax``: draw into the caller's axes instead of a new figure: one ``Axes`` (the reliability
    panel only) or a pair (reliability panel, confidence histogram). Returns ``ax``'s figure when
    ``ax`` is given, else the path when ``path`` is given, else the new figure.

    The ECE shown uses :func:`~cigl_bayes.metrics.calibration.expected_calibration_error`'s
    convention (``n_bins`` bins plus the degenerate ``{1.0}`` bin); for display only, that
    degenerate bin is merged into the last bar.
    """
    if ax is not None:
        axes = as_axes(ax, (1, 2), "ax")
    bins = calibration_bins(probs, labels, n_bins=n_bins, binning="uniform")
    ece = bins.ece()

    counts = bins.counts.cpu().numpy().astype(np.float64)
    conf_sum = bins.confidence.cpu().numpy() * counts
    acc_sum = bins.accuracy.cpu().numpy() * counts
    # fold the {1.0} bin into the last regular bin for drawing
    counts = np.concatenate([counts[:-2], [counts[-2] + counts[-1]]])
    conf_sum = np.concatenate([conf_sum[:-2], [conf_sum[-2] + conf_sum[-1]]])
    acc_sum = np.concatenate([acc_sum[:-2], [acc_sum[-2] + acc_sum[-1]]])
    denom = np.maximum(counts, 1.0)
    mean_conf, mean_acc = conf_sum / denom, acc_sum / denom
    nonempty = counts > 0

    edges = np.linspace(0.0, 1.0, n_bins + 1)
    left, width = edges[:-1], 1.0 / n_bins
    top_conf = probs.detach().max(dim=1).values.to(torch.float64).cpu().numpy()

    if ax is None:
        fig = new_figure(figsize=(5.0, 6.0), dpi=100)
        gs = fig.add_gridspec(2, 1, height_ratios=(3, 1), hspace=0.08)
        ax = fig.add_subplot(gs[0])
        ax_h = fig.add_subplot(gs[1], sharex=ax)
        user_axes = False
    else:
        ax, ax_h = axes[0], (axes[1] if len(axes) == 2 else None)
        fig, user_axes = ax.figure, True

    ax.bar(
        left[nonempty], mean_acc[nonempty], width=width, align="edge",
        color="tab:blue", edgecolor="black", linewidth=0.6, label="accuracy",
    )
    gap_bottom = np.minimum(mean_acc, mean_conf)[nonempty]
    gap_height = np.abs(mean_conf - mean_acc)[nonempty]
    ax.bar(
        left[nonempty], gap_height, bottom=gap_bottom, width=width, align="edge",
        color="tab:red", alpha=0.3, edgecolor="tab:red", hatch="//", linewidth=0.6, label="gap to confidence",
    )
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", linewidth=1.0, label="perfect calibration")
    ax.plot([], [], " ", label=f"ECE ({n_bins} bins) = {100.0 * ece:.2f}%")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left", fontsize="small")
    if title:
        ax.set_title(title)
    if ax_h is None:
        ax.set_xlabel("confidence")
    else:
        if not user_axes:
            ax.tick_params(labelbottom=False)
        ax_h.hist(top_conf, bins=edges, color="tab:gray", edgecolor="black", linewidth=0.6)
        ax_h.set_xlabel("confidence")
        ax_h.set_ylabel("count")
    return finish(fig, path, user_axes, format="png", bbox_inches="tight")
