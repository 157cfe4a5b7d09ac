"""The compiled sparse kernel: build/cache, tile choice, and the grid matmul it computes."""

from __future__ import annotations

import pytest
import torch

from cigl_bayes import sparse_kernel
from cigl_bayes.sparse_kernel import load_kernel, scratch, sparse_grid_matmul, tile_width

needs_kernel = pytest.mark.skipif(load_kernel() is None, reason="no C compiler")


def test_tile_width_covers_and_wastes_little():
    for vector in (8, 16):
        for npos in [1, 7, 8, 9, 36, 64, 100, 128, 129, 1000, 74_000]:
            nv = tile_width(npos, vector)
            assert 1 <= nv <= 8
            tile = nv * vector
            if npos <= 8 * vector:
                assert tile >= npos and tile - npos < vector  # one tile, less than a vector wasted
            else:
                waste = -npos % tile
                assert nv >= 4 and all(waste <= -npos % (w * vector) for w in range(4, 9))


def test_scratch_is_reused():
    a = scratch(1000)
    b = scratch(10)
    assert b.data_ptr() == a.data_ptr() and b.numel() == 10
    assert scratch(5000).numel() == 5000


@needs_kernel
def test_grid_matmul_is_the_documented_sum():
    """y[o, p] = b_o + sum_k v_k x_flat[off_k + p], stored at out[p * out_b + o * out_c]."""
    lib = load_kernel()
    torch.manual_seed(0)
    npos, planes, cout = 37, 5, 4
    nv = tile_width(npos, lib.vector_width)
    tail = -npos % (nv * lib.vector_width) + 3  # shifts up to 3
    x = torch.randn(planes * npos + tail)
    offsets = torch.tensor([0 * npos + 1, 2 * npos, 4 * npos + 3, 1 * npos + 2, 3 * npos])  # rows: 2, 0, 1, 2
    values = torch.tensor([1.5, -2.0, 0.5, 3.0, 0.25])
    rowptr = torch.tensor([0, 2, 2, 3, 5], dtype=torch.int32)
    bias = torch.tensor([0.1, 0.2, 0.3, 0.4])
    geometry = torch.tensor([npos, 1, 1, 1, 1, cout, 1, 1, 1])  # one position per "example", out (npos, cout)
    out = torch.full((npos, cout, 1, 1), float("nan"))
    sparse_grid_matmul(lib, x, nv, rowptr, offsets, values, bias, geometry, out)
    p = torch.arange(npos)
    expected = torch.stack([
        0.1 + 1.5 * x[offsets[0] + p] - 2.0 * x[offsets[1] + p],
        torch.full((npos,), 0.2),
        0.3 + 0.5 * x[offsets[2] + p],
        0.4 + 3.0 * x[offsets[3] + p] + 0.25 * x[offsets[4] + p],
    ], dim=1)
    torch.testing.assert_close(out.view(npos, cout), expected, atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="1..8"):
        sparse_grid_matmul(lib, x, 9, rowptr, offsets, values, bias, geometry, out)


@needs_kernel
def test_builds_into_cache_dir_once(tmp_path, monkeypatch):
    monkeypatch.setenv("CIGL_BAYES_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setattr(sparse_kernel, "_loaded", {})
    lib = load_kernel()
    assert lib is not None and lib.vector_width in (8, 16)
    built = list(tmp_path.glob("sparse_grid_*.so"))
    assert len(built) == 1 and not list(tmp_path.glob("tmp*"))  # atomic: no temporary folder left behind
    mtime = built[0].stat().st_mtime_ns
    monkeypatch.setattr(sparse_kernel, "_loaded", {})
    assert load_kernel() is not None and built[0].stat().st_mtime_ns == mtime  # reused, not rebuilt


def test_disabled_or_no_compiler(tmp_path, monkeypatch):
    monkeypatch.setenv("CIGL_BAYES_NO_KERNEL", "1")
    assert load_kernel() is None
    monkeypatch.delenv("CIGL_BAYES_NO_KERNEL")
    monkeypatch.setenv("CC", "/nonexistent/cc")
    monkeypatch.setattr(sparse_kernel, "_loaded", {})
    monkeypatch.setenv("CIGL_BAYES_KERNEL_CACHE", str(tmp_path))
    with pytest.warns(UserWarning, match="unavailable"):
        assert load_kernel() is None
