"""Data: dataset loading, OOD / shifted input sets, device-resident batching and on-device augmentation."""

from .augment import apply_crop_flip, random_crop_flip, sample_crop_flip_params
from .datasets import DATASET_NAMES, REGRESSION_DATASET_NAMES, DataError, DataSplits, load_dataset
from .loader import DeviceLoader
from .shifts import DIGITS_SHIFTS, normalise_inputs, ood_sets, unnormalise_inputs

__all__ = [
    "DATASET_NAMES",
    "REGRESSION_DATASET_NAMES",
    "DIGITS_SHIFTS",
    "DataError",
    "DataSplits",
    "DeviceLoader",
    "apply_crop_flip",
    "load_dataset",
    "normalise_inputs",
    "ood_sets",
    "random_crop_flip",
    "sample_crop_flip_params",
    "unnormalise_inputs",
]
