"""Offline OOD / shifted input sets: digits shifts, npz x_ood arrays, local CIFAR / SVHN folders."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from cigl_bayes.data import (
    DIGITS_SHIFTS,
    DataError,
    DataSplits,
    load_dataset,
    normalise_inputs,
    ood_sets,
    unnormalise_inputs,
)



@pytest.fixture(scope="module")
def digits_sets(digits_data: DataSplits) -> dict[str, torch.Tensor]:
    return ood_sets(digits_data, seed=3)


def _pixels(x: torch.Tensor, d: DataSplits) -> np.ndarray:
    """Undo the recorded normalisation by hand (independent of unnormalise_inputs)."""
    mean = np.asarray(d.mean).reshape(1, -1, 1, 1)
    std = np.asarray(d.std).reshape(1, -1, 1, 1)
    return x.double().numpy() * std + mean


# ----------------------------------------------------------------------------- DataSplits statistics


def test_digits_records_normalisation(digits_data: DataSplits) -> None:
    d = digits_data
    assert d.raw_scale == 16.0 and len(d.mean) == 1 and len(d.std) == 1 and d.std[0] > 0
    raw = _pixels(torch.cat([d.x_train, d.x_test]), d) * d.raw_scale  # back to the 0..16 integer pixels
    assert np.abs(raw - np.rint(raw)).max() < 1e-4 and raw.min() > -1e-4 and raw.max() < 16 + 1e-4
    assert d.to("cpu").mean == d.mean
    assert torch.allclose(normalise_inputs(unnormalise_inputs(d.x_test, d), d), d.x_test, atol=1e-6)


# ----------------------------------------------------------------------------- digits


def test_digits_sets_shapes_and_counts(digits_data: DataSplits, digits_sets: dict[str, torch.Tensor]) -> None:
    assert tuple(digits_sets) == DIGITS_SHIFTS
    for name, x in digits_sets.items():
        assert x.shape == digits_data.x_test.shape == (539, 1, 8, 8), name
        assert x.dtype == torch.float32 and x.device.type == "cpu" and torch.isfinite(x).all()
        p = _pixels(x, digits_data)
        assert p.min() > -1e-5 and p.max() < 1 + 1e-5, name  # pixel space [0, 1] before normalisation


def test_digits_sets_use_id_normalisation(digits_data: DataSplits, digits_sets: dict[str, torch.Tensor]) -> None:
    pix = _pixels(digits_data.x_test, digits_data)
    assert np.allclose(_pixels(digits_sets["inverted"], digits_data), 1.0 - pix, atol=1e-5)
    assert torch.allclose(digits_sets["rotated"], torch.rot90(digits_data.x_test, 1, (2, 3)), atol=1e-5)
    noise = _pixels(digits_sets["noise"], digits_data) - pix
    assert 0.2 < np.abs(noise).mean() < 0.5  # std-0.5 Gaussian, partly clipped
    u = _pixels(digits_sets["uniform"], digits_data)
    assert abs(u.mean() - 0.5) < 0.02 and abs(u.std() - np.sqrt(1 / 12)) < 0.02


def test_digits_photos_are_natural_patches(digits_data: DataSplits, digits_sets: dict[str, torch.Tensor]) -> None:
    p = _pixels(digits_sets["photos"], digits_data).reshape(539, 64)
    assert np.mean(p.std(axis=1) > 1e-3) > 0.9  # mostly not constant patches
    off_grid = np.abs(p * 16 - np.rint(p * 16)) > 1e-3
    assert off_grid.mean() > 0.5  # continuous grey levels, not 1/16 digit steps
    assert len(np.unique(p.round(6), axis=0)) > 500  # distinct windows
    assert np.abs(np.diff(p.reshape(-1, 8, 8), axis=2)).mean() < np.abs(np.diff(_pixels(digits_data.x_test, digits_data).reshape(-1, 8, 8), axis=2)).mean()


def test_digits_sets_deterministic(digits_data: DataSplits, digits_sets: dict[str, torch.Tensor]) -> None:
    again = ood_sets(digits_data, seed=3)
    other = ood_sets(digits_data, seed=4)
    for name in DIGITS_SHIFTS:
        assert torch.equal(again[name], digits_sets[name]), name
    for name in ("noise", "photos", "uniform"):
        assert not torch.equal(other[name], digits_sets[name]), name
    for name in ("inverted", "rotated"):
        assert torch.equal(other[name], digits_sets[name]), name


def test_max_examples_takes_seeded_subset(digits_data: DataSplits, digits_sets: dict[str, torch.Tensor]) -> None:
    small = ood_sets(digits_data, seed=3, max_examples=50)
    assert all(x.shape == (50, 1, 8, 8) for x in small.values())
    full = digits_sets["inverted"].reshape(539, -1)
    rows = small["inverted"].reshape(50, -1)
    assert all(bool((full == r).all(1).any()) for r in rows)
    assert torch.equal(ood_sets(digits_data, seed=3, max_examples=50)["noise"], small["noise"])
    assert ood_sets(digits_data, max_examples=10_000)["inverted"].shape[0] == 539


@pytest.mark.parametrize("kw", [{"seed": -1}, {"seed": 1.5}, {"max_examples": 0}, {"max_examples": True}])
def test_bad_arguments(digits_data: DataSplits, kw: dict) -> None:
    with pytest.raises(DataError):
        ood_sets(digits_data, **kw)


def test_unknown_name_and_missing_stats(digits_data: DataSplits) -> None:
    import dataclasses

    with pytest.raises(DataError, match="no OOD sets"):
        ood_sets(dataclasses.replace(digits_data, name="wine"))
    with pytest.raises(DataError, match="statistics"):
        ood_sets(dataclasses.replace(digits_data, mean=None, std=None))


# ----------------------------------------------------------------------------- npz


def _labels(n: int, k: int = 3) -> np.ndarray:
    return np.arange(n) % k


def test_npz_ood_arrays(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x_tr = rng.normal(3.0, 2.0, (60, 5))
    arrays = dict(
        x_train=x_tr, y_train=_labels(60), x_val=rng.normal(size=(9, 5)), y_val=_labels(9),
        x_test=rng.normal(size=(12, 5)), y_test=_labels(12),
        x_ood=rng.normal(size=(7, 5)), x_ood_far=rng.normal(50.0, 1.0, (4, 5)).astype(np.float32),
    )
    np.savez(tmp_path / "f.npz", **arrays)
    d = load_dataset(f"npz:{tmp_path / 'f.npz'}")
    assert d.raw_scale == 1.0 and len(d.mean) == 5
    assert np.allclose(d.mean, x_tr.mean(0)) and np.allclose(d.std, x_tr.std(0))
    sets = ood_sets(d)
    assert set(sets) == {"ood", "far"}
    for name, key in (("ood", "x_ood"), ("far", "x_ood_far")):
        want = (arrays[key].astype(np.float64) - x_tr.mean(0)) / x_tr.std(0)
        assert sets[name].dtype == torch.float32 and np.allclose(sets[name].numpy(), want, atol=1e-5)
    # relative path resolved against data_dir, as in load_dataset
    d_rel = load_dataset("npz:f.npz", data_dir=tmp_path)
    assert set(ood_sets(d_rel, data_dir=tmp_path)) == {"ood", "far"}


def test_npz_without_ood_and_image_ood(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    base = dict(x_train=rng.random((30, 4, 4)), y_train=_labels(30), x_test=rng.random((6, 4, 4)), y_test=_labels(6))
    np.savez(tmp_path / "plain.npz", **base)
    assert ood_sets(load_dataset(f"npz:{tmp_path / 'plain.npz'}", val_fraction=0.0)) == {}
    np.savez(tmp_path / "img.npz", **base, x_ood=np.ones((3, 4, 4)))
    d = load_dataset(f"npz:{tmp_path / 'img.npz'}", val_fraction=0.0)
    x = ood_sets(d)["ood"]
    assert x.shape == (3, 1, 4, 4)
    m, s = base["x_train"].mean(), base["x_train"].std()
    assert np.allclose(x.numpy(), (1.0 - m) / s, atol=1e-5)
    np.savez(tmp_path / "bad.npz", **base, x_ood_wide=np.ones((3, 5, 5)))
    with pytest.raises(DataError, match="x_ood_wide"):
        ood_sets(load_dataset(f"npz:{tmp_path / 'bad.npz'}", val_fraction=0.0))


# ----------------------------------------------------------------------------- CIFAR / SVHN (fake local folders)


def _rows(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, (n, 3072)).astype(np.uint8)


def _dump(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=2)


def _make_cifar10(root: Path, rng: np.random.Generator) -> None:
    for i in range(1, 6):
        _dump(root / "cifar-10-batches-py" / f"data_batch_{i}", {b"data": _rows(10, rng), b"labels": list(range(10))})
    _dump(root / "cifar-10-batches-py" / "test_batch", {b"data": _rows(10, rng), b"labels": list(range(10))})


def _make_cifar100(root: Path, rng: np.random.Generator, n_test: int = 8) -> np.ndarray:
    _dump(root / "cifar-100-python" / "train", {b"data": _rows(100, rng), b"fine_labels": list(range(100))})
    test = _rows(n_test, rng)
    _dump(root / "cifar-100-python" / "test", {b"data": test, b"fine_labels": list(range(n_test))})
    return test


def _normalised(u8_nchw: np.ndarray, d: DataSplits) -> np.ndarray:
    mean = np.asarray(d.mean).reshape(1, 3, 1, 1)
    std = np.asarray(d.std).reshape(1, 3, 1, 1)
    return (u8_nchw.astype(np.float64) / 255.0 - mean) / std


def test_cifar10_picks_up_cifar100_and_svhn(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    _make_cifar10(tmp_path, rng)
    d = load_dataset("cifar10", data_dir=tmp_path, val_fraction=0.0)
    assert d.raw_scale == 255.0 and len(d.mean) == 3
    assert np.allclose(_pixels(d.x_train, d) * 255.0, np.rint(_pixels(d.x_train, d) * 255.0), atol=1e-3)
    assert ood_sets(d, data_dir=tmp_path) == {}  # nothing else present: skipped, not an error

    test100 = _make_cifar100(tmp_path, rng)
    svhn = rng.integers(0, 256, (32, 32, 3, 5)).astype(np.uint8)
    (tmp_path / "svhn").mkdir()
    scipy.io.savemat(tmp_path / "svhn" / "test_32x32.mat", {"X": svhn, "y": np.ones((5, 1))})
    sets = ood_sets(d, data_dir=tmp_path)
    assert set(sets) == {"cifar100", "svhn"}
    assert sets["cifar100"].shape == (8, 3, 32, 32) and sets["cifar100"].dtype == torch.float32
    assert np.allclose(sets["cifar100"].numpy(), _normalised(test100.reshape(-1, 3, 32, 32), d), atol=1e-5)
    assert sets["svhn"].shape == (5, 3, 32, 32)
    assert np.allclose(sets["svhn"].numpy(), _normalised(svhn.transpose(3, 2, 0, 1), d), atol=1e-5)
    assert ood_sets(d, data_dir=tmp_path, max_examples=3)["cifar100"].shape == (3, 3, 32, 32)


def test_cifar100_picks_up_cifar10_via_env_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    _make_cifar100(tmp_path, rng)
    d = load_dataset("cifar100", data_dir=tmp_path, val_fraction=0.0)
    assert ood_sets(d, data_dir=tmp_path) == {}
    _make_cifar10(tmp_path, rng)
    monkeypatch.setenv("CIGL_BAYES_DATA_DIR", str(tmp_path))
    sets = ood_sets(d)
    assert set(sets) == {"cifar10"} and sets["cifar10"].shape == (10, 3, 32, 32)
    assert ood_sets(d, data_dir=tmp_path / "does-not-exist") == {}
