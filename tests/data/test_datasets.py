"""Tests for cigl_bayes.data.datasets: digits, npz files and (fake) local CIFAR folders."""

from __future__ import annotations

import math
import os
import pickle
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from cigl_bayes.data import DATASET_NAMES, DataError, DataSplits, load_dataset

# ----------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits() -> DataSplits:
    return load_dataset("digits")


@pytest.fixture(scope="module")
def digits_raw() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    b = load_digits()
    return np.asarray(b.data), np.asarray(b.target)


def _recover_digit_pixels(x: torch.Tensor, lo: float, hi: float) -> np.ndarray:
    """Undo the (positive) affine standardisation: raw pixels are integers 0..16."""
    return np.rint((x.reshape(len(x), -1).double().numpy() - lo) / (hi - lo) * 16).astype(np.int64)


def test_digits_shapes_and_sizes(digits: DataSplits) -> None:
    assert "digits" in DATASET_NAMES
    assert digits.name == "digits"
    assert digits.input_shape == (1, 8, 8)
    assert digits.num_classes == 10
    assert digits.augment is False
    n_tr, n_va, n_te = len(digits.y_train), len(digits.y_val), len(digits.y_test)
    assert n_tr + n_va + n_te == 1797
    assert (n_tr, n_va, n_te) == (1078, 180, 539)  # 30 % test, 10 % val, rest train
    for x, y, n in ((digits.x_train, digits.y_train, n_tr), (digits.x_val, digits.y_val, n_va), (digits.x_test, digits.y_test, n_te)):
        assert x.shape == (n, 1, 8, 8) and x.dtype == torch.float32 and x.device.type == "cpu"
        assert y.shape == (n,) and y.dtype == torch.int64
        assert torch.isfinite(x).all()
    for y in (digits.y_train, digits.y_val, digits.y_test):
        assert set(y.tolist()) == set(range(10))


def test_digits_splits_partition_the_dataset(digits: DataSplits, digits_raw: tuple[np.ndarray, np.ndarray]) -> None:
    raw_x, raw_y = digits_raw
    allx = torch.cat([digits.x_train, digits.x_val, digits.x_test])
    ally = torch.cat([digits.y_train, digits.y_val, digits.y_test]).numpy()
    lo, hi = allx.min().item(), allx.max().item()
    rec = _recover_digit_pixels(allx, lo, hi)
    # Multiset of (pixels, label) over all splits == the original data: every example exactly once.
    got = Counter((r.tobytes(), int(l)) for r, l in zip(rec, ally))
    want = Counter((r.astype(np.int64).tobytes(), int(l)) for r, l in zip(raw_x, raw_y))
    assert got == want
    # No row of one split appears in another unless it is duplicated in the original data.
    orig_counts = Counter(r.astype(np.int64).tobytes() for r in raw_x)
    sets = [
        {r.tobytes() for r in _recover_digit_pixels(x, lo, hi)}
        for x in (digits.x_train, digits.x_val, digits.x_test)
    ]
    for i in range(3):
        for j in range(i + 1, 3):
            assert all(orig_counts[r] > 1 for r in sets[i] & sets[j])


def test_digits_stratified(digits: DataSplits, digits_raw: tuple[np.ndarray, np.ndarray]) -> None:
    class_counts = np.bincount(digits_raw[1], minlength=10)
    test_counts = np.bincount(digits.y_test.numpy(), minlength=10)
    val_counts = np.bincount(digits.y_val.numpy(), minlength=10)
    assert np.all(np.abs(test_counts - 0.3 * class_counts) <= 1.0)
    assert np.all(np.abs(val_counts - 0.1 * class_counts) <= 1.5)
    train_prop = np.bincount(digits.y_train.numpy(), minlength=10) / len(digits.y_train)
    assert np.allclose(train_prop, class_counts / class_counts.sum(), atol=0.01)


def test_digits_split_deterministic_and_seeded(digits: DataSplits) -> None:
    again = load_dataset("digits")
    for f in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        assert torch.equal(getattr(digits, f), getattr(again, f))
    torch.manual_seed(1234)  # the global torch seed must not matter
    np.random.seed(1234)
    assert torch.equal(load_dataset("digits").x_test, digits.x_test)
    other = load_dataset("digits", split_seed=1)
    assert not torch.equal(other.y_test, digits.y_test)
    assert len(other.y_test) == len(digits.y_test)


def test_digits_train_standardised(digits: DataSplits) -> None:
    x = digits.x_train.double()
    assert abs(x.mean().item()) < 1e-5
    assert abs(x.std(unbiased=False).item() - 1.0) < 1e-5
    # val/test use the train statistics, so they are not exactly standardised themselves
    assert abs(digits.x_test.double().mean().item()) < 0.1
    assert abs(digits.x_test.double().mean().item()) > 1e-7


def test_digits_val_fraction_options() -> None:
    d0 = load_dataset("digits", val_fraction=0.0)
    assert d0.x_val.shape == (0, 1, 8, 8) and d0.y_val.shape == (0,)
    assert len(d0.y_train) + len(d0.y_test) == 1797
    d2 = load_dataset("digits", val_fraction=0.2)
    assert len(d2.y_val) == 359 and len(d2.y_test) == 539


@pytest.mark.parametrize("bad", [-0.1, 0.5, 0.9, float("nan"), "0.1", None, True])
def test_bad_val_fraction(bad: object) -> None:
    with pytest.raises(DataError, match="val_fraction"):
        load_dataset("digits", val_fraction=bad)  # type: ignore[arg-type]


def test_unknown_dataset_lists_valid_names() -> None:
    with pytest.raises(DataError) as ei:
        load_dataset("fashion-mnist")
    msg = str(ei.value)
    for part in ("'fashion-mnist'", "digits", "mnist-hard", "cifar10", "cifar100", "npz:PATH"):
        assert part in msg
    assert isinstance(ei.value, ValueError)


def test_splits_to_moves_all_tensors(digits: DataSplits) -> None:
    moved = digits.to("meta")
    for f in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        assert getattr(moved, f).device.type == "meta"
        assert getattr(moved, f).shape == getattr(digits, f).shape
    assert digits.x_train.device.type == "cpu"
    assert moved.num_classes == 10 and moved.input_shape == (1, 8, 8)
    assert "train=1078" in repr(digits)


# ----------------------------------------------------------------------------- npz


def _write_npz(path: Path, **arrays: np.ndarray) -> str:
    np.savez(path, **arrays)
    return f"npz:{path}"


def _labels(n: int, k: int) -> np.ndarray:
    return np.arange(n) % k


def test_npz_hw_images_get_channel_axis(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    name = _write_npz(
        tmp_path / "hw.npz",
        x_train=rng.uniform(0, 255, (60, 6, 5)), y_train=_labels(60, 3),
        x_test=rng.uniform(0, 255, (12, 6, 5)), y_test=_labels(12, 3),
    )
    d = load_dataset(name)
    assert d.input_shape == (1, 6, 5) and d.augment is False and d.num_classes == 3
    assert d.x_train.shape == (54, 1, 6, 5) and d.x_val.shape == (6, 1, 6, 5) and d.x_test.shape == (12, 1, 6, 5)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert abs(d.x_train.double().mean().item()) < 1e-5
    assert abs(d.x_train.double().std(unbiased=False).item() - 1) < 1e-5
    assert d.name == name


def test_npz_chw_images_standardised_per_channel(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x_train = rng.normal(0, 1, (40, 3, 4, 4)) * np.array([1.0, 10.0, 0.0]).reshape(1, 3, 1, 1)
    x_train += np.array([5.0, -3.0, 7.0]).reshape(1, 3, 1, 1)  # channel 2 is constant -> std guard
    x_val = rng.normal(0, 1, (8, 3, 4, 4))
    x_test = rng.normal(0, 1, (10, 3, 4, 4))
    name = _write_npz(
        tmp_path / "chw.npz",
        x_train=x_train, y_train=_labels(40, 4), x_val=x_val, y_val=_labels(8, 4),
        x_test=x_test, y_test=_labels(10, 4),
    )
    d = load_dataset(name)
    assert d.input_shape == (3, 4, 4)
    assert (len(d.y_train), len(d.y_val), len(d.y_test)) == (40, 8, 10)  # explicit val used as given
    xt = d.x_train.double()
    assert torch.allclose(xt[:, :2].mean(dim=(0, 2, 3)), torch.zeros(2, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(xt[:, :2].std(dim=(0, 2, 3), unbiased=False), torch.ones(2, dtype=torch.float64), atol=1e-5)
    assert torch.all(xt[:, 2] == 0)  # constant channel: centred, not divided by zero
    for x in (d.x_train, d.x_val, d.x_test):
        assert torch.isfinite(x).all()
    # val/test are transformed with the *train* statistics
    mean = x_train.mean(axis=(0, 2, 3), keepdims=True)
    std = x_train.std(axis=(0, 2, 3), keepdims=True)
    std = np.where(std > 1e-12, std, 1.0)
    assert np.allclose(d.x_val.numpy(), (x_val - mean) / std, atol=1e-5)
    assert np.allclose(d.x_test.numpy(), (x_test - mean) / std, atol=1e-5)
    assert torch.equal(d.y_val, torch.from_numpy(_labels(8, 4)))


def test_npz_flat_features_carved_stratified_val(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    x_train = rng.normal(3, 2, (100, 7))
    x_train[:, 4] = 1.5  # constant feature
    y_train = np.repeat([0, 1, 2, 3], [40, 30, 20, 10])
    name = _write_npz(
        tmp_path / "flat.npz",
        x_train=x_train, y_train=y_train.astype(np.int32),
        x_test=rng.normal(3, 2, (20, 7)), y_test=_labels(20, 4).astype(np.uint8),
    )
    d = load_dataset(name, val_fraction=0.2, split_seed=3)
    assert d.input_shape == (7,) and d.num_classes == 4
    assert (len(d.y_train), len(d.y_val), len(d.y_test)) == (80, 20, 20)
    assert np.bincount(d.y_val.numpy(), minlength=4).tolist() == [8, 6, 4, 2]  # stratified
    xt = d.x_train.double()
    keep = [0, 1, 2, 3, 5, 6]
    assert torch.allclose(xt[:, keep].mean(0), torch.zeros(6, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(xt[:, keep].std(0, unbiased=False), torch.ones(6, dtype=torch.float64), atol=1e-5)
    assert torch.all(xt[:, 4] == 0)
    # carved train + val is exactly the original training set: the per-feature map is a positive
    # affine one, so sorting rows lexicographically aligns transformed rows with raw rows
    feats = torch.cat([d.x_train, d.x_val]).double().numpy()
    labs = torch.cat([d.y_train, d.y_val]).numpy()
    order_got = np.lexsort(feats[:, ::-1].T)
    order_raw = np.lexsort(x_train[:, ::-1].T)
    assert np.array_equal(labs[order_got], y_train[order_raw])
    for j in keep:
        slope, icpt = np.polyfit(x_train[order_raw, j], feats[order_got, j], 1)
        assert slope > 0
        assert np.allclose(slope * x_train[order_raw, j] + icpt, feats[order_got, j], atol=1e-5)
    # deterministic given split_seed, different for another seed
    again = load_dataset(name, val_fraction=0.2, split_seed=3)
    assert torch.equal(again.x_val, d.x_val)
    other = load_dataset(name, val_fraction=0.2, split_seed=4)
    assert not torch.equal(other.x_val, d.x_val)


def test_npz_num_classes_and_float_integer_labels(tmp_path: Path) -> None:
    name = _write_npz(
        tmp_path / "k.npz",
        x_train=np.ones((10, 2)), y_train=np.array([0, 1, 2, 5, 0, 1, 2, 5, 0, 1], dtype=np.float32),
        x_test=np.zeros((3, 2)), y_test=np.array([5, 0, 2]),
    )
    d = load_dataset(name, val_fraction=0.0)
    assert d.num_classes == 6
    assert d.y_train.dtype == torch.int64 and d.y_train.max().item() == 5
    assert len(d.y_val) == 0 and d.x_val.shape == (0, 2)


def test_npz_relative_path_resolved_against_data_dir(tmp_path: Path) -> None:
    _write_npz(
        tmp_path / "rel.npz",
        x_train=np.random.default_rng(0).normal(size=(20, 3)), y_train=_labels(20, 2),
        x_test=np.ones((4, 3)), y_test=_labels(4, 2),
    )
    d = load_dataset("npz:rel.npz", data_dir=tmp_path)
    assert d.input_shape == (3,)


def _good_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    return {
        "x_train": rng.normal(size=(30, 4)), "y_train": _labels(30, 3),
        "x_val": rng.normal(size=(6, 4)), "y_val": _labels(6, 3),
        "x_test": rng.normal(size=(9, 4)), "y_test": _labels(9, 3),
    }


def test_npz_good_arrays_load(tmp_path: Path) -> None:
    d = load_dataset(_write_npz(tmp_path / "ok.npz", **_good_arrays()))
    assert (len(d.y_train), len(d.y_val), len(d.y_test)) == (30, 6, 9)


def _nan_train() -> dict[str, np.ndarray]:
    a = _good_arrays()
    a["x_train"][3, 1] = np.nan
    return a


def _inf_test() -> dict[str, np.ndarray]:
    a = _good_arrays()
    a["x_test"][0, 0] = np.inf
    return a


NPZ_ERROR_CASES = {
    "missing_y_test": (lambda a: a.pop("y_test"), ["y_test", "x_train, y_train, x_test, y_test"]),
    "missing_x_train": (lambda a: a.pop("x_train"), ["x_train", "expected keys"]),
    "x_val_without_y_val": (lambda a: a.pop("y_val"), ["y_val", "x_val"]),
    "mismatched_train": (lambda a: a.update(y_train=_labels(29, 3)), ["mismatched", "x_train", "y_train", "30", "29"]),
    "mismatched_test": (lambda a: a.update(x_test=np.zeros((8, 4))), ["mismatched", "x_test", "y_test"]),
    "negative_label": (lambda a: a.update(y_train=np.r_[-1, _labels(29, 3)]), ["y_train", "negative", "-1"]),
    "non_integer_label": (lambda a: a.update(y_test=np.r_[1.5, np.zeros(8)]), ["y_test", "non-integer", "1.5"]),
    "string_labels": (lambda a: a.update(y_val=np.array(list("abcabc"))), ["y_val", "integer"]),
    "test_label_too_big": (lambda a: a.update(y_test=np.r_[7, _labels(8, 3)]), ["y_test", "7", "num_classes=3"]),
    "val_label_too_big": (lambda a: a.update(y_val=np.r_[3, _labels(5, 3)]), ["y_val", "3"]),
    "nan_features": (lambda a: a.update(_nan_train()), ["x_train", "non-finite"]),
    "inf_features": (lambda a: a.update(_inf_test()), ["x_test", "non-finite"]),
    "empty_train": (lambda a: a.update(x_train=np.zeros((0, 4)), y_train=np.zeros(0, np.int64)), ["x_train", "empty"]),
    "empty_test": (lambda a: a.update(x_test=np.zeros((0, 4)), y_test=np.zeros(0, np.int64)), ["x_test", "empty"]),
    "bad_ndim": (lambda a: a.update(x_train=np.zeros(30)), ["x_train", "(N, D)"]),
    "feature_shape_mismatch": (lambda a: a.update(x_test=np.zeros((9, 5))), ["x_test", "x_train", "(5,)", "(4,)"]),
    "label_2d": (lambda a: a.update(y_train=_labels(30, 3).reshape(30, 1)), ["y_train", "1-D"]),
}


@pytest.mark.parametrize("case", sorted(NPZ_ERROR_CASES))
def test_npz_errors(tmp_path: Path, case: str) -> None:
    mutate, needles = NPZ_ERROR_CASES[case]
    arrays = _good_arrays()
    mutate(arrays)
    name = _write_npz(tmp_path / f"{case}.npz", **arrays)
    with pytest.raises(DataError) as ei:
        load_dataset(name)
    msg = str(ei.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, (needle, msg)


def test_npz_missing_file_and_bad_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.npz"
    with pytest.raises(DataError, match="not found") as ei:
        load_dataset(f"npz:{missing}")
    assert str(missing) in str(ei.value)
    with pytest.raises(DataError, match="needs a file path"):
        load_dataset("npz:")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"this is not a zip")
    with pytest.raises(DataError, match="garbage.npz"):
        load_dataset(f"npz:{garbage}")
    objs = _good_arrays()
    objs["x_train"] = np.array([object()] * 30, dtype=object)
    np.savez(tmp_path / "obj.npz", **objs)
    with pytest.raises(DataError, match="obj.npz"):
        load_dataset(f"npz:{tmp_path / 'obj.npz'}")


def test_npz_carve_too_small(tmp_path: Path) -> None:
    name = _write_npz(
        tmp_path / "tiny.npz", x_train=np.ones((1, 2)), y_train=np.zeros(1, np.int64),
        x_test=np.ones((1, 2)), y_test=np.zeros(1, np.int64),
    )
    with pytest.raises(DataError, match="val_fraction"):
        load_dataset(name, val_fraction=0.1)
    with pytest.raises(DataError, match="single class"):  # no val split to carve, but one class is no classifier
        load_dataset(name, val_fraction=0.0)


# ----------------------------------------------------------------------------- CIFAR (fake local folders)

N_PER_BATCH = 50
# image 0 of the first batch: one bright pixel per channel at distinct positions
MARKS = {0: (2, 5), 1: (7, 1), 2: (31, 0)}


def _fake_cifar_rows(n: int, rng: np.random.Generator, marked: bool) -> np.ndarray:
    """(n, 3072) uint8 rows in CIFAR layout: R plane (1024, row-major), then G, then B.

    Channel planes use disjoint value ranges (R < 85 <= G < 170 <= B) so they are distinguishable.
    """
    r = rng.integers(0, 85, (n, 32, 32))
    g = rng.integers(85, 170, (n, 32, 32))
    b = rng.integers(170, 255, (n, 32, 32))
    if marked:
        r[0], g[0], b[0] = 0, 85, 170
        for c, plane in enumerate((r, g, b)):
            plane[0][MARKS[c]] = 84 + 85 * c  # the maximum of that plane's range
    return np.concatenate([r.reshape(n, -1), g.reshape(n, -1), b.reshape(n, -1)], axis=1).astype(np.uint8)


def _dump(path: Path, obj: dict, protocol: int = 2) -> None:
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=protocol)


def _make_cifar10(root: Path, subfolder: bool = True) -> tuple[np.ndarray, np.ndarray]:
    folder = root / "cifar-10-batches-py" if subfolder else root
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows, labels = [], []
    for i in range(1, 6):
        data = _fake_cifar_rows(N_PER_BATCH, rng, marked=(i == 1))
        lab = [int(v) for v in (np.arange(N_PER_BATCH) + i) % 10]
        _dump(folder / f"data_batch_{i}", {b"batch_label": b"x", b"data": data, b"labels": lab, b"filenames": [b"f"] * N_PER_BATCH})
        rows.append(data)
        labels.extend(lab)
    test = _fake_cifar_rows(20, rng, marked=False)
    _dump(folder / "test_batch", {b"data": test, b"labels": list(range(10)) * 2}, protocol=pickle.HIGHEST_PROTOCOL)
    return np.concatenate(rows), np.asarray(labels)


def test_cifar10_layout_and_normalisation(tmp_path: Path) -> None:
    raw, labels = _make_cifar10(tmp_path)
    d = load_dataset("cifar10", data_dir=tmp_path, val_fraction=0.0)
    assert d.name == "cifar10" and d.augment is True and d.num_classes == 10
    assert d.input_shape == (3, 32, 32)
    assert d.x_train.shape == (250, 3, 32, 32) and d.x_test.shape == (20, 3, 32, 32)
    assert d.x_val.shape == (0, 3, 32, 32)
    assert torch.equal(d.y_train, torch.from_numpy(labels))
    # reference: CHW planes, row-major, /255, per-channel mean/std of the train split
    ref = raw.reshape(250, 3, 32, 32).astype(np.float64) / 255.0
    mean = ref.mean(axis=(0, 2, 3), keepdims=True)
    std = ref.std(axis=(0, 2, 3), keepdims=True)
    assert np.allclose(d.x_train.numpy(), (ref - mean) / std, atol=1e-5)
    xt = d.x_train.double()
    assert torch.allclose(xt.mean(dim=(0, 2, 3)), torch.zeros(3, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(xt.std(dim=(0, 2, 3), unbiased=False), torch.ones(3, dtype=torch.float64), atol=1e-5)
    # raw channel means land in channels 0/1/2 in that order (R < G < B by construction)
    assert mean.ravel()[0] < 85 / 255 < mean.ravel()[1] < 170 / 255 < mean.ravel()[2]
    # each channel's single marked pixel is at the expected (row, col)
    for c, (r, col) in MARKS.items():
        plane = d.x_train[0, c]
        flat = int(plane.argmax())
        assert divmod(flat, 32) == (r, col)
        assert (plane == plane.max()).sum() == 1


def test_cifar10_val_split(tmp_path: Path) -> None:
    raw, labels = _make_cifar10(tmp_path)
    d = load_dataset("cifar10", data_dir=str(tmp_path))  # val_fraction=0.1 -> 225/25 (45k/5k on the real data)
    assert (len(d.y_train), len(d.y_val), len(d.y_test)) == (225, 25, 20)
    counts = np.bincount(d.y_val.numpy(), minlength=10)
    assert counts.min() >= 2 and counts.max() <= 3  # stratified: 2.5 per class
    # train + val is the full training set: undo the per-channel affine map using the known
    # value ranges of the fake planes (R 0..84, G 85..169, B 170..254; all extremes occur)
    x = torch.cat([d.x_train, d.x_val]).double()
    y = torch.cat([d.y_train, d.y_val]).numpy()
    rec = torch.empty_like(x)
    for c, (lo, hi) in enumerate(((0, 84), (85, 169), (170, 254))):
        xc = x[:, c]
        rec[:, c] = lo + (xc - xc.min()) / (xc.max() - xc.min()) * (hi - lo)
    rec_rows = np.rint(rec.reshape(250, -1).numpy()).astype(np.uint8)
    got = Counter((r.tobytes(), int(l)) for r, l in zip(rec_rows, y))
    want = Counter((r.tobytes(), int(l)) for r, l in zip(raw, labels))
    assert got == want
    again = load_dataset("cifar10", data_dir=tmp_path)
    assert torch.equal(again.y_val, d.y_val) and torch.equal(again.x_val, d.x_val)


def test_cifar10_files_directly_in_data_dir(tmp_path: Path) -> None:
    _make_cifar10(tmp_path, subfolder=False)
    d = load_dataset("cifar10", data_dir=tmp_path, val_fraction=0.0)
    assert d.x_train.shape == (250, 3, 32, 32)


def test_cifar100_fine_labels(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(1)
    data = _fake_cifar_rows(200, rng, marked=True)
    fine = [int(v) for v in np.arange(200) % 100]
    _dump(folder / "train", {b"data": data, b"fine_labels": fine, b"coarse_labels": [v // 5 for v in fine]})
    _dump(folder / "test", {b"data": _fake_cifar_rows(10, rng, False), b"fine_labels": list(range(90, 100)), b"coarse_labels": [0] * 10})
    d = load_dataset("cifar100", data_dir=tmp_path)
    assert d.num_classes == 100 and d.augment is True and d.input_shape == (3, 32, 32)
    assert (len(d.y_train), len(d.y_val), len(d.y_test)) == (180, 20, 10)
    assert d.y_test.tolist() == list(range(90, 100))
    assert set(torch.cat([d.y_train, d.y_val]).tolist()) == set(range(100))


def test_cifar_missing_folder_message(tmp_path: Path) -> None:
    with pytest.raises(DataError) as ei:
        load_dataset("cifar10", data_dir=tmp_path)
    msg = str(ei.value)
    assert "cifar-10-batches-py" in msg and "--data-dir" in msg and str(tmp_path) in msg
    assert "\n" not in msg
    with pytest.raises(DataError, match="cifar-100-python"):
        load_dataset("cifar100", data_dir=tmp_path)
    absent = tmp_path / "does_not_exist"
    with pytest.raises(DataError, match="does not exist") as ei:
        load_dataset("cifar10", data_dir=absent)
    assert str(absent) in str(ei.value)


def test_cifar_default_data_dir_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _make_cifar10(tmp_path)
    monkeypatch.setenv("CIGL_BAYES_DATA_DIR", str(tmp_path))
    assert len(load_dataset("cifar10", val_fraction=0.0).y_train) == 250


def test_cifar_incomplete_and_corrupt(tmp_path: Path) -> None:
    _make_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    os.remove(folder / "data_batch_3")
    with pytest.raises(DataError, match="data_batch_3"):
        load_dataset("cifar10", data_dir=tmp_path)
    _dump(folder / "data_batch_3", {b"data": np.zeros((5, 100), np.uint8), b"labels": [0] * 5})
    with pytest.raises(DataError, match="3072"):
        load_dataset("cifar10", data_dir=tmp_path)
    _dump(folder / "data_batch_3", {b"data": np.zeros((5, 3072), np.uint8)})
    with pytest.raises(DataError, match="labels"):
        load_dataset("cifar10", data_dir=tmp_path)
    _dump(folder / "data_batch_3", {b"data": np.zeros((5, 3072), np.uint8), b"labels": [0, 1, 2, 3, 10]})
    with pytest.raises(DataError, match="10"):
        load_dataset("cifar10", data_dir=tmp_path)


class _Evil:
    def __reduce__(self) -> tuple:
        return (os.getcwd, ())


def test_cifar_pickle_refuses_arbitrary_globals(tmp_path: Path) -> None:
    _make_cifar10(tmp_path)
    _dump(tmp_path / "cifar-10-batches-py" / "test_batch", {b"data": _Evil(), b"labels": []})
    with pytest.raises(DataError, match="refusing"):
        load_dataset("cifar10", data_dir=tmp_path)


def test_digits_split_sizes_formula() -> None:
    # documented rounding: test = round(0.3 N), val = round(val_fraction N)
    assert math.floor(0.3 * 1797 + 0.5) == 539 and math.floor(0.1 * 1797 + 0.5) == 180


# ----------------------------------------------------------------------------- inputs that used to fail late or silently


def test_npz_single_class_is_an_error(tmp_path: Path) -> None:
    arrays = _good_arrays()
    arrays.update(y_train=np.full(30, 2), y_val=np.full(6, 2), y_test=np.full(9, 2))
    with pytest.raises(DataError) as ei:
        load_dataset(_write_npz(tmp_path / "one.npz", **arrays))
    msg = str(ei.value)
    assert "y_train" in msg and "single class" in msg and "\n" not in msg


def test_npz_huge_features_standardise_without_overflow(tmp_path: Path) -> None:
    """Features around 1e300 (x**2 overflows float64) still standardise exactly, with no warning."""
    arrays = _good_arrays()
    small = load_dataset(_write_npz(tmp_path / "small.npz", **arrays))
    huge = {k: v * 1e300 if k.startswith("x_") else v for k, v in arrays.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d = load_dataset(_write_npz(tmp_path / "huge.npz", **huge))
    for split in ("x_train", "x_val", "x_test"):
        assert torch.isfinite(getattr(d, split)).all()
        torch.testing.assert_close(getattr(d, split), getattr(small, split), atol=1e-5, rtol=1e-5)


def test_npz_features_that_cannot_be_standardised_name_the_problem(tmp_path: Path) -> None:
    arrays = _good_arrays()
    arrays["x_test"] = arrays["x_test"] * 1e300  # finite, but 1e300 standard deviations away: no float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DataError) as ei:
            load_dataset(_write_npz(tmp_path / "far.npz", **arrays))
    msg = str(ei.value)
    assert "x_test" in msg and "standardis" in msg and "\n" not in msg


def test_float_labels_print_as_plain_values(tmp_path: Path) -> None:
    arrays = _good_arrays()
    arrays["y_train"] = np.r_[0.5, _labels(29, 3)].astype(np.float64)
    with pytest.raises(DataError) as ei:
        load_dataset(_write_npz(tmp_path / "half.npz", **arrays))
    assert "label 0.5;" in str(ei.value) and "np." not in str(ei.value)
