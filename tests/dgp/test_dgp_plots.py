"""The network-vs-deep-GP figure drawn into the caller's axes or its own."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from cigl_bayes.dgp.compare import DGP, NET_MC, NET_WMA, DGPComparison, Predictive  # noqa: E402
from cigl_bayes.dgp.plots import plot_comparison  # noqa: E402


def _comparison() -> DGPComparison:
    """A small classification comparison built by hand (no training): 3 rows, 4 draws, 60 points."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (60,), generator=g)
    preds = {row: {"test": Predictive(probs=torch.softmax(torch.randn(4, 60, 3, generator=g) * 2, -1))}
             for row in (NET_MC, NET_WMA, DGP)}
    scores = {row: [{"spearman": 0.5}] if row == NET_MC else [{}] for row in preds}
    return DGPComparison("wine", "classification", scores, {}, preds, SimpleNamespace(y_test=y))


def test_draws_into_the_given_pair_of_axes(tmp_path: Path) -> None:
    fig, axes = plt.subplots(2, 2)
    try:
        before = plt.get_fignums()
        out = plot_comparison(_comparison(), axes=axes[1])
        assert out is fig and plt.get_fignums() == before and len(fig.axes) == 4
        left, right = axes[1]
        assert len(left.collections) == 1 and left.get_xscale() == "log"  # the uncertainty scatter
        assert len(right.lines) == 3 + 1  # one calibration curve per row + the diagonal
        assert all(not a.lines and not a.collections for a in axes[0])
        assert fig._suptitle is None  # the caller's figure keeps its own title
        assert plot_comparison(_comparison(), tmp_path / "c.png", axes=axes[0]) is fig
        assert (tmp_path / "c.png").stat().st_size > 1000
    finally:
        plt.close(fig)


def test_keeps_the_path_behaviour_and_rejects_wrong_axes(tmp_path: Path) -> None:
    before = plt.get_fignums()
    out = plot_comparison(_comparison(), tmp_path / "x" / "c.png")
    assert out == tmp_path / "x" / "c.png" and out.is_file()
    fig = plot_comparison(_comparison())
    assert isinstance(fig, Figure) and len(fig.axes) == 2 and plt.get_fignums() == before
    user, axes = plt.subplots(1, 3)
    try:
        with pytest.raises(ValueError, match="sequence of 2"):
            plot_comparison(_comparison(), axes=axes)
    finally:
        plt.close(user)
