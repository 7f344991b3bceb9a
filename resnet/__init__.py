"""Plain and residual networks matched layer for layer (He et al., 2015)."""

from .blocks import (
    SHORTCUTS,
    STRIDE_ON,
    BasicBlock,
    Bottleneck,
    DiracConv2d,
    NormLayer,
    PadShortcut,
    PreActBasicBlock,
    PreActBottleneck,
)
from .checks import ModelConfigError
from .flops import count_macs, count_parameters
from .nets import (
    ALL_ARCHS,
    ARCHS,
    CIFAR_DEPTHS,
    FAMILIES,
    FAMILY_DEFAULTS,
    IMAGENET_DEPTHS,
    REMEDIES,
    SHORTCUT_ARCHS,
    STEMS,
    ResNet,
    build_model,
    family_of,
    is_cifar_depth,
)

__all__ = [
    "ALL_ARCHS",
    "ARCHS",
    "CIFAR_DEPTHS",
    "FAMILIES",
    "FAMILY_DEFAULTS",
    "IMAGENET_DEPTHS",
    "REMEDIES",
    "SHORTCUT_ARCHS",
    "SHORTCUTS",
    "STEMS",
    "STRIDE_ON",
    "BasicBlock",
    "Bottleneck",
    "DiracConv2d",
    "ModelConfigError",
    "NormLayer",
    "PadShortcut",
    "PreActBasicBlock",
    "PreActBottleneck",
    "ResNet",
    "build_model",
    "count_macs",
    "count_parameters",
    "family_of",
    "is_cifar_depth",
]
