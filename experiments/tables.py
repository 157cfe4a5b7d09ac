"""The papers' CIFAR tables as data: the grid, the recipe overrides and the reported numbers.

``experiments/reproduce.py TABLE`` runs one of these. ``overrides`` are ``RunConfig.with_``
entries applied on top of ``cigl_bayes.config.recipe(dataset)``; ``reported`` holds the paper's
numbers as ``{metric: {method: {density: value}}}`` (accuracy as a fraction, like ours).
Sources: /work/shared/spec/cigl.md (CigL, ICLR 2023, mean of 3 runs) and moon.md (MOON, TMLR 2024).
"""

from __future__ import annotations

from typing import Any

SPARSITIES = (0.8, 0.9, 0.95, 0.99)
DENSITIES = (0.2, 0.1, 0.05, 0.01)  # = 1 - sparsity
CIGL_METHODS = ("rigl", "rigl-wdp", "rigl-mcdrop", "cigl")


def _by_density(values: tuple[float, ...], scale: float = 1.0) -> dict[float, float]:
    return {d: round(v * scale, 6) for d, v in zip(DENSITIES, values)}


def _acc(values: tuple[float, ...]) -> dict[float, float]:  # paper reports %; ours is a fraction
    return _by_density(values, 0.01)


# The CigL paper's CIFAR recipe (ResNet-50): 250 epochs, batch 128, SGD Nesterov lr 0.1, 5-epoch
# warm-up, step decay x0.5 (CIFAR-100 x0.6) every 20k iterations, wd 1e-4, dT 100, alpha0 0.3,
# T_end 0.75, ERK, random-mask drop rate 0.1 (paper), WMA from epoch 200 (0.8 of 250).
_CIGL_RECIPE: dict[str, Any] = dict(
    data__batch_size=128,
    optim__epochs=250, optim__lr=0.1, optim__warmup_epochs=5, optim__schedule="step",
    optim__decay_every=20_000, optim__decay_factor=0.5, optim__weight_decay=1e-4,
    sparsity__distribution="erk", sparsity__update_every=100, sparsity__drop_fraction=0.3, sparsity__end_fraction=0.75,
    random_mask__drop_rate=0.1, averaging__start_fraction=0.8,
)

TABLES: dict[str, dict[str, Any]] = {
    "cigl-c10-resnet50": dict(
        title="CigL paper: CIFAR-10, ResNet-50, sparsity 80/90/95/99 % (accuracy and ECE tables)",
        dataset="cifar10", model="resnet50", densities=DENSITIES, methods=CIGL_METHODS, seeds=(0, 1, 2), ood=False,
        overrides=dict(_CIGL_RECIPE),
        reported={
            "accuracy": {"rigl": _acc((94.02, 93.84, 93.19, 91.31)), "cigl": _acc((94.75, 94.56, 94.20, 92.42))},
            "ece": {
                "rigl": _by_density((0.0423, 0.0441, 0.0504, 0.0571)),
                "rigl-wdp": _by_density((0.0504, 0.0438, 0.0462, 0.0315)),
                "rigl-mcdrop": _by_density((0.0322, 0.0200, 0.0121, 0.0528)),
                "cigl": _by_density((0.0356, 0.0361, 0.0385, 0.0298)),
            },
        },
        smoke_model="cnn",
    ),
    "cigl-c100-resnet50": dict(
        title="CigL paper: CIFAR-100, ResNet-50, sparsity 80/90/95/99 % (accuracy table; no ECE table reported)",
        dataset="cifar100", model="resnet50", densities=DENSITIES, methods=CIGL_METHODS, seeds=(0, 1, 2), ood=False,
        overrides={**_CIGL_RECIPE, "optim__decay_factor": 0.6},
        reported={
            "accuracy": {"rigl": _acc((72.08, 71.90, 70.90, 65.57)), "cigl": _acc((76.84, 76.24, 74.71, 66.42))},
        },
        smoke_model="cnn",
    ),
    "cigl-c10-wrn22-2": dict(
        title="CigL paper: CIFAR-10, WRN-22-2, sparsity 80/90/95/99 % (accuracy and ECE)",
        dataset="cifar10", model="wrn-22-2", densities=DENSITIES, methods=CIGL_METHODS, seeds=(0, 1, 2), ood=False,
        overrides={**_CIGL_RECIPE, "optim__weight_decay": 5e-4, "optim__decay_every": 30_000},
        reported={
            "accuracy": {"rigl": _acc((93.12, 92.26, 91.02, 83.82)), "cigl": _acc((93.95, 93.05, 91.34, 83.96))},
            "ece": {
                "rigl": _by_density((0.0319, 0.0272, 0.0235, 0.0150)),
                "rigl-wdp": _by_density((0.0433, 0.0348, 0.0256, 0.0174)),
                "rigl-mcdrop": _by_density((0.0159, 0.0077, 0.0384, 0.1502)),
                "cigl": _by_density((0.0178, 0.0159, 0.0131, 0.0101)),
            },
        },
        smoke_model="cnn",
    ),
    # MOON (released code): ResNet-18, 100 epochs, batch 128, lr 0.1 cosine, wd 5e-4, density 0.1 ERK,
    # dT 80, mask updates until epoch 70, 5 warm-up epochs of CE, late weight averaging from epoch 80
    # (the lr warm-up is the base recipe's 5 epochs; the spec names none for MOON).
    # OOD sets: the other CIFAR's test split and SVHN, where present under --data-dir.
    "moon-c10-resnet18": dict(
        title="MOON paper: CIFAR-10, ResNet-18, density 0.1, OOD detection (MSP)",
        dataset="cifar10", model="resnet18", densities=(0.1,), methods=("rigl", "moon"), seeds=(0, 1, 2), ood=True,
        overrides=dict(
            data__batch_size=128,
            optim__epochs=100, optim__lr=0.1, optim__schedule="cosine", optim__weight_decay=5e-4,
            sparsity__distribution="erk", sparsity__update_every=80, sparsity__drop_fraction=0.3, sparsity__end_fraction=0.7,
            averaging__start_fraction=0.8, moon__warmup_epochs=5,
        ),
        # The paper's tables were not available (spec): only "up to 8.4 % better AUROC than the sparse baseline".
        reported={},
        reported_note="paper tables not available; abstract: MOON up to 8.4 % better AUROC than the sparse baseline",
        smoke_model="cnn",
    ),
}

#: Smoke settings (random data, a few steps): applied on top of the table's overrides.
SMOKE_OVERRIDES: dict[str, Any] = dict(
    data__batch_size=32, optim__epochs=2, optim__warmup_epochs=0, sparsity__update_every=2,
    eval__mc_samples=2, eval__batch_size=256, moon__warmup_epochs=1,
)
SMOKE_EXAMPLES = 256
SMOKE_DENSITY = 0.1
