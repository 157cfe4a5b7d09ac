"""Wide ResNet (Zagoruyko & Komodakis 2016) with pre-activation blocks; WRN-22-2 by default."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ._common import check_dropout, check_image_shape, check_num_classes, init_conv_bn

__all__ = ["WideBasicBlock", "WideResNet", "wrn_22_2"]


class WideBasicBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3(stride)-BN-ReLU-conv3x3, plus identity or 1x1-conv shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.equal_in_out = cin == cout and stride == 1
        self.shortcut: nn.Module | None = (
            None if self.equal_in_out else nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return branch(x) + shortcut(x); the 1x1 shortcut sees the pre-activated input."""
        act = F.relu(self.bn1(x))
        out = self.conv1(act)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + (x if self.shortcut is None else self.shortcut(act))


class WideResNet(nn.Module):
    """WRN-d-k: conv3x3(C->16), 3 groups of (d-4)/6 blocks (16k, 32k, 64k; strides 1,2,2), BN-ReLU, GAP, (Dropout), Linear."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        depth: int = 22,
        widen_factor: int = 2,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        name = f"wrn-{depth}-{widen_factor}"
        c, _, _ = check_image_shape(input_shape, name)
        num_classes = check_num_classes(num_classes)
        p = check_dropout(dropout)
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n+4 with n >= 1 (e.g. 16, 22, 28), got {depth}")
        if widen_factor < 1:
            raise ValueError(f"widen_factor must be >= 1, got {widen_factor}")
        n = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.depth = depth
        self.widen_factor = widen_factor
        self.conv1 = nn.Conv2d(c, widths[0], 3, padding=1, bias=False)
        groups: list[nn.Sequential] = []
        cin = widths[0]
        for cout, stride in zip(widths[1:], (1, 2, 2)):
            blocks = [WideBasicBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1) for i in range(n)]
            groups.append(nn.Sequential(*blocks))
            cin = cout
        self.block1, self.block2, self.block3 = groups
        self.bn = nn.BatchNorm2d(cin)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(p) if p > 0 else nn.Identity()
        self.fc = nn.Linear(cin, num_classes)
        init_conv_bn(self)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape (N, num_classes)."""
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = torch.flatten(self.pool(F.relu(self.bn(out))), 1)
        return self.fc(self.dropout(out))


def wrn_22_2(input_shape: Sequence[int], num_classes: int, dropout: float = 0.0) -> WideResNet:
    """WRN-22-2: 3 groups of 3 pre-activation blocks, widths 16/32/64/128."""
    return WideResNet(input_shape, num_classes, depth=22, widen_factor=2, dropout=dropout)
