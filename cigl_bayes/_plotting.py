"""Shared conventions of the package's plot functions (matplotlib object API, no pyplot state).

Every public plot function takes ``ax`` (one panel) or ``axes`` (several panels) and ``path``:

* ``ax`` / ``axes`` given: it draws into them and returns their figure (also written to ``path``
  when given), so a plot can fill panels of a figure the caller made;
* otherwise it makes its own figure; with ``path`` it writes the PNG and returns the path (as the
  CLI uses it), without ``path`` it returns the figure.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def new_figure(**kwargs: Any) -> "Figure":
    """A ``Figure`` with an Agg canvas, outside pyplot (no global figure registry)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def as_axes(axes: "Axes | Sequence[Axes] | np.ndarray", count: int | tuple[int, ...], name: str = "axes") -> list["Axes"]:
    """``axes`` as a list of matplotlib ``Axes`` whose length is ``count`` (or one of them; an array
    from ``subplots`` is flattened, one ``Axes`` is a sequence of one), else a ``ValueError``."""
    from matplotlib.axes import Axes

    counts = (count,) if isinstance(count, int) else tuple(count)
    flat = list(np.ravel(np.asarray(axes, dtype=object)))
    if len(flat) not in counts or not all(isinstance(a, Axes) for a in flat):
        want = " or ".join("one matplotlib Axes" if c == 1 else f"a sequence of {c} matplotlib Axes" for c in counts)
        kinds = ", ".join(sorted({type(a).__name__ for a in flat})) or "nothing"
        raise ValueError(f"{name} must be {want} for this plot, got {len(flat)} item(s) of type {kinds}; "
                         f"pass e.g. {name}=fig.subplots(1, {counts[-1]}).")
    return flat


def finish(fig: "Figure", path: str | os.PathLike[str] | None, user_axes: bool, **savefig: Any) -> "Path | Figure":
    """Write ``fig`` to ``path`` (PNG, parent folders created) when given; return the figure when
    the caller supplied the axes or no path, else the path."""
    out = None
    if path is not None:
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, **savefig)
    return fig if user_axes or out is None else out
