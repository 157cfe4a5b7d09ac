"""The shared plot conventions: axes normalisation and the return rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cigl_bayes._plotting import as_axes, finish, new_figure


def test_as_axes_accepts_arrays_sequences_and_one_axes() -> None:
    fig = new_figure()
    grid = fig.subplots(2, 2)
    assert as_axes(grid, 4) == list(np.ravel(grid))
    assert as_axes(tuple(grid[0]), 2) == list(grid[0])
    assert as_axes(grid[0, 0], (1, 2)) == [grid[0, 0]]
    with pytest.raises(ValueError, match="sequence of 3 matplotlib Axes.*got 4 item"):
        as_axes(grid, 3)
    with pytest.raises(ValueError, match="type int"):
        as_axes([1, 2], 2)


def test_finish_returns_the_path_only_for_its_own_figure(tmp_path: Path) -> None:
    fig = new_figure()
    fig.add_subplot(1, 1, 1).plot([0, 1])
    assert finish(fig, None, user_axes=False) is fig
    assert finish(fig, None, user_axes=True) is fig
    out = finish(fig, tmp_path / "a" / "b.png", user_axes=False)
    assert out == tmp_path / "a" / "b.png" and out.is_file()
    assert finish(fig, tmp_path / "c.png", user_axes=True) is fig and (tmp_path / "c.png").is_file()
