"""ArviZ PPC / LOO-PIT plots drawn into the caller's axes or their own (no pyplot figures)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

pytest.importorskip("arviz")

from cigl_bayes.diagnostics import plot_loo_pit, plot_posterior_predictive, to_inference_data  # noqa: E402


@pytest.fixture(scope="module")
def idata():
    g = torch.Generator().manual_seed(0)
    centre = 1.5 * torch.randn(60, 3, generator=g, dtype=torch.float64)
    probs = torch.softmax(centre + 0.3 * torch.randn(2, 20, 60, 3, generator=g, dtype=torch.float64), -1)
    y = torch.multinomial(probs.mean((0, 1)), 1, generator=g).squeeze(-1)
    return to_inference_data(probs, y)


def test_draw_into_the_given_axes(idata) -> None:
    fig, axes = plt.subplots(1, 3)
    try:
        before = plt.get_fignums()
        assert plot_posterior_predictive(idata, ax=axes[0]) is fig
        assert plot_loo_pit(idata, ax=axes[1]) is fig
        assert plt.get_fignums() == before and len(fig.axes) == 3
        assert len(axes[0].lines) > 40  # 40 posterior-predictive draws + observed + mean
        assert len(axes[1].lines) > 0
        assert not axes[2].lines and not axes[2].collections and not axes[2].patches
        with pytest.raises(ValueError, match="one matplotlib Axes"):
            plot_loo_pit(idata, ax=axes[:2])
    finally:
        plt.close(fig)


def test_without_ax_each_makes_its_own_figure(idata) -> None:
    before = plt.get_fignums()
    a, b = plot_posterior_predictive(idata), plot_loo_pit(idata)
    assert isinstance(a, Figure) and isinstance(b, Figure) and a is not b
    assert len(a.axes) == 1 and len(a.axes[0].lines) > 0 and len(b.axes[0].lines) > 0
    assert plt.get_fignums() == before
