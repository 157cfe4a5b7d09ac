"""Names a run is chosen by: datasets, models, lr schedules, export formats (torch-free).

The command line lists and checks these without loading torch; the modules that implement each
name import their tuple from here and re-export it (``cigl_bayes.data.DATASET_NAMES``,
``cigl_bayes.models.MODEL_NAMES``, ``cigl_bayes.dgp.compare.COMPARE_DATASETS``, ...).
"""

from __future__ import annotations

#: Small tabular sets (:mod:`cigl_bayes.data.tabular`); the regression ones (``task == "regression"``)
#: serve the deep-GP comparison.
TABULAR_CLASSIFICATION_NAMES: tuple[str, ...] = ("breast_cancer", "wine")
REGRESSION_DATASET_NAMES: tuple[str, ...] = ("diabetes", "gap-toy")
TABULAR_DATASET_NAMES = TABULAR_CLASSIFICATION_NAMES + REGRESSION_DATASET_NAMES
#: OOD sets whose names start with this are near-OOD (held-out classes); the others are far-OOD.
NEAR_OOD_PREFIX = "near-"
#: Open-set splits (classes 0-5 known, the test images of 6-9 held out: :mod:`cigl_bayes.data.datasets`).
OPEN_SET_NAMES: tuple[str, ...] = ("digits-open", "digits-hard-open", "mnist-open", "mnist-hard-open")
#: Real offline images (28x28 MNIST needs the ``mnist`` extra), their harder regimes and open-set splits.
IMAGE_BENCHMARK_NAMES: tuple[str, ...] = ("digits", "digits-hard", "mnist", "mnist-hard", *OPEN_SET_NAMES)
#: Classification sets of :func:`cigl_bayes.data.load_dataset` (besides ``npz:PATH``).
DATASET_NAMES: tuple[str, ...] = (*IMAGE_BENCHMARK_NAMES, "cifar10", "cifar100", *TABULAR_CLASSIFICATION_NAMES)
#: Datasets of the network-vs-deep-GP comparison (:mod:`cigl_bayes.dgp.compare`).
COMPARE_DATASETS: tuple[str, ...] = ("gap-toy", "diabetes", "digits", "breast_cancer", "wine")

#: Architectures of :func:`cigl_bayes.models.build_model`.
MODEL_NAMES: tuple[str, ...] = ("mlp", "cnn", "resnet18", "resnet50", "wrn-22-2", "vgg19")

#: Learning-rate schedules of :func:`cigl_bayes.train.build_lr_scheduler`.
LR_SCHEDULES: tuple[str, ...] = ("step", "cosine")

#: Sparse file formats of :func:`cigl_bayes.export.export_sparse` (``cigl_bayes.export.FORMATS``).
EXPORT_FORMATS: tuple[str, ...] = ("bitmask", "csr")
