"""Plain and residual networks matched layer for layer (He et al., 2015)."""

from .blocks import SHORTCUTS, STRIDE_ON, BasicBlock, Bottleneck, ModelConfigError, NormLayer, PadShortcut
from .flops import count_macs, count_parameters
from .nets import (
    ARCHS,
    CIFAR_DEPTHS,
    FAMILIES,
    FAMILY_DEFAULTS,
    IMAGENET_DEPTHS,
    STEMS,
    ResNet,
    build_model,
    family_of,
    is_cifar_depth,
)

__all__ = [
    "ARCHS",
    "CIFAR_DEPTHS",
    "FAMILIES",
    "FAMILY_DEFAULTS",
    "IMAGENET_DEPTHS",
    "SHORTCUTS",
    "STEMS",
    "STRIDE_ON",
    "BasicBlock",
    "Bottleneck",
    "ModelConfigError",
    "NormLayer",
    "PadShortcut",
    "ResNet",
    "build_model",
    "count_macs",
    "count_parameters",
    "family_of",
    "is_cifar_depth",
]
