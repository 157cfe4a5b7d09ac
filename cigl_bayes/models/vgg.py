"""VGG with BatchNorm for CIFAR-sized inputs (conv3x3-BN-ReLU stacks, max-pools, GAP, single Linear head)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._common import check_dropout, check_image_shape, check_num_classes

__all__ = ["VGG", "VGG_CFGS", "vgg19"]

VGG_CFGS: dict[str, tuple[int | str, ...]] = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg13": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "vgg19": (
        64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
        512, 512, 512, 512, "M", 512, 512, 512, 512, "M",
    ),
}  # fmt: skip


class VGG(nn.Module):
    """VGG-BN: conv3x3(bias=False)-BN-ReLU per cfg entry, 2x2 max-pool per 'M' (skipped once H or W is 1), GAP, (Dropout), Linear."""

    def __init__(
        self,
        cfg: Sequence[int | str],
        input_shape: Sequence[int],
        num_classes: int,
        dropout: float = 0.0,
        name: str = "vgg",
    ) -> None:
        super().__init__()
        c, h, w = check_image_shape(input_shape, name)
        num_classes = check_num_classes(num_classes)
        p = check_dropout(dropout)
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        layers: list[nn.Module] = []
        cin = c
        for v in cfg:
            if v == "M":
                if h >= 2 and w >= 2:  # a pool would shrink below 1x1 otherwise
                    layers.append(nn.MaxPool2d(2))
                    h, w = h // 2, w // 2
            else:
                assert isinstance(v, int)
                layers += [nn.Conv2d(cin, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(p) if p > 0 else nn.Identity()
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape (N, num_classes)."""
        out = torch.flatten(self.pool(self.features(x)), 1)
        return self.classifier(self.dropout(out))


def vgg19(input_shape: Sequence[int], num_classes: int, dropout: float = 0.0) -> VGG:
    """VGG-19-BN for CIFAR: 16 conv layers (64..512), 5 pools, Linear(512->K)."""
    return VGG(VGG_CFGS["vgg19"], input_shape, num_classes, dropout, name="vgg19")
