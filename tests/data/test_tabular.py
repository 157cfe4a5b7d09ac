"""The small tabular sets: split sizes, standardisation, targets in data units, the gap toy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import datasets as sk

from cigl_bayes.config import recipe
from cigl_bayes.data import load_dataset
from cigl_bayes.data.tabular import GAP_TOY_GAP, GAP_TOY_NOISE, gap_toy_function
from cigl_bayes.methods import assemble, validate

SIZES = {"breast_cancer": (341, 57, 171, 30), "wine": (107, 18, 53, 13), "diabetes": (265, 44, 133, 10), "gap-toy": (160, 40, 200, 1)}


@pytest.mark.parametrize("name", list(SIZES))
def test_splits_sizes_and_standardisation(name: str) -> None:
    data = load_dataset(name)
    n_train, n_val, n_test, features = SIZES[name]
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (n_train, n_val, n_test)
    assert data.input_shape == (features,)
    torch.testing.assert_close(data.x_train.double().mean(0), torch.zeros(features, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(data.x_train.double().std(0, unbiased=False), torch.ones(features, dtype=torch.float64), atol=1e-5, rtol=0)
    again = load_dataset(name)
    assert torch.equal(again.x_test, data.x_test)  # fixed by split_seed
    assert not torch.equal(load_dataset(name, split_seed=1).x_test, data.x_test)


@pytest.mark.parametrize("name, loader", [("breast_cancer", sk.load_breast_cancer), ("wine", sk.load_wine)])
def test_classification_sets_are_stratified_partitions(name: str, loader) -> None:
    data = load_dataset(name)
    assert data.task == "classification" and data.y_train.dtype == torch.int64
    target = loader().target
    assert data.num_classes == target.max() + 1
    counts = np.bincount(np.concatenate([data.y_train, data.y_val, data.y_test]))
    np.testing.assert_array_equal(counts, np.bincount(target))  # every example exactly once
    share = np.bincount(data.y_test.numpy()) / len(data.y_test)
    np.testing.assert_allclose(share, np.bincount(target) / len(target), atol=0.02)


def test_diabetes_targets_convert_back_to_data_units() -> None:
    data = load_dataset("diabetes")
    assert data.is_regression and data.num_classes == 1 and data.y_train.dtype == torch.float32
    raw = torch.cat([data.y_train, data.y_val, data.y_test]).double() * data.target_std + data.target_mean
    np.testing.assert_allclose(np.sort(raw.numpy()), np.sort(sk.load_diabetes().target), atol=1e-4)
    assert data.y_train.double().mean().item() == pytest.approx(0.0, abs=1e-6)


def test_gap_toy_trains_outside_the_gap_and_tests_inside_it() -> None:
    data = load_dataset("gap-toy")
    x = {k: getattr(data, f"x_{k}").reshape(-1).double() * data.std[0] + data.mean[0] for k in ("train", "val", "test")}
    in_gap = {k: ((v > GAP_TOY_GAP[0]) & (v < GAP_TOY_GAP[1])) for k, v in x.items()}
    assert not in_gap["train"].any() and not in_gap["val"].any()
    assert in_gap["test"].float().mean() > 0.15
    y = data.y_train.double() * data.target_std + data.target_mean
    residual = y - torch.from_numpy(gap_toy_function(x["train"].numpy()))
    assert residual.std().item() == pytest.approx(GAP_TOY_NOISE, rel=0.2)


def test_regression_sets_refused_by_classifier_runs_and_classifier_only_methods() -> None:
    with pytest.raises(ValueError, match="dgp-compare --dataset diabetes"):
        validate(recipe("diabetes").with_(method="cigl"))
    validate(recipe("diabetes").with_(method="cigl"), regression_ok=True)
    for method in ("moon", "rigl-ts", "cigl-svi", "cigl-pred-avg"):
        with pytest.raises(ValueError, match="classification only"):
            validate(recipe("gap-toy").with_(method=method), regression_ok=True)
        with pytest.raises(ValueError, match="classification only"):
            assemble(recipe("gap-toy").with_(method=method), load_dataset("gap-toy"), progress=False)


def test_cigl_regression_learns_the_gap_toy() -> None:
    """Squared error on the standardised targets falls far below their variance (1)."""
    data = load_dataset("gap-toy")
    parts = assemble(recipe("gap-toy").with_(method="cigl", optim__epochs=40), data, progress=False)
    history = parts.trainer.fit()
    assert parts.model(data.x_train[:4]).shape == (4, 1)
    assert history.loss[-1] < 0.15 < history.loss[0]
