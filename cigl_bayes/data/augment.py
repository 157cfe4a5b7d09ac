"""Batched on-device augmentation: pad + random crop + horizontal flip (CIFAR style)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["random_crop_flip", "sample_crop_flip_params", "apply_crop_flip"]


def sample_crop_flip_params(
    n: int, generator: torch.Generator, padding: int = 4, device: torch.device | str | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Draw per-example ``(dy, dx, flip)``: offsets in ``[0, 2*padding]`` and flip with prob 0.5."""
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    dev = generator.device if device is None else torch.device(device)
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=dev)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=dev)
    flip = torch.rand(n, generator=generator, device=dev) < 0.5
    return dy, dx, flip


def apply_crop_flip(x: Tensor, dy: Tensor, dx: Tensor, flip: Tensor, padding: int = 4) -> Tensor:
    """Zero-pad ``x`` (N,C,H,W) by ``padding``, take the HxW window at ``(dy, dx)``, flip where ``flip``."""
    if x.ndim != 4:
        raise ValueError(f"expected a batch of images (N, C, H, W), got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding)) if padding > 0 else x
    dev = x.device
    rows = dy.to(dev).view(n, 1) + torch.arange(h, device=dev).view(1, h)  # (N, H)
    cols = dx.to(dev).view(n, 1) + torch.arange(w, device=dev).view(1, w)  # (N, W)
    cols = torch.where(flip.to(dev).view(n, 1), cols.flip(1), cols)
    # Two gathers (rows, then columns) keep the index tensors small.
    out = padded.gather(2, rows.view(n, 1, h, 1).expand(n, c, h, padded.shape[3]))
    return out.gather(3, cols.view(n, 1, 1, w).expand(n, c, h, w))


def random_crop_flip(x: Tensor, generator: torch.Generator, padding: int = 4) -> Tensor:
    """Batched pad-``padding`` random crop + horizontal flip; same shape/dtype/device as ``x``."""
    if x.ndim != 4:
        raise ValueError(f"expected a batch of images (N, C, H, W), got shape {tuple(x.shape)}")
    dy, dx, flip = sample_crop_flip_params(x.shape[0], generator, padding, device=x.device)
    return apply_crop_flip(x, dy, dx, flip, padding)
