"""Reliability diagrams (matplotlib, object-oriented API only: no pyplot global state)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

from cigl_bayes.metrics.calibration import ECE_BINS, calibration_bins

__all__ = ["plot_reliability_diagram"]


def plot_reliability_diagram(
    probs: Tensor,
    labels: Tensor,
    path: str | os.PathLike[str],
    n_bins: int = ECE_BINS,
    title: str | None = None,
) -> Path:
    """Write a top-label reliability diagram as a PNG and return its path.

    Top panel: per-bin accuracy bars (equal-width bins), the gap to the mean confidence
    shaded, the identity line, and the ECE with its bin count in the legend (by default the
    ``ece`` of ``calibration_report``, ``ECE_BINS`` bins). Bottom panel: histogram of the
    top-label confidences. Parent folders of ``path`` are created.

    The ECE shown uses :func:`~cigl_bayes.metrics.calibration.expected_calibration_error`'s
    convention (``n_bins`` bins plus the degenerate ``{1.0}`` bin); for display only, that
    degenerate bin is merged into the last bar.
    """
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

    fig = Figure(figsize=(5.0, 6.0), dpi=100)
    FigureCanvasAgg(fig)
    gs = fig.add_gridspec(2, 1, height_ratios=(3, 1), hspace=0.08)
    ax = fig.add_subplot(gs[0])
    ax_h = fig.add_subplot(gs[1], sharex=ax)

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
    ax.tick_params(labelbottom=False)
    if title:
        ax.set_title(title)

    ax_h.hist(top_conf, bins=edges, color="tab:gray", edgecolor="black", linewidth=0.6)
    ax_h.set_xlabel("confidence")
    ax_h.set_ylabel("count")

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", bbox_inches="tight")
    return out
