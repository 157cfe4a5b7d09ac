"""CigL's parts: the random mask Z and weight-and-mask averaging with BN recalibration."""

from .averaging import SnapshotEnsemble, SnapshotAveraging, WeightAverager, batches_of, recalibrate_batchnorm, training_batches
from .random_mask import RandomMask, ZMaskedUpdate, mask_update_by_z

__all__ = ["SnapshotEnsemble", "RandomMask", "SnapshotAveraging", "mask_update_by_z", "ZMaskedUpdate", "WeightAverager", "batches_of", "recalibrate_batchnorm", "training_batches"]
