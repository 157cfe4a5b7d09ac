"""The method registry and the checks of a run's names, torch-free.

A method's name -> the parts it is made of (:func:`cigl_bayes.methods.assemble` wires them;
``cigl_bayes.methods`` re-exports this module's names). :func:`validate` checks a config before
anything is loaded or written and imports torch only to ask whether a requested CUDA device is
available, so the command line's help texts and input errors need no torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .config import RunConfig
from .names import DATASET_NAMES, MODEL_NAMES, REGRESSION_DATASET_NAMES


@dataclass(frozen=True)
class Method:
    """The parts that make a method (see ``METHODS``)."""

    description: str
    sparse: bool = True
    update: str = "rigl"              # static | set | rigl
    random_mask: bool = False         # CigL's Bernoulli mask Z, resampled every step
    averaging: str | None = None      # None | "weights" (WMA) | "predictions"
    mc_dropout: bool = False          # unit dropout in training, MC average at test time
    temperature: bool = False         # temperature scaling fitted on the validation split
    svi: bool = False                 # train -ELBO/N of the Pyro model + hierarchical guide
    unknown_class: bool = False       # MOON family: K+1 outputs, the last one "unknown"
    moon_loss: bool = False           # MOON's re-weighted loss with auto-tuned alpha (else cross-entropy)
    moon_schedule: bool = False       # the MOON family's lr schedule and averaging (``MoonConfig.recipe``)


#: The parts every MOON arm shares.
_MOON = {"unknown_class": True, "moon_loss": True, "moon_schedule": True}

METHODS: dict[str, Method] = {
    "dense": Method("dense network, no sparsity", sparse=False),
    "static": Method("fixed random ERK support", update="static"),
    "set": Method("SET: drop smallest |w|, grow at random", update="set"),
    "rigl": Method("RigL: drop smallest |w|, grow largest |grad|"),
    "rigl-wdp": Method("RigL + weight dropout: random mask Z in training, no averaging, evaluated without Z", random_mask=True),
    "rigl-mcdrop": Method("RigL + unit dropout, MC dropout at test time", mc_dropout=True),
    "rigl-ts": Method("RigL + temperature scaling on the validation split", temperature=True),
    "rigl-avg": Method("MOON ablation: RigL + late weight averaging with MOON's schedule, K outputs",
                       averaging="weights", moon_schedule=True),
    "cigl": Method("CigL: RigL + random mask Z + weight-and-mask averaging", random_mask=True, averaging="weights"),
    "cigl-no-rm": Method("CigL ablation 'w/o RM': RigL + weight averaging, no random mask", averaging="weights"),
    "cigl-pred-avg": Method("CigL ablation 'w/o WMA': average snapshot predictions", random_mask=True, averaging="predictions"),
    "cigl-svi": Method("CigL as a Pyro model/guide trained by SVI (-ELBO), with WMA and MC predictive",
                       random_mask=True, averaging="weights", svi=True),
    "moon": Method("MOON: RigL + unknown (K+1) class, re-weighted loss, late weight averaging", averaging="weights", **_MOON),
    "moon-set": Method("MOON on a SET backbone", update="set", averaging="weights", **_MOON),
    "moon-cigl": Method("MOON with CigL's random mask (as in the released code)", random_mask=True, averaging="weights",
                        **_MOON),
    "moon-vote": Method("MOON with prediction voting over the late snapshots", averaging="predictions", **_MOON),
    "moon-ce": Method("MOON ablation: K+1 outputs trained by plain cross-entropy, late weight averaging",
                      averaging="weights", **{**_MOON, "moon_loss": False}),
    "moon-no-avg": Method("MOON ablation: MOON's loss, no averaging", **_MOON),
}

#: ``torch.device``'s grammar for the two supported kinds: ``cpu``, ``cuda``, ``cuda:N``.
_DEVICE = re.compile(r"(cpu|cuda)(:(0|[1-9][0-9]*))?")


def get_method(name: str) -> Method:
    """The registered method ``name`` or a ``ValueError`` listing the choices."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}")
    return METHODS[name]


def validate(config: RunConfig, regression_ok: bool = False) -> None:
    """Check names before anything is loaded or written.

    Regression sets are refused unless ``regression_ok`` (``runner.run`` evaluates classifiers;
    the deep-GP comparison evaluates regression predictives).
    """
    method = get_method(config.method)
    if config.model.name.lower() not in MODEL_NAMES:
        raise ValueError(f"unknown model {config.model.name!r}; choose one of: {', '.join(MODEL_NAMES)}")
    if config.data.dataset in REGRESSION_DATASET_NAMES:
        if not regression_ok:
            raise ValueError(f"{config.data.dataset!r} is a regression set: train/compare/ood evaluate classifiers; "
                             f"use `cigl-bayes dgp-compare --dataset {config.data.dataset}`")
        check_regression_method(config.method, method)
    elif not (config.data.dataset in DATASET_NAMES or config.data.dataset.startswith(("npz:", "synthetic:"))):
        raise ValueError(f"unknown dataset {config.data.dataset!r}; choose one of {', '.join(DATASET_NAMES)} or npz:PATH")
    if method.moon_loss:
        check_warmup(config.moon.warmup_epochs, config.optim.epochs)
    check_device(config.device)


def check_device(device: str) -> None:
    """``cpu``, or ``cuda`` / ``cuda:N`` when CUDA is available (``ValueError`` naming the fix otherwise)."""
    match = _DEVICE.fullmatch(str(device))
    if match is None:
        raise ValueError(f"unknown device {device!r}; use --device cpu or --device cuda (cuda:N for GPU N)")
    if match[1] == "cuda":
        import torch  # only a CUDA request needs it

        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but CUDA is not available; use --device cpu")


def check_warmup(warmup_epochs: int, epochs: int) -> None:
    """MOON's plain cross-entropy warm-up must end before training does (``ValueError`` if not)."""
    if not 0 <= warmup_epochs < epochs:
        raise ValueError(f"MOON's warm-up ({warmup_epochs} epochs) must be shorter than training ({epochs} epochs); "
                         "raise --epochs or lower the warm-up (--moon-warmup)")


def _handles_regression(method: Method) -> bool:
    """Regression needs a real-valued output: no unknown class, temperature, softmax averaging or SVI."""
    return not (method.unknown_class or method.temperature or method.svi or method.averaging == "predictions")


def check_regression_method(name: str, method: Method) -> None:
    if not _handles_regression(method):
        supported = [k for k, m in METHODS.items() if _handles_regression(m)]
        raise ValueError(f"method {name!r} is for classification only; for regression choose one of: {', '.join(supported)}")
