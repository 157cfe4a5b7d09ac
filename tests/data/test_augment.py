"""Tests for cigl_bayes.data.augment (batched random crop + flip)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cigl_bayes.data import apply_crop_flip, random_crop_flip, sample_crop_flip_params


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _reference(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor, p: int) -> torch.Tensor:
    """Per-example loop with explicit numpy zero padding and slicing."""
    xs = x.numpy()
    n, c, h, w = xs.shape
    out = np.empty_like(xs)
    for i in range(n):
        padded = np.zeros((c, h + 2 * p, w + 2 * p), dtype=xs.dtype)
        padded[:, p : p + h, p : p + w] = xs[i]
        win = padded[:, dy[i] : dy[i] + h, dx[i] : dx[i] + w]
        out[i] = win[:, :, ::-1] if bool(flip[i]) else win
    return torch.from_numpy(out)


def test_padding_zero_is_identity_or_flip() -> None:
    x = torch.randn(64, 3, 5, 7)
    out = random_crop_flip(x, _gen(0), padding=0)
    same = (out == x).flatten(1).all(1)
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    assert torch.all(same | flipped)
    assert same.any() and flipped.any()


@pytest.mark.parametrize("padding,shape", [(4, (50, 3, 8, 8)), (2, (30, 2, 5, 9)), (1, (20, 1, 3, 3))])
def test_matches_per_example_reference(padding: int, shape: tuple[int, ...]) -> None:
    x = torch.randn(*shape)
    out = random_crop_flip(x, _gen(11), padding=padding)
    dy, dx, flip = sample_crop_flip_params(shape[0], _gen(11), padding=padding)  # same draws
    assert int(dy.min()) >= 0 and int(dy.max()) <= 2 * padding
    assert int(dx.min()) >= 0 and int(dx.max()) <= 2 * padding
    assert torch.equal(out, _reference(x, dy, dx, flip, padding))
    assert torch.equal(apply_crop_flip(x, dy, dx, flip, padding), out)


def test_crops_contain_zero_padding_where_expected() -> None:
    x = torch.ones(200, 1, 6, 6)
    p = 4
    out = random_crop_flip(x, _gen(3), padding=p)
    dy, dx, flip = sample_crop_flip_params(200, _gen(3), padding=p)
    # number of surviving (non-padding) pixels is determined by the offsets alone
    visible = (6 - (dy - p).abs()).clamp(min=0) * (6 - (dx - p).abs()).clamp(min=0)
    assert torch.equal(out.flatten(1).sum(1).long(), visible)
    centred = (dy == p) & (dx == p)
    assert centred.any() and torch.all(out[centred] == 1)


def test_offsets_and_flip_distribution() -> None:
    n, p = 6000, 4
    dy, dx, flip = sample_crop_flip_params(n, _gen(5), padding=p)
    assert abs(flip.float().mean().item() - 0.5) < 0.03
    for d in (dy, dx):
        counts = torch.bincount(d, minlength=2 * p + 1)
        assert len(counts) == 2 * p + 1
        assert torch.all((counts.float() / n - 1 / (2 * p + 1)).abs() < 0.03)
    assert not torch.equal(dy, dx)
    # flips as observed through the public function (padding 0 isolates the flip)
    x = torch.arange(8.0).view(1, 1, 1, 8).repeat(4000, 1, 1, 1)
    out = random_crop_flip(x, _gen(6), padding=0)
    frac = (out[:, 0, 0, 0] == 7).float().mean().item()
    assert abs(frac - 0.5) < 0.03


def test_deterministic_given_generator_state() -> None:
    x = torch.randn(32, 3, 8, 8)
    g = _gen(42)
    state = g.get_state()
    a = random_crop_flip(x, g)
    b = random_crop_flip(x, g)  # generator advanced -> different augmentation
    g.set_state(state)
    c = random_crop_flip(x, g)
    assert torch.equal(a, c)
    assert not torch.equal(a, b)
    assert torch.equal(random_crop_flip(x, _gen(42)), a)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.uint8])
def test_preserves_shape_dtype_and_input(dtype: torch.dtype) -> None:
    x = (torch.rand(10, 3, 8, 8) * 100).to(dtype)
    before = x.clone()
    out = random_crop_flip(x, _gen(1))
    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
    assert torch.equal(x, before)  # input untouched
    assert random_crop_flip(x[:0], _gen(1)).shape == (0, 3, 8, 8)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="N, C, H, W"):
        random_crop_flip(torch.zeros(3, 8, 8), _gen(0))
    with pytest.raises(ValueError, match="padding"):
        random_crop_flip(torch.zeros(2, 3, 8, 8), _gen(0), padding=-1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.filterwarnings("ignore:Synchronization debug mode")
def test_cuda_matches_reference() -> None:
    x = torch.randn(50, 3, 32, 32, device="cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # augmentation must not sync with the host
    try:
        out = random_crop_flip(x, g)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.is_cuda and out.shape == x.shape
    g2 = torch.Generator(device="cuda").manual_seed(0)
    dy, dx, flip = sample_crop_flip_params(50, g2)
    assert dy.is_cuda
    assert torch.equal(out.cpu(), _reference(x.cpu(), dy.cpu(), dx.cpu(), flip.cpu(), 4))


# ----------------------------------------------------------------------------- affine + noise


def test_affine_noise_identity_parameters_return_the_input() -> None:
    from cigl_bayes.data import random_affine_noise

    x = torch.randn(5, 2, 12, 12, generator=torch.Generator().manual_seed(0))
    out = random_affine_noise(x, torch.Generator().manual_seed(1), degrees=0.0, scale=(1.0, 1.0), translate=0.0, noise_std=0.0)
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)


def test_affine_noise_adds_gaussian_noise_of_the_stated_scale() -> None:
    from cigl_bayes.data import random_affine_noise

    x = torch.zeros(64, 1, 16, 16)
    out = random_affine_noise(x, torch.Generator().manual_seed(2), noise_std=0.2)
    assert float(out.mean()) == pytest.approx(0.0, abs=0.01) and float(out.std()) == pytest.approx(0.2, rel=0.03)


def test_affine_noise_moves_pixels_per_example_and_is_reproducible() -> None:
    from cigl_bayes.data import random_affine_noise

    x = torch.zeros(8, 1, 28, 28)
    x[:, :, 10:18, 12:16] = 1.0  # a bar: any rotation / shift / scale moves it
    a = random_affine_noise(x, torch.Generator().manual_seed(3), noise_std=0.0)
    b = random_affine_noise(x, torch.Generator().manual_seed(3), noise_std=0.0)
    assert torch.equal(a, b) and a.shape == x.shape and a.dtype == x.dtype
    moved = (a - x).abs().flatten(1).sum(1)
    assert bool((moved > 0.5).all())  # every example is transformed
    assert len({round(float(v), 3) for v in moved}) == 8  # each with its own parameters
    # mass is roughly kept (scale in [0.9, 1.1]: area within [0.81, 1.21] of the original)
    ratio = a.flatten(1).sum(1) / x.flatten(1).sum(1)
    assert bool(((ratio > 0.75) & (ratio < 1.3)).all())


def test_augmentation_for_maps_names() -> None:
    from cigl_bayes.data import augmentation_for, random_affine_noise

    assert augmentation_for(False) is None and augmentation_for(True) is random_crop_flip
    assert augmentation_for("affine-noise") is random_affine_noise
    with pytest.raises(ValueError, match="unknown augmentation"):
        augmentation_for("mixup")
