"""Building blocks of He et al. (2015): basic and bottleneck blocks, with or without a shortcut, and the
remedies for degradation that later work put in their place.

A block built with ``residual=False`` is the *plain* counterpart of the residual block: the same
convolutions and norm layers, but the output is ``relu(F(x))`` instead of ``relu(F(x) + shortcut(x))``.
Layer names follow torchvision (conv1, bn1, ..., downsample) so that its weights load unchanged.

Each remedy changes one thing and keeps the layers: ``dirac=True`` makes every conv of a plain block a
`DiracConv2d` (DiracNets: no shortcut, a start at the identity); `PreActBasicBlock` and `PreActBottleneck`
move each norm and ReLU before its conv (pre-activation, a clean identity path). The zero-initialised
residual net is an initialisation, done where nets are built (resnet.nets).

The norm layer is injectable as in torchvision: ``norm_layer`` is called with a channel count and
returns the module (None means ``nn.BatchNorm2d``, the paper's choice), so GroupNorm and the like
can be compared without a copy of the nets. The attribute names stay bn1, bn2, ... whatever it is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

SHORTCUTS = ("A", "B", "C")
STRIDE_ON = ("3x3", "1x1")

# What a norm_layer argument is: channels -> module, e.g. nn.BatchNorm2d or lambda c: nn.GroupNorm(32, c).
NormLayer = Callable[[int], nn.Module]


class DiracConv2d(nn.Conv2d):
    """A convolution whose weight is ``diag(alpha) delta + diag(beta) W / |W|``, from Zagoruyko and Komodakis
    (2017), "DiracNets: Training Very Deep Neural Networks Without Skip-Connections".

    ``delta`` is the Dirac kernel (``F.conv2d(x, delta) == x`` where channels match; the first
    min(in, out) channels otherwise, subsampled by the stride), ``W`` is this module's ``weight``,
    normalised per output filter, and ``alpha`` and ``beta`` are learned per output channel, starting at
    1 and 0.1 as DiracNets' code does: the conv starts close to the identity, with no shortcut in the net.
    Its parameters are a plain conv's plus two per output channel.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.alpha = nn.Parameter(torch.ones(self.out_channels))
        self.beta = nn.Parameter(torch.full((self.out_channels,), 0.1))
        # A buffer, so it follows the module's device and dtype; not saved: it is a constant of the shape.
        self.register_buffer("delta", nn.init.dirac_(torch.empty_like(self.weight)), persistent=False)

    def dirac_weight(self) -> torch.Tensor:
        """The weight the convolution applies."""
        scale = (-1,) + (1,) * (self.weight.dim() - 1)
        return (self.alpha.view(scale) * self.delta
                + self.beta.view(scale) * F.normalize(self.weight.flatten(1)).view_as(self.weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.dirac_weight(), self.bias)


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, dirac: bool = False) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias (the norm layer after it has one); Dirac-parameterised
    with ``dirac``."""
    conv = DiracConv2d if dirac else nn.Conv2d
    return conv(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1, dirac: bool = False) -> nn.Conv2d:
    """1x1 convolution without bias; Dirac-parameterised with ``dirac``."""
    conv = DiracConv2d if dirac else nn.Conv2d
    return conv(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


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
        dirac: bool = False,
        norm_layer: NormLayer | None = None,
    ) -> None:
        super().__init__()
        if norm_layer is None:
            norm_layer = nn.BatchNorm2d
        self.conv1 = conv3x3(in_planes, planes, stride, dirac)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes, dirac=dirac)
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
        dirac: bool = False,
        stride_on: str = "3x3",
        norm_layer: NormLayer | None = None,
    ) -> None:
        super().__init__()
        if norm_layer is None:
            norm_layer = nn.BatchNorm2d
        out_planes = planes * self.expansion
        stride_1x1, stride_3x3 = (stride, 1) if stride_on == "1x1" else (1, stride)
        self.conv1 = conv1x1(in_planes, planes, stride_1x1, dirac)
        self.bn1 = norm_layer(planes)
        self.conv2 = conv3x3(planes, planes, stride_3x3, dirac)
        self.bn2 = norm_layer(planes)
        self.conv3 = conv1x1(planes, out_planes, dirac=dirac)
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


class PreActBasicBlock(nn.Module):
    """BasicBlock with pre-activation, from He et al. (2016), "Identity Mappings in Deep Residual Networks":
    norm and ReLU come before each conv, and nothing follows the addition, so the shortcut path is a clean
    identity from block to block. The same convs and norms as BasicBlock; the net adds a final norm and
    ReLU before pooling. A projection shortcut, where the shape changes, sees the pre-activated input, as
    in that paper's code."""

    expansion = 1
    convs = 2
    pre_activation = True  # each conv's response is its own output: no norm follows it (bench.run.layers)

    def __init__(self, in_planes: int, planes: int, stride: int = 1, *, shortcut: str = "B",
                 norm_layer: NormLayer | None = None) -> None:
        super().__init__()
        if norm_layer is None:
            norm_layer = nn.BatchNorm2d
        self.bn1 = norm_layer(in_planes)
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn2 = norm_layer(planes)
        self.conv2 = conv3x3(planes, planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = make_shortcut(shortcut, in_planes, planes, stride, norm_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(x))
        shortcut = x if self.downsample is None else self.downsample(out)
        out = self.conv1(out)
        out = self.conv2(self.relu(self.bn2(out)))
        return out + shortcut


class PreActBottleneck(nn.Module):
    """Bottleneck with pre-activation (He et al. 2016, as PreActBasicBlock): norm, ReLU, 1x1 reduce; norm,
    ReLU, 3x3; norm, ReLU, 1x1 expand (x4); then the addition, with nothing after it."""

    expansion = 4
    convs = 3
    pre_activation = True

    def __init__(self, in_planes: int, planes: int, stride: int = 1, *, shortcut: str = "B",
                 stride_on: str = "3x3", norm_layer: NormLayer | None = None) -> None:
        super().__init__()
        if norm_layer is None:
            norm_layer = nn.BatchNorm2d
        out_planes = planes * self.expansion
        stride_1x1, stride_3x3 = (stride, 1) if stride_on == "1x1" else (1, stride)
        self.bn1 = norm_layer(in_planes)
        self.conv1 = conv1x1(in_planes, planes, stride_1x1)
        self.bn2 = norm_layer(planes)
        self.conv2 = conv3x3(planes, planes, stride_3x3)
        self.bn3 = norm_layer(planes)
        self.conv3 = conv1x1(planes, out_planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = make_shortcut(shortcut, in_planes, out_planes, stride, norm_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(x))
        shortcut = x if self.downsample is None else self.downsample(out)
        out = self.conv1(out)
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        return out + shortcut
