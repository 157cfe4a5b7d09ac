"""CIFAR-style ResNets (3x3 stride-1 stem, no max-pool): ResNet-18 (BasicBlock) and ResNet-50 (Bottleneck)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ._common import check_dropout, check_image_shape, check_num_classes, init_conv_bn

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet50"]


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    """Identity, or 1x1 conv + BN when the shape changes."""
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    """Post-activation basic block: conv3x3-BN-ReLU-conv3x3-BN, plus shortcut, then ReLU."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = _shortcut(cin, cout, stride)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        """The BN closing the residual branch (zero-initialised)."""
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return relu(branch(x) + shortcut(x))."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """Post-activation bottleneck: conv1x1-BN-ReLU-conv3x3(stride)-BN-ReLU-conv1x1(x4)-BN, plus shortcut, then ReLU."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = _shortcut(cin, cout, stride)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        """The BN closing the residual branch (zero-initialised)."""
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return relu(branch(x) + shortcut(x))."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet: conv3x3(C->64, stride 1)-BN-ReLU, 4 stages (64,128,256,512; strides 1,2,2,2), GAP, (Dropout), Linear."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        num_blocks: Sequence[int],
        input_shape: Sequence[int],
        num_classes: int,
        dropout: float = 0.0,
        zero_init_residual: bool = True,
        name: str = "resnet",
    ) -> None:
        super().__init__()
        c, _, _ = check_image_shape(input_shape, name)
        num_classes = check_num_classes(num_classes)
        p = check_dropout(dropout)
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(c, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin = 64
        stages: list[nn.Sequential] = []
        for planes, n, stride in zip((64, 128, 256, 512), num_blocks, (1, 2, 2, 2)):
            blocks: list[nn.Module] = []
            for s in [stride] + [1] * (n - 1):
                blocks.append(block(cin, planes, s))
                cin = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(p) if p > 0 else nn.Identity()
        self.linear = nn.Linear(cin, num_classes)
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        init_conv_bn(self)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(m.last_bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape (N, num_classes)."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = torch.flatten(self.pool(out), 1)
        return self.linear(self.dropout(out))


def resnet18(input_shape: Sequence[int], num_classes: int, dropout: float = 0.0) -> ResNet:
    """CIFAR ResNet-18: BasicBlock x [2, 2, 2, 2] (11,173,962 params for 3x32x32, 10 classes)."""
    return ResNet(BasicBlock, (2, 2, 2, 2), input_shape, num_classes, dropout, name="resnet18")


def resnet50(input_shape: Sequence[int], num_classes: int, dropout: float = 0.0) -> ResNet:
    """CIFAR ResNet-50: Bottleneck x [3, 4, 6, 3] (23,520,842 params for 3x32x32, 10 classes)."""
    return ResNet(Bottleneck, (3, 4, 6, 3), input_shape, num_classes, dropout, name="resnet50")
