"""PPC and LOO-PIT plots of an ``InferenceData`` from ``cigl_bayes.diagnostics.to_inference_data``."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any


def write_diagnostic_plots(idata: Any, out_dir: str | Path, prefix: str = "") -> list[Path]:
    """Write ``{prefix}ppc.png`` (``az.plot_ppc``; integer labels are drawn as histograms) and
    ``{prefix}loo_pit.png`` (``az.plot_loo_pit``) into ``out_dir`` with the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .arviz import _arviz

    az = _arviz()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    draws = idata.posterior_predictive.sizes["chain"] * idata.posterior_predictive.sizes["draw"]
    plots = {
        "ppc": lambda: az.plot_ppc(idata, data_pairs={"y": "y"}, kind="kde", num_pp_samples=min(50, draws), random_seed=0),
        "loo_pit": lambda: az.plot_loo_pit(idata, y="y"),
    }
    for name, draw in plots.items():
        path = out / f"{prefix}{name}.png"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ax = draw()
        fig = _figure_of(ax, plt)
        try:
            fig.savefig(path, dpi=100, bbox_inches="tight")
        finally:
            plt.close(fig)
        written.append(path)
    return written


def _figure_of(ax: Any, plt: Any) -> Any:
    import numpy as np

    first = np.ravel(np.asarray(ax, dtype=object))[0] if not hasattr(ax, "figure") else ax
    return getattr(first, "figure", None) or plt.gcf()
