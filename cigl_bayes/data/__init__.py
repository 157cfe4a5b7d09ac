"""Data: dataset loading, OOD / shifted input sets, device-resident batching and on-device augmentation."""

from .augment import AUGMENTATIONS, apply_crop_flip, augmentation_for, random_affine_noise, random_crop_flip, sample_crop_flip_params
from .datasets import DATASET_NAMES, NEAR_OOD_HELD_OUT, OPEN_SET_NAMES, REGRESSION_DATASET_NAMES, DataError, DataSplits, load_dataset
from .loader import DeviceLoader
from .shifts import DIGITS_SHIFTS, normalise_inputs, ood_sets, unnormalise_inputs

__all__ = [
    "AUGMENTATIONS",
    "DATASET_NAMES",
    "NEAR_OOD_HELD_OUT",
    "OPEN_SET_NAMES",
    "REGRESSION_DATASET_NAMES",
    "DIGITS_SHIFTS",
    "DataError",
    "DataSplits",
    "DeviceLoader",
    "apply_crop_flip",
    "augmentation_for",
    "load_dataset",
    "normalise_inputs",
    "ood_sets",
    "random_affine_noise",
    "random_crop_flip",
    "sample_crop_flip_params",
    "unnormalise_inputs",
]
