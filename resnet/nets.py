"""The two families of He et al. (2015) and `build_model`, the one entry point.

ImageNet layout (paper Table 1): stem, four stages at widths w-2w-4w-8w (w=64), global average
pool, fc. CIFAR layout (paper section 4.2): 3x3 stem, three stages of n basic blocks at widths
16-32-64, global average pool, fc; depth 6n+2. Parameter names match torchvision's ResNet.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .blocks import (
    SHORTCUTS,
    STRIDE_ON,
    BasicBlock,
    Bottleneck,
    NormLayer,
    PreActBasicBlock,
    PreActBottleneck,
    conv3x3,
)
from .archs import arch_names, get_arch, has_shortcut, paper_archs, remedies
from .checks import ModelConfigError, check_choice, check_positive

IMAGENET_DEPTHS = (18, 34, 50, 101, 152)
CIFAR_DEPTHS = (20, 32, 44, 56, 110, 1202)
# The deepest CIFAR net built: n = 1000, five times the paper's deepest (1202). Building a net takes time and
# memory in its depth before anything runs (even on the meta device): 600,002 layers took minutes and 2.3 GB.
MAX_CIFAR_DEPTH = 6002
FAMILIES = ("imagenet", "cifar")
# The built-in archs (resnet.archs holds each one's entry), kept as import paths. An arch registered later is
# in resnet.archs.arch_names(), which everything that builds or lists archs reads.
ARCHS = paper_archs()
REMEDIES = remedies()
ALL_ARCHS = arch_names()
SHORTCUT_ARCHS = tuple(name for name in ALL_ARCHS if has_shortcut(name))
STEMS = ("imagenet", "cifar")

# Paper Table 1: blocks per stage for each ImageNet depth.
IMAGENET_LAYOUT: dict[int, tuple[type[nn.Module], tuple[int, ...]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}

# The paper's choice for each family; build_model's None arguments fall back to these.
# num_classes: the classes of the dataset each family was made for (ImageNet, CIFAR-10), which `bench models`
# and `bench time` build; build_model itself takes num_classes as given.
FAMILY_DEFAULTS = {
    "imagenet": {"shortcut": "B", "stem": "imagenet", "width": 64, "num_classes": 1000},
    "cifar": {"shortcut": "A", "stem": "cifar", "width": 16, "num_classes": 10},
}

OPTIONS = ("stride_on", "in_channels")

_DEPTH_HELP = (
    f"choose one of {', '.join(map(str, IMAGENET_DEPTHS))} (imagenet) "
    f"or 6n+2 such as {', '.join(map(str, CIFAR_DEPTHS))} (cifar)"
)


def is_cifar_depth(depth: int) -> bool:
    """True for 6n+2 with n >= 1: the depths the CIFAR layout can build."""
    return depth >= 8 and (depth - 2) % 6 == 0


def family_of(depth: int) -> str:
    """The family a depth belongs to. 50 and 152 are also 6n+2; they go to imagenet, as in the paper."""
    if depth in IMAGENET_DEPTHS:
        return "imagenet"
    if is_cifar_depth(depth):
        return "cifar"
    raise ModelConfigError(f"unknown depth {depth}: {_DEPTH_HELP}")


class ResNet(nn.Module):
    """Stem, stages of blocks (the first block of stages 2.. halves the resolution), pool, fc.

    ``widths`` are the per-stage block widths; a bottleneck stage outputs 4x its width.
    ``norm_layer`` builds every norm layer, the stem's, the blocks' and the projection shortcuts'
    (None: BatchNorm2d); as in torchvision it is kept as ``self._norm_layer`` and handed to each block.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, ...],
        widths: tuple[int, ...],
        *,
        family: str,
        arch: str,
        shortcut: str,
        stem: str,
        num_classes: int,
        in_channels: int = 3,
        stride_on: str = "3x3",
        norm_layer: NormLayer | None = None,
    ) -> None:
        super().__init__()
        if norm_layer is None:
            norm_layer = nn.BatchNorm2d
        self._norm_layer = norm_layer
        spec = get_arch(arch)
        residual = spec.shortcut
        if spec.preact:
            block = PreActBottleneck if block is Bottleneck else PreActBasicBlock  # type: ignore[assignment]
        # Provenance: what was built, for logs and result rows. A plain net has no shortcut.
        self.depth = 2 + block.convs * sum(layers)
        self.family = family
        self.arch = arch
        self.shortcut = shortcut if residual else None
        self.stem = stem
        self.block = "bottleneck" if block in (Bottleneck, PreActBottleneck) else "basic"
        self.width = widths[0]
        self.stride_on = stride_on if self.block == "bottleneck" else None

        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        else:
            self.conv1 = conv3x3(in_channels, widths[0])
            self.maxpool = nn.Identity()
        self.bn1 = norm_layer(widths[0])
        self.relu = nn.ReLU(inplace=True)

        block_args: dict[str, Any] = {"shortcut": shortcut, "norm_layer": norm_layer}
        if not spec.preact:
            block_args.update(residual=residual, dirac=spec.dirac)
        if self.block == "bottleneck":
            block_args["stride_on"] = stride_on
        in_planes = widths[0]
        self.stage_names = tuple(f"layer{i + 1}" for i in range(len(layers)))
        for i, (name, n, planes) in enumerate(zip(self.stage_names, layers, widths)):
            blocks = []
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(block(in_planes, planes, stride, **block_args))
                in_planes = planes * block.expansion
            self.add_module(name, nn.Sequential(*blocks))
        # Pre-activation units end on an addition; the norm and ReLU the last one leaves out come here.
        self.final_norm: nn.Module = nn.Sequential(norm_layer(in_planes), nn.ReLU(inplace=True)) \
            if spec.preact else nn.Identity()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)

        # As torchvision: BatchNorm and GroupNorm start as the identity map (scale 1, shift 0). An
        # injected norm without affine terms has nothing to initialise.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) and m.affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if spec.zero_init:  # each residual branch starts at zero: its last norm's scale is 0
            for name in self.stage_names:
                for b in getattr(self, name):
                    nn.init.zeros_(getattr(b, f"bn{block.convs}").weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return self.fc(torch.flatten(self.avgpool(self.final_norm(x)), 1))


def build_model(
    depth: int,
    arch: str = "residual",
    *,
    family: str | None = None,
    shortcut: str | None = None,
    stem: str | None = None,
    width: int | None = None,
    num_classes: int = 10,
    norm_layer: NormLayer | None = None,
    **options: Any,
) -> ResNet:
    """Build a net of the given depth: ``arch`` is a registered arch's name (resnet.archs): "plain" or
    "residual" (the paper's), a remedy "preact", "zero-init", "dirac", or one registered since.

    ``family`` is inferred from ``depth`` when None (18/34/50/101/152 -> imagenet, other 6n+2 ->
    cifar); pass ``family="cifar"`` for the CIFAR nets of depth 50 or 152. ``shortcut``, ``stem``
    and ``width`` (first-stage channels; later stages double) default to the family's paper choice:
    imagenet B / imagenet / 64, cifar A / cifar / 16. ``options``: ``stride_on`` ("3x3" default,
    or "1x1" as in the paper; bottleneck nets only) and ``in_channels`` (3). ``norm_layer`` maps a
    channel count to the norm module used everywhere, e.g. ``lambda c: nn.GroupNorm(32, c)``; None
    keeps the paper's BatchNorm2d (torchvision's ``norm_layer``, with the same parameter names).
    Invalid choices raise ModelConfigError (a ValueError) naming the valid ones.
    """
    check_positive("depth", depth, integer=True)
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ModelConfigError(f"unknown option {unknown[0]!r}: choose from {', '.join(OPTIONS)}")
    get_arch(arch)
    if family is None:
        family = family_of(depth)
    check_choice("family", family, FAMILIES)
    if family == "imagenet" and depth not in IMAGENET_DEPTHS:
        raise ModelConfigError(
            f"depth {depth} is not an imagenet depth: choose one of {', '.join(map(str, IMAGENET_DEPTHS))}"
        )
    if family == "cifar" and not is_cifar_depth(depth):
        raise ModelConfigError(
            f"depth {depth} is not a cifar depth: use 6n+2 such as {', '.join(map(str, CIFAR_DEPTHS))}"
        )
    if family == "cifar" and depth > MAX_CIFAR_DEPTH:
        raise ModelConfigError(
            f"depth {depth} is deeper than the cifar family builds (at most {MAX_CIFAR_DEPTH} layers, n = "
            f"{(MAX_CIFAR_DEPTH - 2) // 6}; the paper's deepest is 1202): choose a depth of 6n+2 up to "
            f"{MAX_CIFAR_DEPTH}"
        )
    defaults = FAMILY_DEFAULTS[family]
    shortcut = defaults["shortcut"] if shortcut is None else shortcut
    stem = defaults["stem"] if stem is None else stem
    width = defaults["width"] if width is None else width
    check_choice("shortcut", shortcut, SHORTCUTS)
    check_choice("stem", stem, STEMS)
    stride_on = options.get("stride_on", "3x3")
    check_choice("stride_on", stride_on, STRIDE_ON)
    in_channels = options.get("in_channels", 3)
    for name, value in (("width", width), ("num_classes", num_classes), ("in_channels", in_channels)):
        check_positive(name, value, integer=True)

    if family == "imagenet":
        block, layers = IMAGENET_LAYOUT[depth]
    else:
        block, layers = BasicBlock, ((depth - 2) // 6,) * 3
    widths = tuple(width * 2**i for i in range(len(layers)))
    return ResNet(
        block,
        layers,
        widths,
        family=family,
        arch=arch,
        shortcut=shortcut,
        stem=stem,
        num_classes=num_classes,
        in_channels=in_channels,
        stride_on=stride_on,
        norm_layer=norm_layer,
    )
