"""Run configuration as data: one dataclass per concern, validated on construction.

The CLI builds these; library users may build them directly. ``recipe(dataset)`` gives the
defaults per dataset: the papers' CIFAR recipe, and a short one for the small embedded data.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .names import LR_SCHEDULES, REGRESSION_DATASET_NAMES, TABULAR_DATASET_NAMES
from .sparse.density import DISTRIBUTIONS, check_density


PRECISIONS = ("fp32", "bf16")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass(frozen=True)
class DataConfig:
    """Which data and how it is batched."""

    dataset: str = "digits"
    data_dir: str | None = None
    batch_size: int = 64
    val_fraction: float = 0.1

    def __post_init__(self) -> None:
        _require(self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture (see ``cigl_bayes.models.MODEL_NAMES``) and unit dropout (MC-dropout baseline)."""

    name: str = "cnn"
    dropout: float = 0.1


@dataclass(frozen=True)
class SparsityConfig:
    """Global density, its layer distribution, and the drop/grow schedule (dT, alpha_0, T_end)."""

    density: float = 0.1
    distribution: str = "erk"
    update_every: int = 100
    drop_fraction: float = 0.3
    end_fraction: float = 0.75

    def __post_init__(self) -> None:
        check_density(self.density)
        _require(self.distribution in DISTRIBUTIONS, f"unknown distribution {self.distribution!r}; choose one of {DISTRIBUTIONS}")
        _require(self.update_every >= 1, f"update_every (dT) must be >= 1, got {self.update_every}")
        _require(0.0 <= self.drop_fraction <= 1.0, f"drop_fraction must be in [0, 1], got {self.drop_fraction}")
        _require(0.0 <= self.end_fraction <= 1.0, f"end_fraction must be in [0, 1], got {self.end_fraction}")


@dataclass(frozen=True)
class RandomMaskConfig:
    """CigL's Bernoulli mask: drop rate, rescaling, update masking.

    ``drop_rate``: a number in [0, 1), or ``"auto"``: chosen per run among ``auto_candidates`` by
    the validation NLL of pilot runs of ``auto_pilot_fraction`` of the epochs
    (:mod:`cigl_bayes.drop_rate`). Default 0.01, the released code's CIFAR-10 value: on the
    validation splits of digits-hard and mnist (MLP / CNN, densities 0.05 and 0.02) 0.01 had the
    lowest NLL of {0.01, 0.03, 0.1}, and 0.1 (the paper's text) under-fits small sparse networks.
    """

    drop_rate: float | str = 0.01
    rescale: bool = True
    mask_momentum: bool = False
    auto_candidates: tuple[float, ...] = (0.01, 0.03, 0.1)
    auto_pilot_fraction: float = 0.25

    def __post_init__(self) -> None:
        if isinstance(self.drop_rate, str):
            _require(self.drop_rate == "auto", f"drop rate must be a number in [0, 1) or 'auto', got {self.drop_rate!r}")
        else:
            _require(0.0 <= self.drop_rate < 1.0, f"drop rate must be in [0, 1), got {self.drop_rate}")
        object.__setattr__(self, "auto_candidates", tuple(float(r) for r in self.auto_candidates))
        _require(bool(self.auto_candidates) and all(0.0 <= r < 1.0 for r in self.auto_candidates),
                 f"auto drop-rate candidates must be numbers in [0, 1), got {self.auto_candidates}")
        _require(0.0 < self.auto_pilot_fraction <= 1.0, f"auto pilot fraction must be in (0, 1], got {self.auto_pilot_fraction}")


@dataclass(frozen=True)
class AveragingConfig:
    """Weight(-and-mask) averaging from ``start_fraction * epochs`` on; snapshot mask sampled or expected.

    ``hold_lr``: None lets the recipe's lr schedule run on through the averaging epochs (a cosine
    then reaches ~0 and the snapshots are nearly identical); a number ``h`` holds the lr at
    ``h x lr`` while averaging, SWA-style as in the released CigL / MOON code (the cosine is
    compressed to end at ``h`` where averaging starts). Only methods that average are affected.

    ``snapshot_fraction``: None folds one snapshot at the end of each averaging epoch; ``f``
    folds ``max(1, round(f x steps per epoch))`` snapshots evenly spaced over each averaging
    epoch (the released MOON code folds every step of the first 10 %: ~39 per CIFAR epoch), with
    BatchNorm recomputed once at the epoch's end.
    """

    start_fraction: float = 0.8
    sample_mask: bool = True
    hold_lr: float | None = None
    snapshot_fraction: float | None = None

    def __post_init__(self) -> None:
        _require(0.0 <= self.start_fraction < 1.0, f"averaging start fraction must be in [0, 1), got {self.start_fraction}")
        _require(self.hold_lr is None or 0.0 < self.hold_lr <= 1.0, f"averaging hold_lr must be in (0, 1] or None, got {self.hold_lr}")
        _require(self.snapshot_fraction is None or 0.0 < self.snapshot_fraction <= 1.0,
                 f"averaging snapshot_fraction must be in (0, 1] or None, got {self.snapshot_fraction}")


@dataclass(frozen=True)
class OptimConfig:
    """SGD (Nesterov) with warm-up and piecewise-constant (or cosine) decay, per iteration."""

    epochs: int = 60
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    warmup_epochs: int = 5
    schedule: str = "step"
    decay_every: int = 20_000
    decay_factor: float = 0.5

    def __post_init__(self) -> None:
        _require(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        _require(self.lr > 0 and math.isfinite(self.lr), f"learning rate must be a positive number, got {self.lr}")
        _require(self.weight_decay >= 0, f"weight decay must be >= 0, got {self.weight_decay}")
        _require(self.warmup_epochs >= 0, f"warm-up epochs must be >= 0, got {self.warmup_epochs}")
        _require(self.schedule in LR_SCHEDULES, f"unknown lr schedule {self.schedule!r}; choose one of {LR_SCHEDULES}")
        _require(self.decay_every >= 1, f"decay_every must be >= 1 iteration, got {self.decay_every}")


@dataclass(frozen=True)
class BayesConfig:
    """SVI path: KL estimator, prior precision l^2 (None: matched to the weight decay), slab scale,
    and a learnable keep probability (concrete dropout, needs ``kl="gal"``)."""

    kl: str = "mc"
    prior_precision: float | None = None
    slab_scale: float = 1e-3
    learn_keep: bool = False
    temperature: float = 0.1

    def __post_init__(self) -> None:
        _require(self.kl in ("mc", "gal"), f"unknown KL mode {self.kl!r}; choose mc or gal")
        _require(not self.learn_keep or self.kl == "gal", "a learnable keep probability needs --kl gal (its -K H(p) term)")
        _require(self.temperature > 0, f"relaxation temperature must be > 0, got {self.temperature}")
        _require(self.prior_precision is None or self.prior_precision > 0, f"prior precision must be > 0, got {self.prior_precision}")
        _require(self.slab_scale > 0, f"slab scale must be > 0, got {self.slab_scale}")


MOON_RECIPES = ("released", "recipe")


@dataclass(frozen=True)
class MoonConfig:
    """MOON: warm-up epochs of plain cross-entropy, alpha auto-tuner (rho, alpha_final, EWMA rate),
    and the schedule of the MOON family (``Method.moon_schedule``).

    ``recipe="released"`` (default, the released code's): no lr warm-up; the lr is
    ``lr x [f + (p - f) (1 + cos(pi t / T_avg)) / 2]`` with ``p = lr_peak`` (1.2), ``f = lr_floor``
    (0.08) over the steps before averaging starts (``T_avg``), then held at ``lr x f`` while
    averaging, which folds ``snapshot_fraction`` (10 %) of each epoch's steps, evenly spaced.
    ``recipe="recipe"``: the dataset recipe's schedule and averaging settings, unchanged.
    """

    warmup_epochs: int = 5
    rho: float = 64.0
    alpha_final: float = 1.0
    ewma: float = 0.05
    recipe: str = "released"
    lr_peak: float = 1.2
    lr_floor: float = 0.08
    snapshot_fraction: float = 0.1

    def __post_init__(self) -> None:
        _require(self.warmup_epochs >= 0, f"MOON warm-up epochs must be >= 0, got {self.warmup_epochs}")
        _require(self.recipe in MOON_RECIPES, f"unknown MOON recipe {self.recipe!r}; choose one of {MOON_RECIPES}")
        _require(0 < self.lr_floor <= self.lr_peak, f"MOON lr factors need 0 < lr_floor <= lr_peak, got {self.lr_floor}, {self.lr_peak}")
        _require(0.0 < self.snapshot_fraction <= 1.0, f"MOON snapshot_fraction must be in (0, 1], got {self.snapshot_fraction}")
        _require(self.rho > 0, f"MOON rho must be > 0, got {self.rho}")
        _require(0 < self.ewma <= 1, f"MOON EWMA rate must be in (0, 1], got {self.ewma}")


@dataclass(frozen=True)
class EvalConfig:
    """MC predictive samples (random masks / dropout) and batch size for evaluation."""

    mc_samples: int = 20
    batch_size: int = 1024

    def __post_init__(self) -> None:
        _require(self.mc_samples >= 1, f"mc_samples must be >= 1, got {self.mc_samples}")


@dataclass(frozen=True)
class RunConfig:
    """Everything one training run needs."""

    method: str = "cigl"
    seed: int = 0
    device: str = "cpu"
    precision: str = "fp32"   # or "bf16": forward and loss under torch.autocast(bfloat16) in training
    compile: bool = False     # train through torch.compile(model) (plain-loss methods)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sparsity: SparsityConfig = field(default_factory=SparsityConfig)
    random_mask: RandomMaskConfig = field(default_factory=RandomMaskConfig)
    averaging: AveragingConfig = field(default_factory=AveragingConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    bayes: BayesConfig = field(default_factory=BayesConfig)
    moon: MoonConfig = field(default_factory=MoonConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        _require(self.precision in PRECISIONS, f"unknown precision {self.precision!r}; choose one of {PRECISIONS}")

    def to_dict(self) -> dict[str, Any]:
        """Nested plain data, one mapping per section (``from_dict`` reads it back to an equal config)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RunConfig":
        """A config from a (possibly partial) nested mapping: unknown names and wrong types fail with
        one line naming the field (:func:`cigl_bayes.config_io.config_from_dict`); missing fields
        keep their defaults."""
        from .config_io import config_from_dict

        return config_from_dict(values)

    def with_(self, **changes: Any) -> "RunConfig":
        """A copy with top-level fields or ``section__field`` entries replaced (``optim__lr=0.05``)."""
        top = {k: v for k, v in changes.items() if "__" not in k}
        nested: dict[str, dict[str, Any]] = {}
        for key, value in changes.items():
            if "__" in key:
                section, name = key.split("__", 1)
                nested.setdefault(section, {})[name] = value
        sections = {s: replace(getattr(self, s), **v) for s, v in nested.items()}
        return replace(self, **top, **sections)


def recipe(dataset: str, model: str | None = None) -> RunConfig:
    """Default configuration for ``dataset`` (and ``model``, where the recipe depends on it).

    CIFAR-10/100: the CigL paper's recipe (ResNet-50, 250 epochs, batch 128, lr 0.1, 5-epoch
    warm-up, x0.5 (CIFAR-100: x0.6) every 20k iterations, wd 1e-4, dT = 100, averaging from
    epoch 200); with ``model="wrn-22-2"`` the paper's WRN recipe: wd 5e-4, decay every 30k. Small data (digits, mnist, their ``-hard`` regimes, npz): a short run with the same
    structure, scaled down (a CNN; an MLP 784-256-256-10 on the 28x28 MNIST sets).
    Tabular sets (breast_cancer, wine, diabetes, gap-toy): an MLP, batch 32, 200 epochs; the
    regression sets at lr 0.005 (squared error on a BN-MLP's correlated features diverges at 0.05).
    """
    if dataset in TABULAR_DATASET_NAMES:
        regression = dataset in REGRESSION_DATASET_NAMES
        return RunConfig(
            data=DataConfig(dataset=dataset, batch_size=32),
            model=ModelConfig(name=model or "mlp"),
            sparsity=SparsityConfig(update_every=25),
            optim=OptimConfig(epochs=200, lr=0.005 if regression else 0.05, weight_decay=5e-4, warmup_epochs=5, schedule="cosine"),
        )
    if dataset in ("cifar10", "cifar100"):
        wrn = model is not None and model.lower() == "wrn-22-2"
        return RunConfig(
            data=DataConfig(dataset=dataset, batch_size=128),
            model=ModelConfig(name=model or "resnet50"),
            sparsity=SparsityConfig(update_every=100),
            optim=OptimConfig(epochs=250, lr=0.1, weight_decay=5e-4 if wrn else 1e-4, warmup_epochs=5, schedule="step",
                              decay_every=30_000 if wrn else 20_000, decay_factor=0.6 if dataset == "cifar100" else 0.5),
        )
    config = RunConfig(
        data=DataConfig(dataset=dataset, batch_size=64),
        model=ModelConfig(name="mlp" if dataset.startswith("mnist") else "cnn"),
        sparsity=SparsityConfig(update_every=25),
        optim=OptimConfig(epochs=60, lr=0.05, weight_decay=5e-4, warmup_epochs=2, schedule="cosine"),
    )
    return config if model is None else config.with_(model__name=model)
