"""Model registry: ``build_model(name, input_shape, num_classes, dropout)`` over ``MODEL_NAMES``."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from ..names import MODEL_NAMES
from ._common import check_dropout, check_num_classes, check_shape
from .cnn import SmallCNN
from .mlp import MLP
from .resnet import resnet18, resnet50
from .vgg import vgg19
from .wrn import wrn_22_2

__all__ = ["MODEL_NAMES", "build_model"]

#: One builder per ``MODEL_NAMES`` entry (the names live, torch-free, in :mod:`cigl_bayes.names`).
_BUILDERS: dict[str, Callable[[tuple[int, ...], int, float], nn.Module]] = {
    "mlp": lambda s, k, p: MLP(s, k, dropout=p),
    "cnn": lambda s, k, p: SmallCNN(s, k, dropout=p),
    "resnet18": resnet18,
    "resnet50": resnet50,
    "wrn-22-2": wrn_22_2,
    "vgg19": vgg19,
}


def build_model(name: str, input_shape: Sequence[int], num_classes: int, dropout: float = 0.0) -> nn.Module:
    """Build model ``name`` (one of ``MODEL_NAMES``) for one-example shape ``input_shape`` and ``num_classes`` logits.

    ``dropout`` > 0 adds ``nn.Dropout`` (after each MLP hidden activation, before the classifier otherwise);
    ``dropout == 0`` adds no Dropout module. Raises ``ValueError`` on an unknown name or bad arguments.
    """
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    shape = check_shape(input_shape)
    return _BUILDERS[key](shape, check_num_classes(num_classes), check_dropout(dropout))
