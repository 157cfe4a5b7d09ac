"""OOD figures (score histograms, MOON diagnostics) drawn into the caller's axes or their own."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from cigl_bayes.ood.diagnostics import plot_moon_diagnostics  # noqa: E402
from cigl_bayes.ood.plots import plot_score_histograms  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _scores() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"test": torch.randn(200, generator=g) + 2, "noise": torch.randn(100, generator=g), "flip": torch.randn(80, generator=g) + 1}


def _history() -> dict:
    return {"epoch": [1, 2, 3], "train_error": [0.5, 0.3, 0.2], "pushes_unknown_up": [0.0, 0.1, 0.05],
            "mean_q": {"train": [0.1, 0.2, 0.2], "test": [0.1, None, 0.3], "ood:noise": [0.2, 0.5, 0.7]},
            "alpha": [0.0, 1.0, 1.0]}


def test_histograms_draw_into_the_given_axes() -> None:
    fig, axes = plt.subplots(2, 2)
    try:
        before = plt.get_fignums()
        out = plot_score_histograms(_scores(), axes=axes[0], title="MSP")
        assert out is fig and plt.get_fignums() == before and len(fig.axes) == 4
        for ax, name in zip(axes[0], ("noise", "flip")):
            assert len(ax.patches) == 2 * 30 and ax.get_title() == name  # ID + OOD histograms, 30 bins each
        assert all(not a.patches for a in axes[1])
        assert fig._suptitle is not None and fig._suptitle.get_text() == "MSP"
    finally:
        plt.close(fig)


def test_histograms_keep_the_path_behaviour_and_return_a_figure_without_one(tmp_path: Path) -> None:
    before = plt.get_fignums()
    out = plot_score_histograms(_scores(), tmp_path / "a" / "h.png", title="t")
    assert out == tmp_path / "a" / "h.png" and out.read_bytes()[:8] == PNG_MAGIC
    fig = plot_score_histograms(_scores())
    assert isinstance(fig, Figure) and len(fig.axes) == 2 and plt.get_fignums() == before


def test_histograms_reject_the_wrong_number_of_axes() -> None:
    fig, axes = plt.subplots(1, 3)
    try:
        with pytest.raises(ValueError, match="sequence of 2 matplotlib Axes"):
            plot_score_histograms(_scores(), axes=axes)
        single = {k: v for k, v in list(_scores().items())[:2]}
        assert plot_score_histograms(single, axes=axes[2]) is fig  # one OOD set: one Axes is enough
        assert len(axes[2].patches) == 60 and not axes[0].patches
    finally:
        plt.close(fig)


def test_moon_diagnostics_draw_into_the_given_axes(tmp_path: Path) -> None:
    fig, axes = plt.subplots(2, 4)
    try:
        before = plt.get_fignums()
        out = plot_moon_diagnostics(_history(), tmp_path / "m.png", axes=axes[1])
        assert out is fig and plt.get_fignums() == before
        assert (tmp_path / "m.png").read_bytes()[:8] == PNG_MAGIC
        assert [len(a.lines) for a in axes[1]] == [1, 1, 3, 1]
        assert all(not a.lines for a in axes[0])
        with pytest.raises(ValueError, match="sequence of 4"):
            plot_moon_diagnostics(_history(), axes=axes[0][:3])
    finally:
        plt.close(fig)


def test_moon_diagnostics_keep_the_path_behaviour(tmp_path: Path) -> None:
    out = plot_moon_diagnostics(_history(), tmp_path / "d" / "m.png", title="x")
    assert out == tmp_path / "d" / "m.png" and out.read_bytes()[:8] == PNG_MAGIC
    fig = plot_moon_diagnostics(_history())
    assert isinstance(fig, Figure) and len(fig.axes) == 4
