"""A compiled CPU kernel for sparse convolution / sparse linear layers at inference.

torch has no fast CPU kernel for an unstructured sparse weight times a dense activation
(``torch.sparse.mm`` / MKL reaches a few GFLOP/s and needs a 9x im2col copy for a 3x3 conv), so
this module compiles a small C kernel once per machine (``$CC`` or ``cc``, ``-O3 -march=native
-fopenmp``) into a cache folder (``$CIGL_BAYES_KERNEL_CACHE`` or ``~/.cache/cigl_bayes/kernels``,
one file per source / compiler / CPU) and calls it through ``ctypes``. Without a compiler,
``load_kernel()`` returns ``None`` and callers use their pure-torch path.

The kernel computes, for an input given as ``planes`` contiguous rows of ``npos`` grid positions
(with a tail so shifted reads stay in the buffer),

.. math::  y[o, p] = b_o + \\sum_{k \\in \\mathrm{row}(o)} v_k \\; x_{\\mathrm{flat}}[\\mathrm{off}_k + p],

i.e. a CSR weight whose column indices are flat offsets ``plane * npos + shift``. A stride-1
convolution over a zero-padded grid is exactly this with ``shift = dy * W_grid + dx``; a strided
one is the same after splitting the input into ``stride**2`` phase planes; a linear layer is the
case ``shift = 0``, one position per example. Each output tile of ``nv`` vectors (8 floats, 16 with
AVX-512) of consecutive positions
is accumulated in registers, and only the positions of the valid output window are stored, into
a ``(B, out, H_out, W_out)`` tensor of any strides (contiguous or channels-last). Where the output
width is a multiple of 8 (and the height suits), tiles are instead ``R`` output rows of ``V``
vectors of valid positions (``R V = 8``), so no padding position is computed.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import torch

__all__ = [
    "KERNEL_SOURCE",
    "kernel_cache_dir",
    "load_kernel",
    "row_tile",
    "scratch",
    "scratch_pointer",
    "sparse_conv",
    "sparse_grid_matmul",
    "tile_width",
]

KERNEL_SOURCE = r"""
#include <stdint.h>
#if defined(__AVX512F__)
#define VL 16
#else
#define VL 8
#endif
typedef float vf __attribute__((vector_size(4 * VL)));
typedef float vfu __attribute__((vector_size(4 * VL), aligned(4)));

int cigl_vector_width(void) { return VL; }

/* geo = {npos, grid, wq, ho, wo, out_b, out_c, out_y, out_x}: positions p = b * grid + y * wq + x;
   a position is stored iff y < ho and x < wo, at out[b * out_b + o * out_c + y * out_y + x * out_x]. */
static void store_tile(const float* acc, int64_t p0, int64_t tile, const int64_t* geo, float* out, int o) {
    const int64_t npos = geo[0], grid = geo[1], wq = geo[2], ho = geo[3], wo = geo[4];
    const int64_t end = p0 + tile < npos ? p0 + tile : npos, hq = grid / wq;
    int64_t p = p0, b = p0 / grid, y = (p0 - b * grid) / wq, x = p0 - b * grid - y * wq;
    for (int64_t run; p < end; p += run) {
        run = wq - x;
        if (run > end - p) run = end - p;
        if (y < ho && x < wo) {
            const int64_t n = wo - x < run ? wo - x : run;
            const int64_t sx = geo[8];
            float* dst = out + b * geo[5] + (int64_t)o * geo[6] + y * geo[7] + x * sx;
            const float* src = acc + (p - p0);
            if (sx == 1) for (int64_t i = 0; i < n; ++i) dst[i] = src[i];
            else for (int64_t i = 0; i < n; ++i) dst[i * sx] = src[i];
        }
        x += run;  /* advance to the next grid row (and image) without dividing */
        if (x == wq) { x = 0; if (++y == hq) { y = 0; ++b; } }
    }
}

#define DEF_TILE(NV)                                                                                   \
static void tile_##NV(const float* in, int64_t p0, const int32_t* rowptr, const int64_t* offs,          \
                      const float* vals, const float* bias, const int64_t* geo, float* out, int o) {    \
    vf acc[NV];                                                                                        \
    const float b = bias ? bias[o] : 0.0f;                                                             \
    _Pragma("GCC unroll 16") for (int t = 0; t < NV; ++t) acc[t] = (vf){} + b;                         \
    for (int32_t k = rowptr[o]; k < rowptr[o + 1]; ++k) {                                              \
        const vf wv = (vf){} + vals[k];                                                                \
        const float* src = in + offs[k] + p0;                                                          \
        _Pragma("GCC unroll 16") for (int t = 0; t < NV; ++t) acc[t] += wv * *(const vfu*)(src + VL * t); \
    }                                                                                                  \
    store_tile((const float*)acc, p0, NV * VL, geo, out, o);                                           \
}
DEF_TILE(1)
DEF_TILE(2)
DEF_TILE(3)
DEF_TILE(4)
DEF_TILE(5)
DEF_TILE(6)
DEF_TILE(7)
DEF_TILE(8)
typedef void (*tile_fn)(const float*, int64_t, const int32_t*, const int64_t*, const float*, const float*,
                        const int64_t*, float*, int);
static const tile_fn TILES[9] = {0, tile_1, tile_2, tile_3, tile_4, tile_5, tile_6, tile_7, tile_8};

/* one grid row: plane q = (c * sh + py) * sw + px, image b, row yq; columns [x0, x1) come from x */
static inline void pack_row(const float* x, const int64_t* info, float* buf, int64_t c, int64_t py, int64_t px,
                            int64_t x0, int64_t x1, int64_t b, int64_t yq) {
    const int64_t H = info[2], sB = info[4], sC = info[5], sH = info[6], sW = info[7], sh = info[8], sw = info[9],
                  ph = info[10], pw = info[11], hq = info[12], wq = info[13], npos = info[14];
    float* dst = buf + ((c * sh + py) * sw + px) * npos + (b * hq + yq) * wq;
    const int64_t i = yq * sh + py - ph;
    if (i < 0 || i >= H || x1 <= x0) { for (int64_t t = 0; t < wq; ++t) dst[t] = 0.0f; return; }
    const float* src = x + b * sB + c * sC + i * sH + (x0 * sw + px - pw) * sW;
    const int64_t step = sw * sW;
    for (int64_t t = 0; t < x0; ++t) dst[t] = 0.0f;
    if (step == 1) for (int64_t t = 0; t < x1 - x0; ++t) dst[x0 + t] = src[t];
    else for (int64_t t = 0; t < x1 - x0; ++t) dst[x0 + t] = src[t * step];
    for (int64_t t = x1; t < wq; ++t) dst[t] = 0.0f;
}

/* Zero-padded phase planes of x (B, C, H, W; element strides sB..sW) into buf:
   buf[((c * sh + py) * sw + px) * npos + b * hq * wq + yq * wq + xq] = x[b, c, yq * sh + py - ph, xq * sw + px - pw]
   (0 outside x), then zeros up to `size`. info = {B, C, H, W, sB, sC, sH, sW, sh, sw, ph, pw, hq, wq, npos, size}. */
static void pack(const float* x, const int64_t* info, float* buf, int nthreads) {
    const int64_t B = info[0], C = info[1], H = info[2], W = info[3], sB = info[4], sC = info[5], sW = info[7],
                  sh = info[8], sw = info[9], ph = info[10], pw = info[11], hq = info[12], wq = info[13],
                  npos = info[14], size = info[15];
    const int64_t planes = C * sh * sw;
    if (hq == 1 && wq == 1 && H == 1 && W == 1 && ph == 0 && pw == 0) {  /* a linear layer: transpose (B, C) */
        for (int64_t b = 0; b < B; ++b)
            for (int64_t c = 0; c < C; ++c) buf[c * npos + b] = x[b * sB + c * sC];
        for (int64_t t = planes * npos; t < size; ++t) buf[t] = 0.0f;
        return;
    }
    int64_t x0[sw], x1[sw];  /* per column phase px: columns xq with 0 <= xq * sw + px - pw < W */
    for (int64_t px = 0; px < sw; ++px) {
        x0[px] = pw - px > 0 ? (pw - px + sw - 1) / sw : 0;
        x1[px] = W + pw - px > 0 ? (W + pw - px + sw - 1) / sw : 0;
        if (x1[px] > wq) x1[px] = wq;
    }
    /* channels-last inputs: image/row-major with the planes innermost (one input row stays in cache);
       otherwise plane-major */
    const int parallel = nthreads > 1 && planes * npos > 32768;
    if (sC < sW) {
        #pragma omp parallel for collapse(2) schedule(static) num_threads(nthreads) if (parallel)
        for (int64_t b = 0; b < B; ++b)
            for (int64_t yq = 0; yq < hq; ++yq)
                for (int64_t c = 0; c < C; ++c)
                    for (int64_t py = 0; py < sh; ++py)
                        for (int64_t px = 0; px < sw; ++px) pack_row(x, info, buf, c, py, px, x0[px], x1[px], b, yq);
    } else {
        #pragma omp parallel for collapse(2) schedule(static) num_threads(nthreads) if (parallel)
        for (int64_t c = 0; c < C; ++c)
            for (int64_t b = 0; b < B; ++b)
                for (int64_t py = 0; py < sh; ++py)
                    for (int64_t px = 0; px < sw; ++px)
                        for (int64_t yq = 0; yq < hq; ++yq) pack_row(x, info, buf, c, py, px, x0[px], x1[px], b, yq);
    }
    for (int64_t t = planes * npos; t < size; ++t) buf[t] = 0.0f;
}

int cigl_sparse_grid_matmul(const float* in, int nv, int cout, const int32_t* rowptr, const int64_t* offs,
                            const float* vals, const float* bias, const int64_t* geo, float* out, int nthreads) {
    if (nv < 1 || nv > 8) return 1;
    const tile_fn fn = TILES[nv];
    const int64_t tile = (int64_t)nv * VL;
    const int64_t nchunks = (geo[0] + tile - 1) / tile;
    const int64_t total = nchunks * cout;
    #pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1 && total > 1)
    for (int64_t i = 0; i < total; ++i) {
        const int64_t c = i / cout;
        const int o = (int)(i - c * cout);
        fn(in, c * tile, rowptr, offs, vals, bias, geo, out, o);
    }
    return 0;
}

/* Row tiles: when the output width is a multiple of 8 * V and its height of R = 8 / V, a tile is R output
   rows x V vectors of 8 valid positions (no padded position is computed) stored straight into out. */
typedef float v8 __attribute__((vector_size(32)));
typedef float v8u __attribute__((vector_size(32), aligned(4)));
#define DEF_RTILE(V, R)                                                                                 \
static void rtile_##V(const float* in, int64_t pin, int64_t wq, const int32_t* rowptr, const int64_t* offs, \
                      const float* vals, const float* bias, float* dst, int64_t out_y, int64_t out_x, int o) { \
    v8 acc[R][V];                                                                                       \
    const float b = bias ? bias[o] : 0.0f;                                                              \
    _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r)                                                 \
        _Pragma("GCC unroll 8") for (int v = 0; v < V; ++v) acc[r][v] = (v8){} + b;                     \
    for (int32_t k = rowptr[o]; k < rowptr[o + 1]; ++k) {                                               \
        const v8 wv = (v8){} + vals[k];                                                                 \
        const float* src = in + offs[k] + pin;                                                          \
        _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r)                                             \
            _Pragma("GCC unroll 8") for (int v = 0; v < V; ++v)                                         \
                acc[r][v] += wv * *(const v8u*)(src + r * wq + 8 * v);                                  \
    }                                                                                                   \
    for (int r = 0; r < R; ++r)                                                                         \
        for (int v = 0; v < V; ++v) {                                                                   \
            float* d = dst + r * out_y + 8 * v * out_x;                                                 \
            if (out_x == 1) *(v8u*)d = acc[r][v];                                                       \
            else for (int i = 0; i < 8; ++i) d[i * out_x] = acc[r][v][i];                              \
        }                                                                                               \
}
DEF_RTILE(1, 8)
DEF_RTILE(2, 4)
DEF_RTILE(4, 2)
DEF_RTILE(8, 1)

static int rows_matmul(const float* in, int V, int cout, const int32_t* rowptr, const int64_t* offs,
                       const float* vals, const float* bias, const int64_t* geo, float* out, int nthreads) {
    const int64_t grid = geo[1], wq = geo[2], ho = geo[3], wo = geo[4], B = geo[0] / grid, R = 8 / V;
    if ((V != 1 && V != 2 && V != 4 && V != 8) || wo % (8 * V) != 0 || ho % R != 0) return 1;
    const int64_t xt = wo / (8 * V), yt = ho / R, total = B * yt * xt * cout;
    #pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1 && total > 1)
    for (int64_t i = 0; i < total; ++i) {
        const int64_t tile = i / cout, o = i - tile * cout;
        const int64_t b = tile / (yt * xt), rem = tile - b * yt * xt, y0 = (rem / xt) * R, x0 = (rem % xt) * 8 * V;
        const int64_t pin = b * grid + y0 * wq + x0;
        float* dst = out + b * geo[5] + o * geo[6] + y0 * geo[7] + x0 * geo[8];
        switch (V) {
            case 1: rtile_1(in, pin, wq, rowptr, offs, vals, bias, dst, geo[7], geo[8], (int)o); break;
            case 2: rtile_2(in, pin, wq, rowptr, offs, vals, bias, dst, geo[7], geo[8], (int)o); break;
            case 4: rtile_4(in, pin, wq, rowptr, offs, vals, bias, dst, geo[7], geo[8], (int)o); break;
            default: rtile_8(in, pin, wq, rowptr, offs, vals, bias, dst, geo[7], geo[8], (int)o); break;
        }
    }
    return 0;
}

/* pack x into scratch, then the matmul from scratch into out (nv > 0: grid tiles of nv vectors;
   nv < 0: row tiles of -nv vectors of 8 per row): one call per conv. */
int cigl_sparse_conv(const float* x, const int64_t* info, float* scratch, int nv, int cout, const int32_t* rowptr,
                     const int64_t* offs, const float* vals, const float* bias, const int64_t* geo, float* out,
                     int nthreads) {
    pack(x, info, scratch, nthreads);
    if (nv < 0) return rows_matmul(scratch, -nv, cout, rowptr, offs, vals, bias, geo, out, nthreads);
    return cigl_sparse_grid_matmul(scratch, nv, cout, rowptr, offs, vals, bias, geo, out, nthreads);
}
"""

_FLAG_SETS = (["-O3", "-march=native", "-fopenmp"], ["-O3", "-march=native"], ["-O3"])
_lock = threading.Lock()
_loaded: dict[str, ctypes.CDLL | None] = {}


def kernel_cache_dir() -> Path:
    """Folder of compiled kernels: ``$CIGL_BAYES_KERNEL_CACHE`` or ``~/.cache/cigl_bayes/kernels``."""
    env = os.environ.get("CIGL_BAYES_KERNEL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "cigl_bayes" / "kernels"


def _cpu_signature() -> str:
    """The CPU model and flags (a ``-march=native`` build must not run on another CPU)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags", "Features"))]
        return "\n".join(sorted(set(lines)))
    except OSError:
        return platform.processor()


def _compile(compiler: str, target: Path) -> bool:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src = Path(tmp) / "kernel.c"
        src.write_text(KERNEL_SOURCE)
        out = Path(tmp) / target.name
        for flags in _FLAG_SETS:
            cmd = [compiler, *flags, "-shared", "-fPIC", str(src), "-o", str(out)]
            if subprocess.run(cmd, capture_output=True, timeout=120).returncode == 0:
                os.replace(out, target)  # atomic: concurrent builders never load a half-written file
                return True
    return False


def load_kernel() -> ctypes.CDLL | None:
    """The compiled kernel (built on first use, cached on disk), or ``None`` where it cannot be built
    (no C compiler, non-x86/ARM vector extensions unsupported, or ``CIGL_BAYES_NO_KERNEL=1``)."""
    if os.environ.get("CIGL_BAYES_NO_KERNEL", "") not in ("", "0"):
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        return None
    key = hashlib.sha256("\0".join([KERNEL_SOURCE, compiler, platform.machine(), _cpu_signature(),
                                    repr(_FLAG_SETS)]).encode()).hexdigest()[:16]
    with _lock:
        if key in _loaded:
            return _loaded[key]
        target = kernel_cache_dir() / f"sparse_grid_{key}.so"
        lib = None
        try:
            if target.is_file() or _compile(compiler, target):
                lib = ctypes.CDLL(str(target))
                fn = lib.cigl_sparse_grid_matmul
                fn.restype = ctypes.c_int
                p = ctypes.c_void_p
                fn.argtypes = [p, ctypes.c_int, ctypes.c_int, p, p, p, p, p, p, ctypes.c_int]
                lib.cigl_vector_width.restype = ctypes.c_int
                lib.vector_width = int(lib.cigl_vector_width())  # floats per vector: 16 with AVX-512, else 8
                conv = lib.cigl_sparse_conv
                conv.restype = ctypes.c_int
                conv.argtypes = [p, p, p, ctypes.c_int, ctypes.c_int, p, p, p, p, p, p, ctypes.c_int]
        except (OSError, subprocess.SubprocessError) as error:
            warnings.warn(f"sparse inference kernel unavailable ({error}); sparse layers use torch ops", stacklevel=2)
            lib = None
        _loaded[key] = lib
        return lib


_scratch = threading.local()


def scratch(numel: int) -> torch.Tensor:
    """A float32 CPU buffer of ``numel`` elements, reused by every call from this thread (layers run one
    after another): a fresh multi-MB allocation per call would page-fault on every use."""
    buffer = getattr(_scratch, "buffer", None)
    if buffer is None or buffer.numel() < numel:
        buffer = _scratch.buffer = torch.empty(numel, dtype=torch.float32)
    return buffer[:numel]


def scratch_pointer(numel: int) -> int:
    """``scratch(numel).data_ptr()`` without building the view (a per-call saving at batch 1)."""
    buffer = getattr(_scratch, "buffer", None)
    if buffer is None or buffer.numel() < numel:
        buffer = _scratch.buffer = torch.empty(numel, dtype=torch.float32)
    return buffer.data_ptr()


def row_tile(height: int, width: int) -> int | None:
    """Vectors of 8 per output row for a row-tiled conv output of ``height x width`` (``V`` with
    ``width % (8 V) == 0`` and ``height % (8 / V) == 0``, widest first), or ``None`` where none fits
    (the grid tiles are used then)."""
    for v in (8, 4, 2, 1):
        if width % (8 * v) == 0 and height % (8 // v) == 0:
            return v
    return None


def tile_width(npos: int, vector: int = 8) -> int:
    """Vectors (of ``vector`` floats) per output tile for ``npos`` positions: the whole grid when it fits
    one tile of at most 8 vectors, else the width in 4..8 that wastes the fewest padded positions
    (ties: wider)."""
    if npos <= 8 * vector:
        return max(1, math.ceil(npos / vector))
    return min(range(8, 3, -1), key=lambda nv: math.ceil(npos / (vector * nv)) * vector * nv - npos)


def sparse_grid_matmul(lib: ctypes.CDLL, x_flat: torch.Tensor, nv: int, rowptr: torch.Tensor, offsets: torch.Tensor,
                       values: torch.Tensor, bias: torch.Tensor | None, geometry: torch.Tensor,
                       out: torch.Tensor) -> torch.Tensor:
    """Run the kernel (see the module docstring) into ``out``; all tensors CPU, contiguous.

    ``x_flat`` float32 (planes * npos + tail), ``rowptr`` int32 (out + 1), ``offsets`` int64 and
    ``values`` float32 (nnz), ``bias`` float32 (out) or ``None``, ``geometry`` int64
    ``[npos, grid, wq, ho, wo, *out.stride()]`` (``out`` is (B, out, ho, wo), any strides),
    ``nv`` in 1..8 (tile = ``nv * lib.vector_width`` positions; ``tile_width`` picks it).
    """
    status = lib.cigl_sparse_grid_matmul(
        x_flat.data_ptr(), nv, rowptr.numel() - 1, rowptr.data_ptr(), offsets.data_ptr(), values.data_ptr(),
        None if bias is None else bias.data_ptr(), geometry.data_ptr(), out.data_ptr(), torch.get_num_threads())
    if status != 0:
        raise ValueError(f"sparse kernel tile nv must be in 1..8, got {nv}")
    return out


def sparse_conv(lib: ctypes.CDLL, x: torch.Tensor, info: int, scratch: int, nv: int,
                pointers: tuple[int, int, int, int | None, int], cout: int, out: torch.Tensor) -> torch.Tensor:
    """Pack ``x`` (CPU float32, any strides) into ``scratch`` and run the matmul into ``out``.

    ``info`` points to int64 ``[B, C, H, W, *x.stride(), sh, sw, ph, pw, hq, wq, npos, size]``,
    ``scratch`` to ``size`` float32 (``scratch_pointer``);
    ``pointers`` the data pointers of (rowptr, offsets, values, bias or None, geometry) as in
    ``sparse_grid_matmul``; ``nv`` > 0: grid tiles of ``nv`` vectors (``tile_width``), ``nv`` < 0:
    row tiles of ``-nv`` vectors of 8 valid positions per output row (``row_tile``).
    """
    rowptr, offsets, values, bias, geometry = pointers
    status = lib.cigl_sparse_conv(x.data_ptr(), info, scratch, nv, cout, rowptr, offsets,
                                  values, bias, geometry, out.data_ptr(), torch.get_num_threads())
    if status != 0:
        raise ValueError(f"invalid sparse kernel tile {nv} for this output (see tile_width / row_tile)")
    return out

