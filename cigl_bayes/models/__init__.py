"""Model zoo for sparse training: MLP, small CNN, CIFAR ResNet-18/50, WRN-22-2, VGG-19-BN, and ``build_model``."""

from .cnn import SmallCNN
from .mlp import MLP
from .registry import MODEL_NAMES, build_model
from .resnet import BasicBlock, Bottleneck, ResNet, resnet18, resnet50
from .vgg import VGG, VGG_CFGS, vgg19
from .wrn import WideBasicBlock, WideResNet, wrn_22_2

__all__ = [
    "MLP",
    "MODEL_NAMES",
    "VGG",
    "VGG_CFGS",
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "SmallCNN",
    "WideBasicBlock",
    "WideResNet",
    "build_model",
    "resnet18",
    "resnet50",
    "vgg19",
    "wrn_22_2",
]
