"""Sparse export: save a trained sparse model compactly and load it back for inference.

File format: one ``np.savez_compressed`` archive (``.npz``, deflate), written atomically
(temporary file in the target folder + ``os.replace``). It holds

* ``__meta__``: UTF-8 JSON (format version, storage ``format``, ``values_dtype``, the model's
  ``model`` name / ``input_shape`` / ``num_classes`` / ``dropout`` (and ``hidden_sizes`` for an
  ``MLP``), measured ``density``, the run ``config`` if given, and per sparse layer its shape and nnz);
* every conv / linear weight (``maskable_weight_names``) in compressed form:

  - ``format="bitmask"``: ``s:<name>:mask`` = ``numpy.packbits`` of the flat non-zero pattern
    (1 bit per weight) and ``s:<name>:values`` = the non-zeros in row-major order;
  - ``format="csr"``: the weight viewed as ``(out, -1)`` in CSR: ``s:<name>:crow`` / ``s:<name>:col``
    (int32) and ``s:<name>:values``;

* every other parameter / buffer densely as ``d:<name>`` (biases, BatchNorm statistics, ...).

A run's export (``model_from_run``) is the *predictive* the run was scored with
(``cigl_bayes.predictive``): ``__meta__`` then holds its ``predictive`` spec (kind, temperature,
MC samples or ensemble size) and the names are its networks' (``model.*``, ``members.<i>.*``);
``load_sparse`` rebuilds the same predictive, whose forward returns log-probabilities.

Values are float32 (exact round trip) or float16 (``values_dtype="float16"``, half the value bytes).
At density ``d`` the bitmask format costs about ``1/32 + d`` (float32) or ``1/32 + d/2`` (float16)
of the dense float32 weight bytes, CSR about ``2 d`` (float32) + row pointers; bitmask is smaller
at every density above ~3 %, CSR wins only for extremely sparse layers.

``to_sparse_inference`` folds BatchNorm into the preceding conv / linear layers and swaps
sufficiently sparse ``nn.Linear`` layers for ``SparseLinearInference`` and ``nn.Conv2d`` layers for
``SparseConv2dInference`` (both run a compiled direct sparse kernel, ``cigl_bayes.sparse_kernel``,
with a ``torch.sparse.mm`` fallback); given an example batch it keeps, per layer, whichever of dense
and sparse it measured faster.
"""

from __future__ import annotations

import copy
import io
import json
import math
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .atomic import write_atomic
from .models import MLP, build_model
from .names import EXPORT_FORMATS as FORMATS
from .predictive import Predictive, from_spec
from .sparse.masks import maskable_weight_names
from .sparse_inference import (
    OUTPUT_FORMATS,
    SparseConv2dInference,
    Timer,
    choose_output_format,
    conv_supported,
    default_output_format,
    fold_batchnorm,
    median_timer,
    probe_layers,
    set_output_format,
    weight_density,
)
from .sparse_kernel import load_kernel

__all__ = [
    "FORMATS",
    "SparseConv2dInference",
    "SparseLinearInference",
    "dense_state_bytes",
    "export_sparse",
    "load_sparse",
    "model_from_run",
    "to_sparse_inference",
]

FORMAT_VERSION = 1
VALUE_DTYPES = {"float32": np.float32, "float16": np.float16}
_META = "__meta__"


# ----------------------------------------------------------------------------- export / load


def _model_metadata(model: nn.Module) -> dict[str, Any]:
    """What ``load_sparse`` can infer about how to rebuild ``model`` (without a caller's metadata)."""
    meta: dict[str, Any] = {}
    if isinstance(model, Predictive):
        meta["predictive"] = model.spec()
        model = model.networks()[0]
    if isinstance(model, MLP):
        meta.update(model="mlp", input_shape=list(model.input_shape), num_classes=model.num_classes,
                    hidden_sizes=list(model.hidden_sizes))
        dropouts = [m.p for m in model.modules() if isinstance(m, nn.Dropout)]
        meta["dropout"] = dropouts[0] if dropouts else 0.0
    return meta


def export_sparse(
    model: nn.Module,
    path: str | os.PathLike,
    metadata: dict[str, Any] | None = None,
    format: str = "bitmask",
    values_dtype: str = "float32",
) -> Path:
    """Write ``model`` (a plain module whose conv/linear weights hold exact zeros) to ``path``.

    ``metadata`` should name how to rebuild the module: ``model`` (a ``build_model`` name),
    ``input_shape``, ``num_classes`` and optionally ``dropout`` / ``config``; for an ``MLP`` these
    are filled in automatically. Returns the written path.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    if values_dtype not in VALUE_DTYPES:
        raise ValueError(f"values_dtype must be one of {', '.join(VALUE_DTYPES)}, got {values_dtype!r}")
    vdtype = VALUE_DTYPES[values_dtype]
    path = Path(path)
    sparse_names = set(maskable_weight_names(model))
    state = model.state_dict()
    arrays: dict[str, np.ndarray] = {}
    layers: dict[str, dict[str, Any]] = {}
    nnz_total = numel_total = 0
    for name, tensor in state.items():
        t = tensor.detach().cpu()
        if name not in sparse_names:
            arrays[f"d:{name}"] = t.numpy().copy()
            continue
        w = t.float().contiguous()
        flat = w.reshape(-1)
        nonzero = flat != 0
        nnz = int(nonzero.sum())
        nnz_total += nnz
        numel_total += flat.numel()
        layers[name] = {"shape": list(w.shape), "nnz": nnz, "dtype": str(t.dtype).removeprefix("torch.")}
        if format == "bitmask":
            arrays[f"s:{name}:mask"] = np.packbits(nonzero.numpy())
            arrays[f"s:{name}:values"] = flat[nonzero].numpy().astype(vdtype)
        else:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
                csr = w.reshape(w.shape[0], -1).to_sparse_csr()
            arrays[f"s:{name}:crow"] = csr.crow_indices().numpy().astype(np.int32)
            arrays[f"s:{name}:col"] = csr.col_indices().numpy().astype(np.int32)
            arrays[f"s:{name}:values"] = csr.values().numpy().astype(vdtype)
    meta = {**_model_metadata(model), **(metadata or {})}
    meta.update(format_version=FORMAT_VERSION, format=format, values_dtype=values_dtype, layers=layers,
                density=nnz_total / numel_total if numel_total else 1.0)
    arrays[_META] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)

    return write_atomic(path, lambda handle: np.savez_compressed(handle, **arrays))


def _read_archive(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    if not path.is_file():
        raise FileNotFoundError(f"no exported model at {path}; run `cigl-bayes export --run DIR` first")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
        meta = json.loads(arrays.pop(_META).tobytes().decode("utf-8"))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path} is not a sparse export written by cigl-bayes export ({error})") from None
    if not isinstance(meta, dict) or meta.get("format") not in FORMATS:
        raise ValueError(f"{path} is not a sparse export written by cigl-bayes export (no valid metadata)")
    return meta, arrays


def _rebuild_network(meta: dict[str, Any], path: Path) -> nn.Module:
    missing = [k for k in ("model", "input_shape", "num_classes") if k not in meta]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)} in its metadata; pass model= to load_sparse")
    dropout = float(meta.get("dropout", 0.0) or 0.0)
    if meta["model"] == "mlp" and meta.get("hidden_sizes") is not None:
        return MLP(tuple(meta["input_shape"]), int(meta["num_classes"]), tuple(meta["hidden_sizes"]), dropout=dropout)
    return build_model(meta["model"], tuple(meta["input_shape"]), int(meta["num_classes"]), dropout=dropout)


def _rebuild(meta: dict[str, Any], path: Path) -> nn.Module:
    """The exported module: a plain network, or the predictive (``meta["predictive"]``) over its networks."""
    spec = meta.get("predictive")
    if spec is None:
        return _rebuild_network(meta, path)
    count = int(spec.get("members", 1)) if isinstance(spec, dict) else 0
    if count < 1:
        raise ValueError(f"{path} has invalid predictive metadata {spec!r}")
    try:
        return from_spec(spec, [_rebuild_network(meta, path) for _ in range(count)])
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path} has invalid predictive metadata {spec!r}: {error}") from None


def load_sparse(path: str | os.PathLike, model: nn.Module | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Load an export: rebuild the dense-structured module (``build_model`` from the metadata, or
    the given ``model`` skeleton), restore exact weights (zeros included), return ``(module, metadata)``
    with the module in eval mode."""
    path = Path(path)
    meta, arrays = _read_archive(path)
    module = _rebuild(meta, path) if model is None else model
    expected = module.state_dict()
    state: dict[str, torch.Tensor] = {}
    try:
        for name, ref in expected.items():
            if name in meta["layers"]:
                info = meta["layers"][name]
                shape = tuple(info["shape"])
                numel = math.prod(shape)
                values = torch.from_numpy(arrays[f"s:{name}:values"].astype(np.float32))
                if meta["format"] == "bitmask":
                    mask = np.unpackbits(arrays[f"s:{name}:mask"], count=numel).astype(bool)
                    flat = torch.zeros(numel, dtype=torch.float32)
                    flat[torch.from_numpy(mask)] = values
                    weight = flat.view(shape)
                else:
                    crow = torch.from_numpy(arrays[f"s:{name}:crow"].astype(np.int64))
                    col = torch.from_numpy(arrays[f"s:{name}:col"].astype(np.int64))
                    rows = shape[0]
                    with warnings.catch_warnings():
                        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
                        csr = torch.sparse_csr_tensor(crow, col, values, (rows, numel // rows), check_invariants=True)
                    weight = csr.to_dense().view(shape)
                state[name] = weight.to(ref.dtype)
            else:
                state[name] = torch.from_numpy(arrays[f"d:{name}"].copy())
    except (RuntimeError, ValueError) as error:  # malformed CSR / mask sizes
        raise ValueError(f"{path} holds a malformed sparse layer: {error}") from None
    except KeyError as error:
        raise ValueError(f"{path} does not match the rebuilt {type(module).__name__}: missing {error}") from None
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(f"{path} does not match the rebuilt {type(module).__name__}: {error}") from None
    return module.eval(), meta


def dense_state_bytes(model: nn.Module) -> int:
    """Size of ``torch.save(model.state_dict())`` with float32 weights (the dense baseline)."""
    buffer = io.BytesIO()
    torch.save({k: v.float() if v.is_floating_point() else v for k, v in model.state_dict().items()}, buffer)
    return buffer.getbuffer().nbytes


# ----------------------------------------------------------------------------- from a training run


def model_from_run(checkpoint: dict[str, Any]) -> tuple[Predictive, dict[str, Any]]:
    """The predictive a run was scored with (``runner.build_predictive``: the final or averaged
    network, temperature-scaled, MC dropout or a snapshot ensemble), rebuilt from its checkpoint,
    and export metadata. Its forward returns log-probabilities (their softmax is the predictive)."""
    from .config import RunConfig

    saved = checkpoint.get("predictive")
    if not isinstance(saved, dict) or "config" not in checkpoint:
        raise ValueError("the checkpoint holds no final predictive / config; it was not written by `cigl-bayes train` "
                         "(or by a version before predictives were saved: train again)")
    config = RunConfig.from_dict(checkpoint["config"])
    meta = {**saved["architecture"], "predictive": saved["spec"], "method": config.method, "dataset": config.data.dataset,
            "config": config.to_dict()}
    predictive = _rebuild(meta, Path("the checkpoint"))
    for network, state in zip(predictive.networks(), saved["networks"], strict=True):
        network.load_state_dict(state)
    return predictive.eval(), meta


# ----------------------------------------------------------------------------- sparse inference


class SparseLinearInference(nn.Module):
    """Inference-only ``nn.Linear`` over the non-zeros of its weight: ``y = W x + b``.

    With the compiled kernel (``backend`` ``"auto"`` / ``"kernel"``, CPU float32 inputs) it runs as a
    1x1 ``SparseConv2dInference`` over the ``N`` examples; otherwise ``torch.sparse.mm`` over the
    CSR (or COO, ``layout``) weight.
    """

    def __init__(self, linear: nn.Linear, layout: str = "csr", backend: str = "auto") -> None:
        super().__init__()
        if layout not in ("csr", "coo"):
            raise ValueError(f"layout must be 'csr' or 'coo', got {layout!r}")
        weight = linear.weight.detach()
        self.in_features, self.out_features, self.layout = linear.in_features, linear.out_features, layout
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            sparse = weight.to_sparse_csr() if layout == "csr" else weight.to_sparse().coalesce()
        self.register_buffer("weight", sparse)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())
        self.density = weight_density(weight)
        self.kernel: SparseConv2dInference | None = None
        if backend != "torch":
            conv = nn.Conv2d(self.in_features, self.out_features, 1, bias=linear.bias is not None)
            with torch.no_grad():
                conv.weight.copy_(weight.view(self.out_features, self.in_features, 1, 1))
                if linear.bias is not None:
                    conv.bias.copy_(linear.bias.detach())
            kernel = SparseConv2dInference(conv, backend, output_format="contiguous")
            self.kernel = kernel if kernel.backend == "kernel" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if self.kernel is not None and x2.device.type == "cpu" and x2.dtype == torch.float32:
            n = x2.shape[0]
            return self.kernel(x2.view(n, self.in_features, 1, 1)).view(*lead, self.out_features)
        y = torch.sparse.mm(self.weight, x2.t().contiguous()).t()  # (out, in) @ (in, N) -> (N, out)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        backend = "kernel" if self.kernel is not None else "torch"
        return (f"in_features={self.in_features}, out_features={self.out_features}, density={self.density:.3f}, "
                f"layout={self.layout}, backend={backend}")


def to_sparse_inference(model: nn.Module, max_density: float = 0.3, min_features: int = 256,
                        layout: str = "csr", *, convs: bool = True, fold_bn: bool = True,
                        example_input: torch.Tensor | None = None, timer: Timer | None = None, repeats: int = 5,
                        backend: str = "auto", conv_output_format: str = "auto") -> nn.Module:
    """A copy of ``model`` (eval mode) whose sparse layers run sparse kernels.

    * ``fold_bn``: every ``BatchNorm2d`` directly after a conv (``BatchNorm1d`` after a linear) is
      folded into it (exact up to float32 rounding; ``sparse_inference.fold_batchnorm``).
    * Candidates: ``nn.Linear`` and (``convs``) ``nn.Conv2d`` layers of density <= ``max_density``.
    * With ``example_input`` (a batch of the size you will serve), each candidate is timed dense vs
      sparse on the input it receives (``timer``, default the median of ``repeats`` calls) and the
      faster is kept: the choice is measured on this machine, thread count and batch size.
    * Without it, a fixed rule: linears with ``in * out >= min_features**2 / 4`` (smaller ones lose
      to the sparse call overhead) and every candidate conv. ``experiments/bench_export.py`` times
      both: with the compiled kernel the fixed rule matches the per-layer probe (same layers, same
      latency within noise) for the digits CNN, WRN-22-2 and the MLP at batch 1 and 64.

    Linears become ``SparseLinearInference``, convs ``SparseConv2dInference`` (compiled kernel, or
    torch ops: ``backend``). ``conv_output_format`` (one of ``OUTPUT_FORMATS`` or ``"auto"``) sets
    the memory format of their outputs (values are the same): ``"auto"`` times the whole model with
    contiguous and with channels-last outputs on ``example_input`` and keeps the faster; without an
    example it is ``sparse_inference.default_output_format``. Without the kernel (no C compiler) and
    without ``example_input``, convs stay dense: the torch fallback is slower than the dense conv;
    linears then use ``torch.sparse.mm`` over the ``layout`` weight.
    """
    if conv_output_format != "auto" and conv_output_format not in OUTPUT_FORMATS:
        raise ValueError(f"conv_output_format must be 'auto' or one of {', '.join(OUTPUT_FORMATS)}, "
                         f"got {conv_output_format!r}")
    model = copy.deepcopy(model).eval()
    if fold_bn:
        fold_batchnorm(model)
    kernel_ok = backend == "torch" or load_kernel() is not None
    candidates: dict[str, tuple[nn.Module, nn.Module]] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and weight_density(module.weight.detach()) <= max_density:
            if example_input is not None or module.weight.numel() >= min_features * min_features // 4:
                candidates[name] = (module, SparseLinearInference(module, layout, backend))
        elif (convs and conv_supported(module) and weight_density(module.weight.detach()) <= max_density
              and (kernel_ok or example_input is not None)):
            fmt = "input" if conv_output_format == "auto" else conv_output_format
            candidates[name] = (module, SparseConv2dInference(module, backend, fmt))
    timer = timer or median_timer(repeats)
    if example_input is not None:
        times = probe_layers(model, candidates, example_input, timer)
        candidates = {name: pair for name, pair in candidates.items()
                      if name in times and times[name]["sparse"] < times[name]["dense"]}
    for name, (_, sparse) in candidates.items():
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, sparse)
    if conv_output_format == "auto":
        fmt = (default_output_format(model) if example_input is None
               else choose_output_format(model, example_input, timer))
        set_output_format(model, fmt)
    return model
