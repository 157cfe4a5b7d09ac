"""The deterministic support ``M``: one flat boolean buffer over every maskable weight.

All maskable weights of a network share one contiguous mask buffer; layer ``l`` owns the slice
``[offset_l, offset_l + N_l)``. Whole-network work (sampling the random mask, density checks,
export) runs on the flat buffer; per-layer Python work happens only when the topology changes.

Which weights are maskable is decided per *parameter* (``maskable_weight_names``), so any
architecture works: Linear / Conv weights, ``nn.MultiheadAttention`` projections, Hugging Face
``Conv1D`` (GPT-2), and a weight tied between an embedding and an output head (one slot).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from fnmatch import fnmatchcase

import torch
from torch import nn

from .density import layer_counts

#: Layers whose ``weight`` is always maskable (also what ``flops`` and ``train.optim`` count).
MASKABLE_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
#: Layers whose parameters stay dense by default: normalisation and embedding tables.
DENSE_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.RMSNorm,
               nn.Embedding, nn.EmbeddingBag)

Patterns = str | Iterable[str] | None


def parameter_aliases(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """Every parameter's names, keyed by its name in ``model.named_parameters()`` (first use).

    A tied parameter (e.g. GPT-2's ``transformer.wte.weight`` is ``lm_head.weight``) has several
    names; the key order is the order of ``named_parameters()``.
    """
    first: dict[int, str] = {}
    aliases: dict[str, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        key = first.setdefault(id(param), name)
        aliases.setdefault(key, []).append(name)
    return {key: tuple(names) for key, names in aliases.items()}


def _default_uses(model: nn.Module) -> set[str]:
    """Names (all aliases) of the parameter uses the default rule masks.

    A use ``module.attr`` is maskable when ``module`` is a Linear / Conv and ``attr == "weight"``,
    or when ``module`` is no normalisation / embedding layer, the parameter has ``ndim >= 2`` and
    ``attr`` contains ``"weight"`` (``in_proj_weight``, ``q_proj_weight``, HF ``Conv1D.weight``,
    ``weight_ih_l0``, ``ConvTranspose*.weight``); biases, ``pos_embed``-style tables, class tokens
    and norm scales are not.
    """
    uses = set()
    for module_name, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, DENSE_TYPES):
            continue
        for attr, param in module.named_parameters(recurse=False, remove_duplicate=False):
            typed = isinstance(module, MASKABLE_TYPES) and attr == "weight"
            if typed or (param.ndim >= 2 and "weight" in attr):
                uses.add(f"{module_name}.{attr}" if module_name else attr)
    return uses


def _patterns(patterns: Patterns, what: str) -> tuple[str, ...]:
    if patterns is None:
        return ()
    if isinstance(patterns, str):
        return (patterns,)
    patterns = tuple(patterns)
    if not all(isinstance(p, str) for p in patterns):
        raise TypeError(f"{what} must be a glob pattern or a list of them (strings), got {patterns!r}")
    return patterns


def maskable_weight_names(model: nn.Module, include: Patterns = None, exclude: Patterns = None) -> list[str]:
    """Names (as in ``model.named_parameters()``) of the weights ``SparseNet`` masks, in that order.

    Default: every weight of a compute layer (see ``_default_uses``): Linear / Conv, attention
    projections, HF ``Conv1D``; not biases, normalisation layers or embedding tables. A weight
    tied between an embedding and a Linear head is masked (it is a Linear weight) and listed once,
    under its first name.

    ``include`` / ``exclude``: ``fnmatch`` glob patterns (``*`` also matches dots) over full
    dotted parameter names, any alias of a tied weight counts. Maskable = (default | include) -
    exclude; e.g. ``include="*.wpe.weight"`` also masks GPT-2's position table,
    ``exclude="lm_head.*"`` leaves the (tied) head dense. A pattern matching no parameter, or an
    empty result, raises ``ValueError``.
    """
    include, exclude = _patterns(include, "include"), _patterns(exclude, "exclude")
    aliases = parameter_aliases(model)
    every = [name for names in aliases.values() for name in names]
    for kind, patterns in (("include", include), ("exclude", exclude)):
        for pattern in patterns:
            if not any(fnmatchcase(name, pattern) for name in every):
                raise ValueError(
                    f"{kind} pattern {pattern!r} matches no parameter of the model; patterns are fnmatch globs over "
                    f"full dotted names such as {', '.join(repr(n) for n in every[:3])} (e.g. '*.attn.*')"
                )

    def matches(names: tuple[str, ...], patterns: tuple[str, ...]) -> bool:
        return any(fnmatchcase(name, pattern) for name in names for pattern in patterns)

    default = _default_uses(model)
    names = [key for key, names in aliases.items()
             if (default.intersection(names) or matches(names, include)) and not matches(names, exclude)]
    if not names:
        raise ValueError(
            "the model has no weight that could be sparsified (no Linear / Conv / attention weight, or all "
            "excluded); name the parameters to mask with include=['pattern', ...] (fnmatch globs)"
        )
    return names


class SupportMask(nn.Module):
    """Boolean support ``M`` over a list of weight shapes, stored flat.

    Per-layer non-zero counts are exact (``layer_counts``) and are preserved by every
    topology update, so they are plain Python ints: no host sync is needed to read them.
    """

    def __init__(
        self,
        shapes: Sequence[Sequence[int]],
        density: float,
        distribution: str = "erk",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.shapes = [tuple(s) for s in shapes]
        self.numels = [math.prod(s) for s in self.shapes]
        self.offsets = [0]
        for n in self.numels[:-1]:
            self.offsets.append(self.offsets[-1] + n)
        self.total = sum(self.numels)
        self.counts = layer_counts(self.shapes, density, distribution)
        self.nnz = sum(self.counts)
        flat = torch.zeros(self.total, dtype=torch.bool)
        for offset, n, k in zip(self.offsets, self.numels, self.counts):
            chosen = torch.randperm(n, generator=generator)[:k]
            flat[offset + chosen] = True
        self.register_buffer("flat", flat)
        self._active: torch.Tensor | None = None

    @property
    def density(self) -> float:
        """Fraction of maskable weights in the support (exact, from the counts)."""
        return self.nnz / self.total

    def layers(self) -> list[torch.Tensor]:
        """Per-layer boolean views of the flat buffer, shaped like the weights."""
        return [chunk.view(shape) for chunk, shape in zip(self.flat.split(self.numels), self.shapes)]

    def layer_views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Split any flat per-weight tensor (e.g. an effective float mask) into per-layer views."""
        return [chunk.view(shape) for chunk, shape in zip(flat.split(self.numels), self.shapes)]

    def active_indices(self) -> torch.Tensor:
        """Sorted flat positions of the support (length ``nnz``), cached until the next update."""
        if self._active is None or self._active.device != self.flat.device:
            self._active = torch.nonzero_static(self.flat, size=self.nnz).flatten()
        return self._active

    def layer_active_indices(self, layer: int) -> torch.Tensor:
        """Sorted positions of layer ``layer``'s support, local to that layer (no host sync)."""
        chunk = self.flat[self.offsets[layer] : self.offsets[layer] + self.numels[layer]]
        return torch.nonzero_static(chunk, size=self.counts[layer]).flatten()

    def set_layer(self, layer: int, local_indices: torch.Tensor) -> None:
        """Replace layer ``layer``'s support by exactly ``local_indices`` (count must be unchanged)."""
        chunk = self.flat[self.offsets[layer] : self.offsets[layer] + self.numels[layer]]
        chunk.zero_()
        chunk.index_fill_(0, local_indices, True)
        self._active = None

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # noqa: D401 - torch hook
        super()._load_from_state_dict(*args, **kwargs)
        self.recount()

    def recount(self) -> None:
        """Re-derive the per-layer counts from ``flat`` (one host sync) after it was replaced
        wholesale, e.g. by ``load_state_dict`` of a support saved at another density."""
        self.counts = [int(c) for c in torch.stack([chunk.sum() for chunk in self.flat.split(self.numels)]).tolist()]
        self.nnz = sum(self.counts)
        self._active = None

    def extra_repr(self) -> str:
        return f"layers={len(self.shapes)}, nnz={self.nnz}/{self.total} (density {self.density:.4f})"
