"""Batched on-device augmentation: pad + random crop + horizontal flip (CIFAR style), and random
affine + Gaussian noise (handwritten digits: ``digits-hard``, ``mnist-hard``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["AUGMENTATIONS", "augmentation_for", "random_affine_noise", "random_crop_flip", "sample_crop_flip_params",
           "apply_crop_flip"]


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


def random_affine_noise(
    x: Tensor,
    generator: torch.Generator,
    degrees: float = 15.0,
    scale: tuple[float, float] = (0.9, 1.1),
    translate: float = 0.1,
    noise_std: float = 0.2,
) -> Tensor:
    """Per-example random affine map plus Gaussian noise, one batched ``grid_sample``.

    Each image is rotated by ``U(-degrees, degrees)``, scaled by ``U(*scale)`` and shifted by
    ``U(-translate, translate)`` of its side (bilinear, border padding: the background of
    standardised digits is the border value), then ``N(0, noise_std^2)`` is added (in the
    standardised units of the inputs). Same shape, dtype and device as ``x``; no host sync.
    """
    if x.ndim != 4:
        raise ValueError(f"expected a batch of images (N, C, H, W), got shape {tuple(x.shape)}")
    n, dev = x.shape[0], x.device

    def uniform(low: float, high: float) -> Tensor:
        return torch.rand(n, generator=generator, device=dev, dtype=x.dtype) * (high - low) + low

    angle = uniform(-degrees, degrees) * (torch.pi / 180.0)
    inverse_scale = 1.0 / uniform(*scale)
    cos, sin = torch.cos(angle) * inverse_scale, torch.sin(angle) * inverse_scale
    shift = (torch.rand(n, 2, generator=generator, device=dev, dtype=x.dtype) * 2 - 1) * (2 * translate)
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if noise_std > 0:
        out = out + noise_std * torch.randn(out.shape, generator=generator, device=dev, dtype=x.dtype)
    return out


#: Named on-device training augmentations (``DataSplits.augment``; ``True`` means "crop-flip").
AUGMENTATIONS = {"crop-flip": random_crop_flip, "affine-noise": random_affine_noise}


def augmentation_for(augment: bool | str):
    """The transform ``(batch, generator) -> batch`` named by ``DataSplits.augment`` (None for none)."""
    if augment is False or augment is None:
        return None
    name = "crop-flip" if augment is True else augment
    if name not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {augment!r}; choose one of {', '.join(AUGMENTATIONS)}")
    return AUGMENTATIONS[name]
