"""Offline OOD / covariate-shifted input sets, normalised exactly like the in-distribution inputs.

Every set is a CPU float32 tensor ``(n, *splits.input_shape)`` built with the ID training
statistics recorded in :class:`~cigl_bayes.data.datasets.DataSplits` (``mean``, ``std``,
``raw_scale``), so a model sees OOD inputs through the same preprocessing as its test set.
Nothing is downloaded: digits / mnist shifts are synthesised, the rest is read from local files.
Open-set splits (``*-open``) add their near-OOD set (the held-out classes' test images, stored on
the splits as ``DataSplits.near_ood``) before the far-OOD / covariate-shift sets.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from cigl_bayes.data.datasets import (
    _CIFAR_SPECS,
    IMAGE_BENCHMARK_NAMES,
    DataError,
    DataSplits,
    _default_data_dir,
    _read_cifar_file,
)

__all__ = ["DIGITS_SHIFTS", "normalise_inputs", "ood_sets", "unnormalise_inputs"]

#: Names of the synthetic digits / mnist sets, in the order :func:`ood_sets` returns them.
DIGITS_SHIFTS: tuple[str, ...] = ("noise", "inverted", "rotated", "photos", "uniform")
_NOISE_STD = 0.5
_PHOTO_BLOCK = 4  # photo windows of 4x the image side (32x32 for digits) are block-averaged down to it
_SVHN_FILE = "test_32x32.mat"


# ----------------------------------------------------------------------------- normalisation


def _stats_view(splits: DataSplits) -> tuple[np.ndarray, np.ndarray]:
    """``mean``/``std`` as float64 arrays broadcastable against ``(N, *input_shape)``."""
    if splits.mean is None or splits.std is None:
        raise DataError(
            f"{splits.name}: DataSplits has no normalisation statistics (mean/std); "
            "load it with cigl_bayes.data.load_dataset"
        )
    mean = np.asarray(splits.mean, dtype=np.float64)
    std = np.asarray(splits.std, dtype=np.float64)
    shape = tuple(splits.input_shape)
    if len(shape) == 3 and mean.size == shape[0]:
        view = (1, shape[0], 1, 1)  # per channel
    elif mean.size == int(np.prod(shape)):
        view = (1, *shape)  # per feature
    else:
        raise DataError(f"{splits.name}: {mean.size} mean values do not fit input shape {shape}")
    return mean.reshape(view), std.reshape(view)


def normalise_inputs(raw: np.ndarray | Tensor, splits: DataSplits) -> Tensor:
    """Map inputs in loader units (raw / ``raw_scale``, e.g. pixels in [0, 1]) to model inputs."""
    mean, std = _stats_view(splits)
    a = raw.detach().cpu().numpy() if isinstance(raw, Tensor) else np.asarray(raw)
    a = a.astype(np.float64, copy=False).reshape(-1, *splits.input_shape)
    return torch.from_numpy(np.ascontiguousarray(((a - mean) / std).astype(np.float32)))


def unnormalise_inputs(x: Tensor, splits: DataSplits) -> np.ndarray:
    """Inverse of :func:`normalise_inputs`: model inputs back to loader units (float64 numpy)."""
    mean, std = _stats_view(splits)
    a = x.detach().cpu().numpy().astype(np.float64).reshape(-1, *splits.input_shape)
    return a * std + mean


# ----------------------------------------------------------------------------- helpers


def _rng(seed: int, name: str) -> np.random.Generator:
    """Independent, reproducible stream per (seed, set name)."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _cap(x: np.ndarray | Tensor, max_examples: int | None, seed: int, name: str) -> np.ndarray | Tensor:
    """A seeded random subset of ``max_examples`` rows (original order kept), or ``x`` itself."""
    if max_examples is None or len(x) <= max_examples:
        return x
    keep = np.sort(_rng(seed, "subset:" + name).choice(len(x), size=max_examples, replace=False))
    return x[torch.from_numpy(keep).to(x.device)] if isinstance(x, Tensor) else x[keep]


def _check_args(seed: int, max_examples: int | None) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"seed must be a non-negative integer, got {seed!r}")
    if max_examples is not None and (
        isinstance(max_examples, bool) or not isinstance(max_examples, (int, np.integer)) or max_examples < 1
    ):
        raise DataError(f"max_examples must be a positive integer or None, got {max_examples!r}")


# ----------------------------------------------------------------------------- digits


def _photo_patches(n: int, rng: np.random.Generator, side: int = 8) -> np.ndarray:
    """``n`` grayscale ``side x side`` patches in [0, 1], block-averaged from random photo windows
    of ``4 * side`` pixels (32x32 for digits, 112x112 for mnist)."""
    from sklearn.datasets import load_sample_images  # two photos bundled with scikit-learn

    photos = [
        np.asarray(img, dtype=np.float64) @ np.array([0.299, 0.587, 0.114]) / 255.0
        for img in load_sample_images().images
    ]
    which = rng.integers(0, len(photos), size=n)
    out = np.empty((n, side, side))
    f = _PHOTO_BLOCK
    window = f * side
    for i, k in enumerate(which):
        img = photos[k]
        r = rng.integers(0, img.shape[0] - window + 1)
        c = rng.integers(0, img.shape[1] - window + 1)
        win = img[r : r + window, c : c + window]
        out[i] = win.reshape(side, f, side, f).mean(axis=(1, 3))
    return np.clip(out, 0.0, 1.0)


def _digits_sets(splits: DataSplits, seed: int) -> dict[str, np.ndarray]:
    """Pixel-space [0,1] shifted sets ``(n, 1, S, S)`` built from the (known-class) test images of a
    grayscale ``1xSxS`` image benchmark (digits 8x8, mnist 28x28 and their -hard / -open variants)."""
    shape = tuple(splits.input_shape)
    if len(shape) != 3 or shape[0] != 1 or shape[1] != shape[2]:
        raise DataError(f"{splits.name}: expected square grayscale images (1xSxS), got input shape {shape}")
    pix = unnormalise_inputs(splits.x_test, splits)
    if splits.raw_scale:  # snap back onto the exact raw grid (digits: multiples of 1/16)
        pix = np.rint(pix * splits.raw_scale) / splits.raw_scale
    pix = np.clip(pix, 0.0, 1.0)
    n = len(pix)
    return {
        "noise": np.clip(pix + _rng(seed, "noise").normal(0.0, _NOISE_STD, size=pix.shape), 0.0, 1.0),
        "inverted": 1.0 - pix,
        "rotated": np.rot90(pix, k=1, axes=(2, 3)).copy(),
        "photos": _photo_patches(n, _rng(seed, "photos"), side=shape[1])[:, None],
        "uniform": _rng(seed, "uniform").uniform(0.0, 1.0, size=pix.shape),
    }


# ----------------------------------------------------------------------------- npz


def _npz_sets(splits: DataSplits, data_dir: str | os.PathLike | None) -> dict[str, np.ndarray]:
    """Arrays ``x_ood`` (-> "ood") and ``x_ood_NAME`` (-> "NAME") of the dataset's own .npz file."""
    path = Path(splits.name.strip()[4:].strip()).expanduser()
    if not path.is_file() and data_dir is not None and not path.is_absolute():
        path = Path(data_dir).expanduser() / path
    if not path.is_file():
        raise DataError(f"npz file of {splits.name!r} not found (looked for {path}); pass the same data_dir")
    out: dict[str, np.ndarray] = {}
    with np.load(path, allow_pickle=False) as z:
        keys = [k for k in z.files if k == "x_ood" or (k.startswith("x_ood_") and len(k) > 6)]
        for key in keys:
            set_name = "ood" if key == "x_ood" else key[6:]
            a = np.asarray(z[key])
            if a.dtype.kind not in "biuf":
                raise DataError(f"{path}: {key} has dtype {a.dtype}; OOD features must be numeric")
            a = a.astype(np.float64)
            if a.ndim == 3 and len(splits.input_shape) == 3:
                a = a[:, None]  # (N, H, W) images get a channel axis, as in the loader
            if a.shape[1:] != tuple(splits.input_shape):
                raise DataError(
                    f"{path}: {key} has per-example shape {a.shape[1:]} but the dataset's inputs are "
                    f"{tuple(splits.input_shape)}"
                )
            if not np.isfinite(a).all():
                raise DataError(f"{path}: {key} has non-finite values (NaN/inf)")
            out[set_name] = a / (splits.raw_scale or 1.0)
    return out


# ----------------------------------------------------------------------------- CIFAR / SVHN


def _cifar_sets(splits: DataSplits, data_dir: str | os.PathLike | None) -> dict[str, np.ndarray]:
    """uint8 ``(n, 3, 32, 32)`` test images of the other CIFAR and of SVHN, where present."""
    base = Path(data_dir).expanduser() if data_dir is not None else _default_data_dir()
    out: dict[str, np.ndarray] = {}
    other = "cifar100" if splits.name == "cifar10" else "cifar10"
    spec = _CIFAR_SPECS[other]
    files = [base / spec["folder"] / f for f in spec["test"]]
    if all(f.is_file() for f in files):
        parts = [_read_cifar_file(f, spec["label_key"], spec["num_classes"])[0] for f in files]
        out[other] = np.concatenate(parts)
    for cand in (base / _SVHN_FILE, base / "svhn" / _SVHN_FILE, base / "SVHN" / _SVHN_FILE):
        if cand.is_file():
            out["svhn"] = _read_svhn(cand)
            break
    return out


def _read_svhn(path: Path) -> np.ndarray:
    """SVHN cropped-digits ``.mat`` (``X``: (32, 32, 3, N) uint8) as (N, 3, 32, 32) uint8."""
    from scipy.io import loadmat

    try:
        x = np.asarray(loadmat(path, variable_names=["X"])["X"])
    except (OSError, ValueError, KeyError, NotImplementedError) as exc:
        raise DataError(f"could not read SVHN file {path} ({exc}); expected the cropped-digits test_32x32.mat") from exc
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise DataError(f"{path}: X has shape {x.shape}; expected (32, 32, 3, N)")
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)).astype(np.uint8)


# ----------------------------------------------------------------------------- public entry


def ood_sets(
    splits: DataSplits,
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
    max_examples: int | None = None,
) -> dict[str, Tensor]:
    """OOD / shifted input sets for ``splits``, normalised with its ID training statistics.

    * Open-set splits (``digits-open``, ``mnist-open``, ...): first the near-OOD set
      ``NEAR_OOD_HELD_OUT`` (``"near-held-out-6-9"``: the test images of the held-out classes 6-9,
      from ``splits.near_ood``), then the far-OOD sets of their base set built from the known-class
      test images.
    * ``digits``, ``mnist`` and their ``-hard`` / ``-open`` variants: :data:`DIGITS_SHIFTS` built from
      the test images (noise: Gaussian std 0.5, inverted: 1 - x, rotated: rot90, photos: grayscale
      patches of scikit-learn's sample photos, uniform: U[0,1] pixels), each as many as the test set;
      deterministic given ``seed``.
    * ``npz:PATH``: arrays ``x_ood`` -> ``"ood"`` and ``x_ood_NAME`` -> ``"NAME"`` in the same file.
    * ``cifar10`` / ``cifar100``: the other CIFAR's test split and SVHN's ``test_32x32.mat`` under
      ``data_dir`` (default as in :func:`load_dataset`); missing ones are skipped.
    * ``synthetic:...``: one seeded Gaussian set ``"noise"`` (std 2, as many as the test set).

    ``max_examples`` caps each set with a seeded random subset. Returns ``{name: (n, *input_shape)}``
    CPU float32 tensors (an empty dict when nothing is available).
    """
    _check_args(seed, max_examples)
    seed = int(seed)
    name = splits.name.strip().lower()
    near = {k: _cap(v, max_examples, seed, k).to("cpu", torch.float32, copy=True).contiguous()
            for k, v in splits.near_ood.items()}  # already normalised on the splits
    if name in IMAGE_BENCHMARK_NAMES:
        raw = _digits_sets(splits, seed)
    elif name.startswith("npz:"):
        raw = _npz_sets(splits, data_dir)
    elif name in ("cifar10", "cifar100"):
        u8 = _cifar_sets(splits, data_dir)
        scale = splits.raw_scale or 255.0
        return {**near, **{
            k: normalise_inputs(_cap(v, max_examples, seed, k).astype(np.float64) / scale, splits)
            for k, v in u8.items()
        }}
    elif name.startswith("synthetic:"):  # smoke runs: one seeded Gaussian set ("noise"), as many as the test set
        shape = (len(splits.y_test), *splits.input_shape)
        raw = {"noise": _rng(seed, "noise").normal(0.0, 2.0, size=shape)}  # loader units (std 2 vs ID std 1)
    else:
        raise DataError(f"no OOD sets defined for dataset {splits.name!r}; expected one of "
                        f"{', '.join(IMAGE_BENCHMARK_NAMES)}, cifar10, cifar100 or npz:PATH")
    return {**near, **{k: normalise_inputs(_cap(v, max_examples, seed, k), splits) for k, v in raw.items()}}
