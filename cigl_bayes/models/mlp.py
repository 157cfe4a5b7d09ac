"""Multi-layer perceptron: Flatten -> [Linear-BN1d-ReLU(-Dropout)] x n -> Linear."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ._common import check_dropout, check_num_classes, check_shape

__all__ = ["MLP"]


class MLP(nn.Module):
    """MLP on flattened inputs: Flatten, then Linear-BatchNorm1d-ReLU(-Dropout) per hidden size, then Linear head."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        hidden_sizes: Sequence[int] = (256, 256),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        shape = check_shape(input_shape)
        num_classes = check_num_classes(num_classes)
        p = check_dropout(dropout)
        hidden = tuple(hidden_sizes)
        if not all(isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in hidden):
            raise ValueError(f"hidden_sizes must be positive ints, got {hidden_sizes!r}")
        self.input_shape = shape
        self.num_classes = num_classes
        self.hidden_sizes = hidden
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(shape)
        for h in hidden:
            layers += [nn.Linear(width, h, bias=False), nn.BatchNorm1d(h), nn.ReLU(inplace=True)]
            if p > 0:
                layers.append(nn.Dropout(p))
            width = h
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape (N, num_classes)."""
        return self.classifier(self.features(x))
