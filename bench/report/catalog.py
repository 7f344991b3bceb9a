"""The architecture catalog behind `bench models`: every net with its parameters and multiply-adds."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch
from rich.table import Table

import resnet
from bench.core.errors import check_choice, check_positive

# Paper Table 1, multiply-adds at 224x224 ("FLOPs" there), of the residual nets; the paper's
# plain nets are 18 and 34 deep only, and it gives them the same counts (section 3.3).
PAPER_MACS = {18: 1.8e9, 34: 3.6e9, 50: 3.8e9, 101: 7.6e9, 152: 11.3e9}
PAPER_PLAIN_DEPTHS = (18, 34)
# Paper Table 6, parameters of the CIFAR-10 residual nets (option A, so the plain twins match too).
PAPER_PARAMS = {20: 0.27e6, 32: 0.46e6, 44: 0.66e6, 56: 0.85e6, 110: 1.7e6, 1202: 19.4e6}

_DEPTHS = {"imagenet": resnet.IMAGENET_DEPTHS, "cifar": resnet.CIFAR_DEPTHS}


def architecture_table(
    input_size: int = 224,
    families: Iterable[str] = ("imagenet", "cifar"),
    stride_on: str = "3x3",
) -> list[dict]:
    """One row per (family, depth, arch), built with the family's paper defaults.

    Keys: family, depth, arch, block, shortcut (None for plain nets), stride_on (None for basic
    blocks), input_size, params, macs (at ``input_size``), paper_macs (Table 1: the imagenet
    residual nets and plain-18/34), paper_params (Table 6: cifar); the other archs (resnet.remedies()) are not in
    the paper's tables. ImageNet rows have 1000
    classes, CIFAR rows 10. Bottleneck nets put the stride on the 3x3 conv unless
    ``stride_on="1x1"``, the paper's layout, the one Table 1's 3.8/7.6/11.3 G count.
    MACs are counted on the meta device.
    """
    families = tuple(families)
    for family in families:
        check_choice("family", family, tuple(_DEPTHS))
    check_positive("input size", input_size, integer=True, detail=" of pixels")
    rows = []
    for family in families:
        for depth in _DEPTHS[family]:
            for arch in resnet.arch_names():
                # Meta skips initialising imagenet's tens of millions of weights; the small but
                # many-layered cifar nets build faster without its per-call dispatch (1202: 0.7 s vs 2 s).
                with torch.device("meta") if family == "imagenet" else contextlib.nullcontext():
                    model = resnet.build_model(depth, arch, family=family, stride_on=stride_on,
                                               num_classes=resnet.FAMILY_DEFAULTS[family]["num_classes"])
                rows.append(
                    {
                        "family": family,
                        "depth": depth,
                        "arch": arch,
                        "block": model.block,
                        "shortcut": model.shortcut,
                        "stride_on": model.stride_on,
                        "input_size": input_size,
                        "params": resnet.count_parameters(model),
                        "macs": resnet.count_macs(model, input_size),
                        "paper_macs": _paper_macs(family, depth, arch),
                        "paper_params": PAPER_PARAMS.get(depth) if family == "cifar" and arch in resnet.ARCHS else None,
                    }
                )
    return rows


def _paper_macs(family: str, depth: int, arch: str) -> float | None:
    if family != "imagenet" or arch not in resnet.ARCHS or (arch == "plain" and depth not in PAPER_PLAIN_DEPTHS):
        return None
    return PAPER_MACS[depth]


def format_count(n: float | None) -> str:
    """A count with three significant figures and a K/M/G suffix: 11689512 -> "11.7M"; None -> "-"."""
    if n is None:
        return "-"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{suffix}"
    return f"{n:.3g}"


def architecture_rich_table(rows: list[dict]) -> Table:
    """The catalog as a rich table, paper figures beside ours."""
    size = rows[0]["input_size"] if rows else "?"
    table = Table(title=f"architectures (multiply-adds at {size}x{size})")
    for column in ("family", "depth", "arch", "block", "shortcut", "params", "paper params", "MACs", "paper MACs"):
        table.add_column(column, justify="right" if column in ("depth", "params", "paper params", "MACs",
                                                               "paper MACs") else "left")
    for row in rows:
        table.add_row(row["family"], str(row["depth"]), row["arch"], row["block"], row["shortcut"] or "none",
                      format_count(row["params"]), format_count(row["paper_params"]), format_count(row["macs"]),
                      format_count(row["paper_macs"] if size == 224 else None))  # Table 1 is at 224
    return table
