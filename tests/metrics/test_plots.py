"""Reliability diagram output."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cigl_bayes.metrics import plot_reliability_diagram

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_writes_png_into_new_nested_folder(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(500, 5, generator=g) * 3, dim=1)
    probs[:20] = torch.eye(5)[:4].repeat(5, 1)  # some confidences exactly 1.0
    labels = torch.randint(0, 5, (500,), generator=g)
    target = tmp_path / "a" / "b" / "c" / "reliability.png"
    out = plot_reliability_diagram(probs, labels, target, n_bins=10, title="test")
    assert isinstance(out, Path) and out == target
    data = out.read_bytes()
    assert len(data) > 1000
    assert data[:8] == PNG_MAGIC
    assert b"IEND" in data[-16:]


def test_accepts_str_path_and_single_example(tmp_path: Path) -> None:
    out = plot_reliability_diagram(torch.tensor([[0.3, 0.7]]), torch.tensor([0]), str(tmp_path / "x" / "one.png"))
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_no_pyplot_global_state(tmp_path: Path) -> None:
    import sys

    before = set(sys.modules["matplotlib.pyplot"].get_fignums()) if "matplotlib.pyplot" in sys.modules else set()
    plot_reliability_diagram(torch.full((4, 2), 0.5), torch.tensor([0, 1, 0, 1]), tmp_path / "p.png")
    after = set(sys.modules["matplotlib.pyplot"].get_fignums()) if "matplotlib.pyplot" in sys.modules else set()
    assert after == before


def test_bad_input_raises(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="length mismatch"):
        plot_reliability_diagram(torch.full((4, 2), 0.5), torch.tensor([0, 1]), tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_inputs(tmp_path: Path) -> None:
    probs = torch.softmax(torch.randn(100, 3), dim=1).cuda()
    out = plot_reliability_diagram(probs, torch.randint(0, 3, (100,)).cuda(), tmp_path / "gpu.png")
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_legend_shows_the_reported_ece_and_its_bin_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The diagram's ECE is the console's / metrics.json's ``ece`` (same bins), and says how many bins."""
    from matplotlib.figure import Figure

    from cigl_bayes.metrics import calibration_report

    saved = []
    real_savefig = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: (saved.append(self), real_savefig(self, *a, **k))[1])
    g = torch.Generator().manual_seed(1)
    probs = torch.softmax(torch.randn(400, 4, generator=g) * 2, dim=1)
    labels = torch.randint(0, 4, (400,), generator=g)
    plot_reliability_diagram(probs, labels, tmp_path / "r.png")
    legend = [t.get_text() for t in saved[0].axes[0].get_legend().get_texts()]
    ece = calibration_report(probs, labels)["ece"]
    assert f"ECE (10 bins) = {100 * ece:.2f}%" in legend, legend


# ----------------------------------------------------------------------------------------
# drawing into the caller's axes
# ----------------------------------------------------------------------------------------
def _user_grid(n: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, n)
    return plt, fig, list(axes) if n > 1 else [axes]


def _probs_labels() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return torch.softmax(torch.randn(300, 4, generator=g) * 2, dim=1), torch.randint(0, 4, (300,), generator=g)


def test_draws_into_one_given_ax_and_returns_its_figure(tmp_path: Path) -> None:
    probs, labels = _probs_labels()
    plt, fig, (ax, spare) = _user_grid(2)
    try:
        before = plt.get_fignums()
        out = plot_reliability_diagram(probs, labels, ax=ax, title="mine")
        assert out is fig and plt.get_fignums() == before
        assert len(ax.patches) > 0 and len(ax.lines) == 2 and ax.get_title() == "mine"
        assert ax.get_xlabel() == "confidence" and ax.get_legend() is not None
        assert not spare.patches and not spare.lines and len(fig.axes) == 2  # nothing else drawn or added
        # with a path as well: the user's figure is written, and still returned
        assert plot_reliability_diagram(probs, labels, tmp_path / "f.png", ax=spare) is fig
        assert (tmp_path / "f.png").read_bytes()[:8] == PNG_MAGIC
    finally:
        plt.close(fig)


def test_draws_into_a_given_pair_with_the_confidence_histogram() -> None:
    probs, labels = _probs_labels()
    plt, fig, axes = _user_grid(3)
    try:
        before = plt.get_fignums()
        assert plot_reliability_diagram(probs, labels, ax=axes[1:]) is fig
        assert plt.get_fignums() == before
        heights = sum(p.get_height() for p in axes[2].patches)  # histogram bars count every example
        assert heights == pytest.approx(300)
        assert len(axes[1].patches) > 0 and not axes[0].patches and not axes[0].lines
    finally:
        plt.close(fig)


def test_without_ax_or_path_returns_a_new_figure_outside_pyplot() -> None:
    from matplotlib.figure import Figure

    probs, labels = _probs_labels()
    plt, user, _ = _user_grid(1)
    try:
        before = plt.get_fignums()
        fig = plot_reliability_diagram(probs, labels)
        assert isinstance(fig, Figure) and fig is not user and len(fig.axes) == 2
        assert plt.get_fignums() == before
    finally:
        plt.close(user)


def test_wrong_axes_raise_with_the_fix() -> None:
    probs, labels = _probs_labels()
    plt, fig, axes = _user_grid(3)
    try:
        with pytest.raises(ValueError, match="one matplotlib Axes or a sequence of 2"):
            plot_reliability_diagram(probs, labels, ax=axes)
        with pytest.raises(ValueError, match="matplotlib Axes"):
            plot_reliability_diagram(probs, labels, ax="not an axes")
        assert all(not a.patches for a in axes)
    finally:
        plt.close(fig)
