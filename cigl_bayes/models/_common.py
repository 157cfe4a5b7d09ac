"""Shared validation helpers for model constructors."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

__all__ = ["check_dropout", "check_image_shape", "check_num_classes", "check_shape"]


def check_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    """Return ``input_shape`` as a tuple of positive ints or raise ``ValueError``."""
    try:
        shape = tuple(input_shape)
    except TypeError:
        raise ValueError(
            f"input_shape must be a tuple of positive ints such as (3, 32, 32) or (64,), got {input_shape!r}"
        ) from None
    if len(shape) == 0 or not all(
        isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape
    ):
        raise ValueError(
            f"input_shape must be a non-empty tuple of positive ints such as (3, 32, 32) or (64,), got {input_shape!r}"
        )
    return shape


def check_image_shape(input_shape: Sequence[int], model: str, min_hw: int = 1) -> tuple[int, int, int]:
    """Return ``(C, H, W)`` or raise ``ValueError`` if the shape is not an image of at least ``min_hw``."""
    shape = check_shape(input_shape)
    if len(shape) != 3:
        raise ValueError(
            f"model {model!r} needs an image input_shape (C, H, W), got {shape}; use 'mlp' for flat features"
        )
    c, h, w = shape
    if h < min_hw or w < min_hw:
        raise ValueError(
            f"model {model!r} needs H and W >= {min_hw}, got input_shape {shape}; use 'mlp' for smaller inputs"
        )
    return c, h, w


def check_num_classes(num_classes: int) -> int:
    """Return ``num_classes`` (the number of outputs: 1 for a regression head) if it is an int >= 1."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes (outputs) must be an int >= 1, got {num_classes!r}")
    return num_classes


def check_dropout(dropout: float) -> float:
    """Return ``dropout`` as a float in [0, 1), else raise ``ValueError``."""
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)):
        raise ValueError(f"dropout must be a float in [0, 1), got {dropout!r}")
    p = float(dropout)
    if not 0.0 <= p < 1.0:  # also rejects NaN
        raise ValueError(f"dropout must be a float in [0, 1), got {dropout!r}")
    return p


def init_conv_bn(model: nn.Module) -> None:
    """Kaiming-normal (fan_out, ReLU) conv weights; BatchNorm weight 1 and bias 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
