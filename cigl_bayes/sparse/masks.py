"""The deterministic support ``M``: one flat boolean buffer over every maskable weight.

All maskable weights of a network (every conv and linear ``.weight``) share one contiguous
mask buffer; layer ``l`` owns the slice ``[offset_l, offset_l + N_l)``. Whole-network work
(sampling the random mask, density checks, export) runs on the flat buffer; per-layer
Python work happens only when the topology changes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .density import layer_counts

MASKABLE_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def maskable_weight_names(model: nn.Module) -> list[str]:
    """Names (as in ``model.named_parameters()``) of every conv and linear weight."""
    names = []
    for module_name, module in model.named_modules():
        if isinstance(module, MASKABLE_TYPES):
            names.append(f"{module_name}.weight" if module_name else "weight")
    if not names:
        raise ValueError("the model has no nn.Linear / nn.Conv layer whose weight could be sparsified")
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
