"""Histograms of OOD scores: the in-distribution test set against each OOD set."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .._plotting import as_axes, finish, new_figure

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def plot_score_histograms(scores: dict[str, torch.Tensor], path: str | os.PathLike | None = None, title: str | None = None,
                          bins: int = 30, *, axes: "Axes | Sequence[Axes] | None" = None) -> "Path | Figure":
    """One panel per OOD set, each overlaid on the first entry (the ID scores); writes a PNG to
    ``path`` when given.

    ``axes``: the caller's ``Axes``, one per OOD set (``len(scores) - 1``), to draw into instead
    of a new figure; ``title`` then titles their figure. Returns ``axes``' figure when ``axes`` is
    given, else the path when ``path`` is given, else the new figure."""
    if len(scores) < 2:
        raise ValueError("need the in-distribution scores and at least one OOD set")
    (id_name, id_scores), *others = list(scores.items())
    if axes is not None:
        panels = as_axes(axes, len(others))
    lo = min(float(s.min()) for s in scores.values())
    hi = max(float(s.max()) for s in scores.values())
    edges = torch.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1).numpy()
    if axes is None:
        fig = new_figure(figsize=(3.2 * len(others), 3.0), layout="constrained")
        panels = list(fig.subplots(1, len(others), squeeze=False)[0])
    else:
        fig = panels[0].figure
    for ax, (name, ood_scores) in zip(panels, others):
        ax.hist(id_scores.numpy(), bins=edges, alpha=0.6, density=True, label=id_name)
        ax.hist(ood_scores.numpy(), bins=edges, alpha=0.6, density=True, label=name)
        ax.set_title(name)
        ax.set_xlabel("score (larger = more in-distribution)")
    panels[0].set_ylabel("density")
    panels[0].legend(fontsize="small")
    if title:
        fig.suptitle(title)
    return finish(fig, path, axes is not None, dpi=110)


def save_figure(fig: "Figure", path: str | os.PathLike, title: str | None = None) -> Path:
    """Give ``fig`` its ``title`` (if any) and write it to ``path`` (PNG, parents created)."""
    if title:
        fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
