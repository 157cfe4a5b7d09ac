"""Small offline tabular sets for the deep-GP comparison: scikit-learn's bundled files and a 1-D toy.

Classification: ``breast_cancer`` (569 x 30, 2 classes) and ``wine`` (178 x 13, 3 classes).
Regression: ``diabetes`` (442 x 10) and ``gap-toy``, a 1-D function observed on two intervals
with a gap between them, where a good predictive shows "in-between" uncertainty.

Splits: 30 % test, ``val_fraction`` of the whole for validation (stratified for classification),
fixed by ``split_seed``. Features are standardised with training statistics; regression targets
are standardised too (``DataSplits.target_mean`` / ``target_std`` convert back to data units).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from .datasets import (
    REGRESSION_DATASET_NAMES,
    TABULAR_DATASET_NAMES,
    DataError,
    DataSplits,
    _make_splits,
    _round_half_up,
    _standardise,
    _stratified_take,
    _train_stats,
)

TEST_FRACTION = 0.3

#: The gap toy: x on [-2, -0.5] U [0.5, 2] for training, test on the whole of [-2, 2].
GAP_TOY_RANGE = (-2.0, 2.0)
GAP_TOY_GAP = (-0.5, 0.5)
GAP_TOY_NOISE = 0.1


def gap_toy_function(x: np.ndarray) -> np.ndarray:
    """The gap toy's noiseless function :math:`f(x) = \\sin(2x) + 0.3x`."""
    return np.sin(2.0 * x) + 0.3 * x


def load_tabular(name: str, val_fraction: float, split_seed: int) -> DataSplits:
    """Load one of ``TABULAR_DATASET_NAMES`` (see module docstring)."""
    if name == "gap-toy":
        return _gap_toy(split_seed)
    from sklearn import datasets as sk  # files shipped with scikit-learn: nothing is downloaded

    loaders = {"breast_cancer": sk.load_breast_cancer, "wine": sk.load_wine, "diabetes": sk.load_diabetes}
    if name not in loaders:
        raise DataError(f"unknown tabular dataset {name!r}; choose one of {', '.join(TABULAR_DATASET_NAMES)}")
    bunch = loaders[name]()
    x = np.asarray(bunch.data, dtype=np.float64)
    y = np.asarray(bunch.target)
    rng = np.random.default_rng(split_seed)
    n = len(y)
    regression = name in REGRESSION_DATASET_NAMES
    strata = np.zeros(n, dtype=np.int64) if regression else y  # one stratum: a plain random split
    rest, test = _stratified_take(strata, _round_half_up(TEST_FRACTION * n), rng)
    train_rel, val_rel = _stratified_take(strata[rest], max(1, _round_half_up(val_fraction * n)), rng)
    return _splits(name, x, y, rest[train_rel], rest[val_rel], test, regression)


def _gap_toy(split_seed: int) -> DataSplits:
    """160 train / 40 val points on the two intervals, 200 test points uniform on the whole range."""
    rng = np.random.default_rng([split_seed, 1729])
    lo, hi = GAP_TOY_RANGE
    a, b = GAP_TOY_GAP

    def on_intervals(n: int) -> np.ndarray:
        left = rng.uniform(lo, a, size=n // 2)
        right = rng.uniform(b, hi, size=n - n // 2)
        return np.concatenate([left, right])

    x = np.concatenate([on_intervals(160), on_intervals(40), rng.uniform(lo, hi, size=200)])[:, None]
    y = gap_toy_function(x[:, 0]) + GAP_TOY_NOISE * rng.standard_normal(x.shape[0])
    index = np.arange(x.shape[0])
    return _splits("gap-toy", x, y, index[:160], index[160:200], index[200:], regression=True)


def _splits(name: str, x: np.ndarray, y: np.ndarray, train: np.ndarray, val: np.ndarray, test: np.ndarray, regression: bool) -> DataSplits:
    stats = _train_stats(x[train])
    xs = _standardise(x[train], x[val], x[test], stats=stats)
    if not regression:
        classes = int(y.max()) + 1
        return _make_splits(name, xs, [y[train], y[val], y[test]], classes, augment=False, stats=stats, raw_scale=1.0)
    y = y.astype(np.float64)
    target_mean, target_std = float(y[train].mean()), float(y[train].std())
    ys = [torch.from_numpy(((y[i] - target_mean) / target_std).astype(np.float32)) for i in (train, val, test)]
    splits = _make_splits(name, xs, [np.zeros(len(i), dtype=np.int64) for i in (train, val, test)], 1,
                          augment=False, stats=stats, raw_scale=1.0)
    return dataclasses.replace(splits, y_train=ys[0], y_val=ys[1], y_test=ys[2], task="regression",
                               target_mean=target_mean, target_std=target_std)
