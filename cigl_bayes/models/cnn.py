"""Small CNN for tiny images: conv(32)-conv(64)-maxpool-conv(128)-GAP-Linear, all conv-BN-ReLU."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._common import check_dropout, check_image_shape, check_num_classes

__all__ = ["SmallCNN"]


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SmallCNN(nn.Module):
    """Small CNN for e.g. 1x8x8 digits: conv3x3(C->32), conv3x3(32->64), maxpool 2, conv3x3(64->128), GAP, Linear(128->K)."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        c, _, _ = check_image_shape(input_shape, "cnn", min_hw=4)
        num_classes = check_num_classes(num_classes)
        p = check_dropout(dropout)
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.features = nn.Sequential(
            *_conv_bn_relu(c, 32),
            *_conv_bn_relu(32, 64),
            nn.MaxPool2d(2),
            *_conv_bn_relu(64, 128),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.dropout = nn.Dropout(p) if p > 0 else nn.Identity()
        self.classifier = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape (N, num_classes)."""
        return self.classifier(self.dropout(self.features(x)))
