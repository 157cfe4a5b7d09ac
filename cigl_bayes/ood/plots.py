"""Histograms of OOD scores: the in-distribution test set against each OOD set."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from matplotlib.figure import Figure


def plot_score_histograms(scores: dict[str, torch.Tensor], path: str | os.PathLike, title: str | None = None, bins: int = 30) -> Path:
    """One panel per OOD set, each overlaid on the first entry (the ID scores); writes a PNG."""
    if len(scores) < 2:
        raise ValueError("need the in-distribution scores and at least one OOD set")
    (id_name, id_scores), *others = list(scores.items())
    lo = min(float(s.min()) for s in scores.values())
    hi = max(float(s.max()) for s in scores.values())
    edges = torch.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1).numpy()
    fig = Figure(figsize=(3.2 * len(others), 3.0), layout="constrained")
    axes = fig.subplots(1, len(others), squeeze=False)[0]
    for ax, (name, ood_scores) in zip(axes, others):
        ax.hist(id_scores.numpy(), bins=edges, alpha=0.6, density=True, label=id_name)
        ax.hist(ood_scores.numpy(), bins=edges, alpha=0.6, density=True, label=name)
        ax.set_title(name)
        ax.set_xlabel("score (larger = more in-distribution)")
    axes[0].set_ylabel("density")
    axes[0].legend(fontsize="small")
    return save_figure(fig, path, title)


def save_figure(fig: Figure, path: str | os.PathLike, title: str | None = None) -> Path:
    """Give ``fig`` its ``title`` (if any) and write it to ``path`` (PNG, parents created)."""
    if title:
        fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
