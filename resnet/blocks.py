"""Building blocks of He et al. (2015): basic and bottleneck blocks, with or without a shortcut.

A block built with ``residual=False`` is the *plain* counterpart of the residual block: the same
convolutions and norm layers, but the output is ``relu(F(x))`` instead of ``relu(F(x) + shortcut(x))``.
Layer names follow torchvision (conv1, bn1, ..., downsample) so that its weights load unchanged.

The norm layer is injectable as in torchvision: ``norm_layer`` is called with a channel count and
returns the module (None means ``nn.BatchNorm2d``, the paper's choice), so GroupNorm and the like
can be compared without a copy of the nets. The attribute names stay bn1, bn2, ... whatever it is.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

SHORTCUTS = ("A", "B", "C")
STRIDE_ON = ("3x3", "1x1")

# What a norm_layer argument is: channels -> module, e.g. nn.BatchNorm2d or lambda c: nn.GroupNorm(32, c).
NormLayer = Callable[[int], nn.Module]


class ModelConfigError(ValueError):
    """An invalid model option; the message is one line naming the valid choices (the CLI prints it as is)."""


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias (the norm layer after it has one)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution without bias."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class PadShortcut(nn.Module):
    """Option A shortcut: subsample by ``stride`` and append ``extra`` all-zero channels.

    Parameter-free, so a residual net with option A has exactly the parameters of its plain twin.
    Subsampling takes the top-left pixel of each stride x stride cell, which is the pixel a 1x1
    stride-2 convolution would see, so shapes agree with the conv branch for odd sizes too.
    """

    def __init__(self, extra: int, stride: int) -> None:
        super().__init__()
        self.extra = extra
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        # F.pad's last pair pads dim 1 (channels) when given six values: (W, W, H, H, C, C).
        return F.pad(x, (0, 0, 0, 0, 0, self.extra))

    def extra_repr(self) -> str:
        return f"extra={self.extra}, stride={self.stride}"


def make_shortcut(
    option: str, in_planes: int, out_planes: int, stride: int, norm_layer: NormLayer | None = None
) -> nn.Module | None:
    """The shortcut of a residual block (paper section 3.3); None means identity.

    A: identity, PadShortcut where the shape changes. B: 1x1 projection + norm where the shape
    changes, identity elsewhere. C: projection + norm on every block. The projection's norm is the
    block's ``norm_layer`` (None: BatchNorm2d), as in torchvision's ``_make_layer``. ``option`` is one of
    SHORTCUTS, checked where it enters, in ``build_model``.
    """
    if norm_layer is None:
        norm_layer = nn.BatchNorm2d
    reshapes = stride != 1 or in_planes != out_planes
    if option == "C" or (option == "B" and reshapes):
        return nn.Sequential(conv1x1(in_planes, out_planes, stride), norm_layer(out_planes))
    if option == "A" and reshapes:
        return PadShortcut(out_planes - in_planes, stride)
    return None


class BasicBlock(nn.Module):
    """Two 3x3 conv-norm layers (ResNet-18/34 and the CIFAR nets); the first one carries the stride."""

    expansion = 1
    convs = 2

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        *,
        shortcut: str = "B",
        residual: bool = True,
        norm_layer: NormLayer | None = None,
    ) -> None:
        super().__init__()
        if norm_layer is None:
            norm_layer = nn.BatchNorm2d
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = norm_layer(planes)
        self.residual = residual
        self.downsample = make_shortcut(shortcut, in_planes, planes, stride, norm_layer) if residual else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4), each followed by a norm layer (ResNet-50/101/152).

    ``stride_on="3x3"`` puts a stage's stride on the 3x3 conv (torchvision's "v1.5", the default);
    ``"1x1"`` puts it on the first 1x1 conv as in the paper, which costs fewer multiply-adds (one of
    STRIDE_ON, checked where it enters, in ``build_model``).
    """

    expansion = 4
    convs = 3

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        *,
        shortcut: str = "B",
        residual: bool = True,
        stride_on: str = "3x3",
        norm_layer: NormLayer | None = None,
    ) -> None:
        super().__init__()
        if norm_layer is None:
            norm_layer = nn.BatchNorm2d
        out_planes = planes * self.expansion
        stride_1x1, stride_3x3 = (stride, 1) if stride_on == "1x1" else (1, stride)
        self.conv1 = conv1x1(in_planes, planes, stride_1x1)
        self.bn1 = norm_layer(planes)
        self.conv2 = conv3x3(planes, planes, stride_3x3)
        self.bn2 = norm_layer(planes)
        self.conv3 = conv1x1(planes, out_planes)
        self.bn3 = norm_layer(out_planes)
        self.relu = nn.ReLU(inplace=True)
        self.residual = residual
        self.downsample = make_shortcut(shortcut, in_planes, out_planes, stride, norm_layer) if residual else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)
