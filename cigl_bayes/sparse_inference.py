"""Sparse convolution for CPU inference, BatchNorm folding, and measured dense-vs-sparse choice.

``SparseConv2dInference`` replaces an ``nn.Conv2d`` whose weight holds exact zeros. With the
compiled kernel (``cigl_bayes.sparse_kernel``) it zero-pads the input once into a
``(C * s**2, B, H_q, W_q)`` grid of phase planes (``s`` = stride) and computes every output as
``y[o, p] = b_o + sum_k v_k x[plane_k, p + shift_k]`` over the non-zeros ``k`` of row ``o``:
work proportional to ``nnz * positions`` instead of the dense ``out * in * kh * kw * positions``
and no im2col copy. Without the kernel (no C compiler, or a non-CPU / non-float32 input) it falls
back to ``unfold`` + ``torch.sparse.mm`` over the CSR weight ``(out, in/groups * kh * kw)``.
Outputs equal the dense convolution up to float32 summation order.

``fold_batchnorm`` folds every eval-mode ``BatchNorm2d`` that directly follows a convolution (and
``BatchNorm1d`` after a linear layer; found by ``torch.fx`` tracing, or adjacency in an
``nn.Sequential``) into it:

.. math::  W' = W \\gamma / \\sqrt{\\sigma^2 + \\epsilon}, \\quad
           b' = (b - \\mu) \\gamma / \\sqrt{\\sigma^2 + \\epsilon} + \\beta,

which keeps the weight's zeros and removes the BN pass. ``probe_layers`` times each candidate
layer dense vs sparse on the inputs it sees for an example batch, so that the caller keeps the
faster one per layer.
"""

from __future__ import annotations

import math
import statistics
import time
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .sparse_kernel import load_kernel, row_tile, scratch_pointer, sparse_conv, tile_width

__all__ = [
    "FoldedBatchNorm1d",
    "OUTPUT_FORMATS",
    "SparseConv2dInference",
    "Timer",
    "capture_inputs",
    "choose_output_format",
    "conv_supported",
    "default_output_format",
    "fold_batchnorm",
    "median_timer",
    "probe_layers",
    "set_output_format",
    "weight_density",
]

#: Memory format of a ``SparseConv2dInference`` output: that of the input (as ``nn.Conv2d``), or always one.
OUTPUT_FORMATS = ("input", "channels_last", "contiguous")

#: ``timer(layer, x) -> seconds per call`` of ``layer(x)``; injectable for tests.
Timer = Callable[[nn.Module, torch.Tensor], float]


def weight_density(weight: torch.Tensor) -> float:
    """Fraction of non-zero entries of ``weight``."""
    return float((weight != 0).sum()) / weight.numel()


def conv_supported(conv: nn.Module) -> bool:
    """Whether ``SparseConv2dInference`` can replace ``conv``: a 2-D conv with numeric padding and zero padding mode."""
    return (isinstance(conv, nn.Conv2d) and not isinstance(conv, nn.modules.lazy.LazyModuleMixin)
            and conv.padding_mode == "zeros" and not isinstance(conv.padding, str))


class SparseConv2dInference(nn.Module):
    """Inference-only ``nn.Conv2d`` over the non-zeros of its weight (see the module docstring).

    ``output_format``: one of ``OUTPUT_FORMATS``; channels-last outputs make a following
    ``max_pool2d`` / ``mean`` much faster on CPU (kernel path only; the torch path returns contiguous).

    ``backend``: ``"auto"`` (the compiled kernel where it loads, else torch), ``"kernel"`` or
    ``"torch"``. The kernel runs on CPU float32 inputs; other inputs take the torch path.
    """

    def __init__(self, conv: nn.Conv2d, backend: str = "auto", output_format: str = "input") -> None:
        super().__init__()
        if backend not in ("auto", "kernel", "torch"):
            raise ValueError(f"backend must be 'auto', 'kernel' or 'torch', got {backend!r}")
        if output_format not in OUTPUT_FORMATS:
            raise ValueError(f"output_format must be one of {', '.join(OUTPUT_FORMATS)}, got {output_format!r}")
        self.output_format = output_format
        if not conv_supported(conv):
            raise ValueError(f"cannot make {conv} sparse: needs nn.Conv2d with numeric padding and "
                             "padding_mode='zeros' (keep this layer dense)")
        self._kernel = load_kernel() if backend != "torch" else None
        if backend == "kernel" and self._kernel is None:
            raise RuntimeError("the sparse kernel could not be built (no C compiler?); use backend='torch' or 'auto'")
        self.backend = "kernel" if self._kernel is not None else "torch"
        weight = conv.weight.detach().float()
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size = tuple(conv.kernel_size)
        self.stride, self.padding = tuple(conv.stride), tuple(conv.padding)
        self.dilation, self.groups = tuple(conv.dilation), conv.groups
        self.density = weight_density(weight)
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().float().clone())
        # the weight as CSR over (out, in/groups * kh * kw): row pointers, columns, values (row-major
        # order); the kernel also needs each non-zero's (out, in/groups, ky, kx) coordinates
        nz = weight.nonzero()
        counts = torch.bincount(nz[:, 0], minlength=self.out_channels)
        self.register_buffer("crow_indices", torch.cat([counts.new_zeros(1), counts.cumsum(0)]).to(torch.int32))
        kh, kw = self.kernel_size
        self.register_buffer("col_indices", (nz[:, 1] * (kh * kw) + nz[:, 2] * kw + nz[:, 3]).to(torch.int32))
        self.register_buffer("values", weight[tuple(nz.t())].contiguous())
        self.register_buffer("_coords", nz, persistent=False)
        self._plans: dict[tuple[int, int, int], dict[str, Any]] = {}
        self._calls: dict[tuple[Any, ...], tuple[Any, ...]] = {}

    def _out_size(self, h: int, w: int) -> tuple[int, int]:
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, self.padding, self.dilation
        return (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1

    def _plan(self, batch: int, h: int, w: int) -> dict[str, Any]:
        """Grid geometry and flat offsets for inputs of shape (batch, C, h, w) (cached per shape)."""
        key = (batch, h, w)
        if key in self._plans:
            return self._plans[key]
        (sh, sw), (ph, pw), (dh, dw) = self.stride, self.padding, self.dilation
        ho, wo = self._out_size(h, w)
        if ho < 1 or wo < 1:
            raise ValueError(f"input {h}x{w} is smaller than the (dilated) kernel {self.kernel_size} after padding")
        hq, wq = math.ceil((h + 2 * ph) / sh), math.ceil((w + 2 * pw) / sw)
        npos = batch * hq * wq
        oc, ic, ky, kx = self._coords.unbind(1)
        ty, tx = ky * dh, kx * dw  # tap position in the padded input
        cin_g, cout_g = self.in_channels // self.groups, self.out_channels // self.groups
        channel = (oc // cout_g) * cin_g + ic
        plane = (channel * sh + ty % sh) * sw + tx % sw
        offsets = (plane * npos + (ty // sh) * wq + tx // sw).contiguous()
        max_shift = ((dh * (self.kernel_size[0] - 1)) // sh) * wq + (dw * (self.kernel_size[1] - 1)) // sw
        vector = self._kernel.vector_width
        nv = tile_width(npos, vector)
        tile = vector * nv
        size = self.in_channels * sh * sw * npos + math.ceil(npos / tile) * tile - npos + max_shift
        rows = row_tile(ho, wo)
        if rows is not None:  # row tiles: only valid positions, reads stay inside the grid (+ max_shift)
            nv = -rows
        cout = self.out_channels
        geometry = {False: torch.tensor([npos, hq * wq, wq, ho, wo, cout * ho * wo, ho * wo, wo, 1]),
                    True: torch.tensor([npos, hq * wq, wq, ho, wo, cout * ho * wo, 1, wo * cout, cout])}
        bias = None if self.bias is None else self.bias.data_ptr()
        plan = {"ho": ho, "wo": wo, "nv": nv, "size": size, "offsets": offsets, "geometry": geometry,
                "info": [batch, self.in_channels, h, w, 0, 0, 0, 0, sh, sw, ph, pw, hq, wq, npos, size],
                "pointers": {cl: (self.crow_indices.data_ptr(), offsets.data_ptr(), self.values.data_ptr(), bias,
                                  geometry[cl].data_ptr()) for cl in (False, True)}}
        self._plans[key] = plan
        return plan

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> "SparseConv2dInference":
        self._plans, self._calls = {}, {}  # plans hold data pointers of the buffers being replaced
        return super()._apply(fn, *args, **kwargs)

    def _prepare(self, x: torch.Tensor) -> tuple[Any, ...]:
        """Everything a kernel call on inputs shaped / strided like ``x`` needs (cached per shape, strides, format)."""
        plan = self._plan(x.shape[0], x.shape[2], x.shape[3])
        info = torch.tensor(plan["info"][:4] + list(x.stride()) + plan["info"][8:])
        channels_last = self.output_format == "channels_last" or (
            self.output_format == "input" and not x.is_contiguous()
            and x.is_contiguous(memory_format=torch.channels_last))
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        # the cached tuple holds ``info`` itself so that the pointer next to it stays valid
        return (plan["size"], info.data_ptr(), plan["nv"], plan["pointers"][channels_last],
                (x.shape[0], self.out_channels, plan["ho"], plan["wo"]), memory_format, info)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if self._kernel is None or x.dtype is not torch.float32 or not x.is_cpu or self.values.dtype != torch.float32:
            return self._forward_torch(x)
        key = (x.shape, x.stride(), self.output_format)
        call = self._calls.get(key)
        if call is None:
            call = self._calls[key] = self._prepare(x)
        size, info, nv, pointers, out_shape, memory_format, _ = call
        out = torch.empty(out_shape, memory_format=memory_format)
        return sparse_conv(self._kernel, x, info, scratch_pointer(size), nv, pointers, self.out_channels, out)

    def _forward_torch(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        ho, wo = self._out_size(h, w)
        cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)  # (B, C*kh*kw, L)
        g, ckk = self.groups, cols.shape[1] // self.groups
        cols = cols.view(b, g, ckk, -1).permute(1, 2, 0, 3).reshape(g, ckk, -1)  # (g, ckk, B*L)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            weight = torch.sparse_csr_tensor(self.crow_indices, self.col_indices, self.values,
                                             (self.out_channels, ckk), check_invariants=False).to(x.device, x.dtype)
        if g == 1:
            y = torch.sparse.mm(weight, cols[0])
        else:
            dense = weight.to_dense().view(g, -1, ckk)
            y = torch.bmm(dense, cols).reshape(self.out_channels, -1)
        y = y.view(self.out_channels, b, ho, wo).transpose(0, 1)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype).view(1, -1, 1, 1)
        return y.contiguous()

    def __getstate__(self) -> dict[str, Any]:
        """Copy / pickle without the loaded library handle and the pointer-holding plans."""
        state = self.__dict__.copy()
        state["_kernel"], state["_plans"], state["_calls"] = None, {}, {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if self.backend == "kernel":
            self._kernel = load_kernel()
            self.backend = "kernel" if self._kernel is not None else "torch"

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, groups={self.groups}, density={self.density:.3f}, backend={self.backend}")


# ----------------------------------------------------------------------------- BatchNorm folding


class FoldedBatchNorm1d(nn.Module):
    """Stands where a ``BatchNorm1d`` folded into the preceding ``nn.Linear`` was: the fold is exact
    only for 2-D ``(N, features)`` inputs, so any other input raises."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2:
            raise ValueError(f"a BatchNorm1d was folded into the preceding Linear assuming (N, features) inputs, "
                             f"got shape {tuple(x.shape)}; use to_sparse_inference(..., fold_bn=False)")
        return x


def _fold_into(layer: nn.Conv2d | nn.Linear, bn: nn.BatchNorm1d | nn.BatchNorm2d) -> None:
    inv_std = torch.rsqrt(bn.running_var + bn.eps)
    scale = bn.weight.detach() * inv_std if bn.affine else inv_std
    shift = (bn.bias.detach() if bn.affine else torch.zeros_like(bn.running_mean)) - bn.running_mean * scale
    with torch.no_grad():
        layer.weight.mul_(scale.view(-1, *[1] * (layer.weight.dim() - 1)).to(layer.weight.dtype))
        bias = shift if layer.bias is None else layer.bias.detach() * scale + shift
        layer.bias = nn.Parameter(bias.to(layer.weight.dtype))


def _foldable(layer: nn.Module, bn: nn.Module) -> bool:
    if not isinstance(bn, (nn.BatchNorm1d, nn.BatchNorm2d)) or bn.running_mean is None:
        return False
    if type(layer) is nn.Conv2d and type(bn) is nn.BatchNorm2d:
        return bn.num_features == layer.out_channels
    return type(layer) is nn.Linear and type(bn) is nn.BatchNorm1d and bn.num_features == layer.out_features


def _pairs_fx(model: nn.Module) -> list[tuple[str, str]]:
    """(conv, bn) module names where the BN's only input is the conv's output, used only by that BN."""
    import torch.fx

    graph = torch.fx.symbolic_trace(model).graph
    modules = dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
            continue
        src = node.args[0]
        if (isinstance(src, torch.fx.Node) and src.op == "call_module" and len(src.users) == 1
                and _foldable(modules.get(src.target), modules.get(node.target))):
            pairs.append((src.target, node.target))
    # a module called twice cannot be folded safely
    conv_calls = [n.target for n in graph.nodes if n.op == "call_module"]
    return [(c, b) for c, b in pairs if conv_calls.count(c) == 1 and conv_calls.count(b) == 1]


def _pairs_sequential(model: nn.Module, prefix: str = "") -> list[tuple[str, str]]:
    pairs = []
    for name, child in model.named_children():
        path = f"{prefix}{name}"
        if isinstance(child, nn.Sequential):
            items = list(child.named_children())
            pairs += [(f"{path}.{a}", f"{path}.{b}") for (a, ma), (b, mb) in zip(items, items[1:]) if _foldable(ma, mb)]
        pairs += _pairs_sequential(child, f"{path}.")
    return pairs


def fold_batchnorm(model: nn.Module) -> int:
    """Fold, in place, each ``BatchNorm2d`` that directly follows an ``nn.Conv2d`` (the BN becomes
    ``nn.Identity``) and each ``BatchNorm1d`` directly after an ``nn.Linear`` (it becomes
    ``FoldedBatchNorm1d``, which rejects non-2-D inputs) into that layer; returns the number folded.
    ``model`` must be in eval mode (folding uses the running statistics)."""
    if model.training:
        raise ValueError("fold_batchnorm needs an eval-mode model (call model.eval()): folding uses running statistics")
    try:
        pairs = _pairs_fx(model)
    except Exception:  # noqa: BLE001 - untraceable model (data-dependent control flow): use Sequential adjacency
        pairs = _pairs_sequential(model)
    for layer_name, bn_name in pairs:
        bn = model.get_submodule(bn_name)
        _fold_into(model.get_submodule(layer_name), bn)
        parent_name, _, attr = bn_name.rpartition(".")
        stand_in = FoldedBatchNorm1d() if isinstance(bn, nn.BatchNorm1d) else nn.Identity()
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, stand_in)
    return len(pairs)


# ----------------------------------------------------------------------------- measured choice


def median_timer(repeats: int = 5) -> Timer:
    """``timer(layer, x)``: median wall seconds of ``repeats`` calls after one warm-up call."""
    def timer(layer: nn.Module, x: torch.Tensor) -> float:
        with torch.inference_mode():
            layer(x)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                layer(x)
                times.append(time.perf_counter() - start)
        return statistics.median(times)
    return timer


def capture_inputs(model: nn.Module, names: Iterable[str], example_input: torch.Tensor) -> dict[str, torch.Tensor]:
    """The input each named submodule receives (first call) when ``model(example_input)`` runs."""
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for name in names:
        def hook(module: nn.Module, args: tuple[Any, ...], name: str = name) -> None:
            seen.setdefault(name, args[0].detach().clone())
        handles.append(model.get_submodule(name).register_forward_pre_hook(hook))
    try:
        with torch.inference_mode():
            model(example_input)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def probe_layers(model: nn.Module, candidates: dict[str, tuple[nn.Module, nn.Module]], example_input: torch.Tensor,
                 timer: Timer, rounds: int = 2) -> dict[str, dict[str, float]]:
    """Time each candidate ``name -> (dense, sparse)`` on the input it sees in ``model(example_input)``.

    Dense and sparse are timed alternately ``rounds`` times (medians of the rounds); returns
    ``name -> {"dense": s, "sparse": s}``. Layers the example never reaches are left out.
    """
    inputs = capture_inputs(model, candidates, example_input)
    result = {}
    for name, x in inputs.items():
        dense, sparse = candidates[name]
        times: dict[str, list[float]] = {"dense": [], "sparse": []}
        for r in range(rounds):
            order = ("dense", "sparse") if r % 2 == 0 else ("sparse", "dense")
            for kind in order:
                times[kind].append(timer(dense if kind == "dense" else sparse, x))
        result[name] = {k: statistics.median(v) for k, v in times.items()}
    return result


def set_output_format(model: nn.Module, output_format: str) -> None:
    """Set ``output_format`` (one of ``OUTPUT_FORMATS``) on every ``SparseConv2dInference`` in ``model``."""
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"output_format must be one of {', '.join(OUTPUT_FORMATS)}, got {output_format!r}")
    for module in model.modules():
        if isinstance(module, SparseConv2dInference):
            module.output_format = output_format


def default_output_format(model: nn.Module) -> str:
    """Sparse-conv output format without a measurement: ``"channels_last"`` when ``model`` max-pools
    (torch's CPU ``max_pool2d`` on contiguous NCHW input is many times slower than on channels-last:
    25x for the digits CNN's 64x64x8x8 map, ``experiments/bench_export.py``), else ``"input"`` (like
    ``nn.Conv2d``; contiguous inputs then give contiguous outputs, which the next conv packs fastest)."""
    pools = (nn.MaxPool2d, nn.AdaptiveMaxPool2d)
    return "channels_last" if any(isinstance(m, pools) for m in model.modules()) else "input"


def choose_output_format(model: nn.Module, example_input: torch.Tensor, timer: Timer, rounds: int = 2) -> str:
    """Time the whole ``model`` on ``example_input`` with contiguous and with channels-last sparse-conv
    outputs (alternating, ``rounds`` each, medians) and return the faster format."""
    if not any(isinstance(m, SparseConv2dInference) for m in model.modules()):
        return "input"
    times: dict[str, list[float]] = {"contiguous": [], "channels_last": []}
    for r in range(rounds):
        for fmt in (("contiguous", "channels_last") if r % 2 == 0 else ("channels_last", "contiguous")):
            set_output_format(model, fmt)
            times[fmt].append(timer(model, example_input))
    return min(times, key=lambda fmt: statistics.median(times[fmt]))
