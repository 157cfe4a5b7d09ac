"""Data: dataset loading, device-resident batching and on-device augmentation."""

from .augment import apply_crop_flip, random_crop_flip, sample_crop_flip_params
from .datasets import DATASET_NAMES, DataError, DataSplits, load_dataset
from .loader import DeviceLoader

__all__ = [
    "DATASET_NAMES",
    "DataError",
    "DataSplits",
    "DeviceLoader",
    "apply_crop_flip",
    "load_dataset",
    "random_crop_flip",
    "sample_crop_flip_params",
]
