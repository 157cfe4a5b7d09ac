"""PPC and LOO-PIT plots of an ``InferenceData`` from ``cigl_bayes.diagnostics.to_inference_data``
(ArviZ's matplotlib backend, drawn into object-API figures: no pyplot global state)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._plotting import as_axes, new_figure

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def _draw(draw: Callable[["Axes"], Any], ax: "Axes | None") -> "Figure":
    if ax is None:
        fig = new_figure(figsize=(6.0, 4.0))
        ax = fig.add_subplot(1, 1, 1)
    else:
        (ax,) = as_axes(ax, 1, "ax")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        draw(ax)
    return ax.figure


def plot_posterior_predictive(idata: Any, ax: "Axes | None" = None) -> "Figure":
    """Posterior predictive check of ``y`` (``az.plot_ppc``; integer labels are drawn as
    histograms; at most 50 draws) into ``ax`` (a new figure when ``None``); returns the figure."""
    from .arviz import _arviz

    az = _arviz()
    pp = idata.posterior_predictive
    draws = pp.sizes["chain"] * pp.sizes["draw"]
    return _draw(lambda a: az.plot_ppc(idata, data_pairs={"y": "y"}, kind="kde", num_pp_samples=min(50, draws),
                                       random_seed=0, ax=a), ax)


def plot_loo_pit(idata: Any, ax: "Axes | None" = None) -> "Figure":
    """LOO probability integral transform of ``y`` (``az.plot_loo_pit``) into ``ax`` (a new
    figure when ``None``); returns the figure."""
    from .arviz import _arviz

    az = _arviz()
    return _draw(lambda a: az.plot_loo_pit(idata, y="y", ax=a), ax)


def write_diagnostic_plots(idata: Any, out_dir: str | Path, prefix: str = "") -> list[Path]:
    """Write ``{prefix}ppc.png`` (:func:`plot_posterior_predictive`) and ``{prefix}loo_pit.png``
    (:func:`plot_loo_pit`) into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, plot in (("ppc", plot_posterior_predictive), ("loo_pit", plot_loo_pit)):
        path = out / f"{prefix}{name}.png"
        plot(idata).savefig(path, dpi=100, bbox_inches="tight")
        written.append(path)
    return written
