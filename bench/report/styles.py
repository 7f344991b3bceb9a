"""Each arch's look in the report: its title, colour, line style and marker, and that style in words, all from
its entry in the registry (resnet.archs), so that a newly registered arch is drawn without an edit here.

Titles come from the entry. Line styles and markers go to archs in registration order. Colours come from the
entry's colour family, in registration order within the family. An arch found in results but not registered
(its entry is not loaded) still draws: its name is its title, and it takes the next style and a spare colour.
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd
import seaborn as sns

from resnet import arch_names, get_arch, paper_archs

# (matplotlib line style, marker, the style in words), taken in registration order: the built-in archs get
# the first five (plain dashed, residual solid, preact dotted, zero-init dash-dot, dirac long dash-dot).
LINE_STYLES = (("--", "s", "dashed"), ("-", "o", "solid"), (":", "^", "dotted"), ("-.", "D", "dash-dot"),
               ((0, (6, 1.5, 1, 1.5)), "v", "long dash-dot"), ((0, (1, 1)), "P", "densely dotted"),
               ((0, (5, 1)), "X", "densely dashed"), ((0, (3, 1, 1, 1, 1, 1)), "*", "dash-dot-dot"))
# The colorblind palette's colours of each family, in the order its archs take them: shortcut archs in a blue
# or green, shortcut-free ones in a red or pink, so the family shows at a glance. Orange, brown and yellow are
# spares for an arch past its family's end or with no entry; grey (7) is torchvision's.
COLOUR_ORDER = {"cool": (0, 2, 9), "warm": (3, 4, 6)}
SPARE_COLOURS = (1, 5, 8)
REFERENCE_GREY = (0.35, 0.35, 0.35)


def arch_order(names: Iterable[str] = ()) -> list[str]:
    """The registered archs in registration order, then the other `names` (archs of results with no entry)."""
    registered = list(arch_names())
    return registered + sorted({str(n) for n in names} - set(registered))


def arch_title(arch: str) -> str:
    """The arch's panel title: its entry's, or its name where it has none."""
    return get_arch(arch).title if arch in arch_names() else arch


def arch_lines(names: Iterable[str] = ()) -> dict[str, dict]:
    """Line style and marker of each arch (matplotlib's ls and marker keywords), registered or in `names`."""
    order = arch_order(names)
    return {a: dict(zip(("ls", "marker"), LINE_STYLES[i % len(LINE_STYLES)][:2])) for i, a in enumerate(order)}


def line_words(names: Iterable[str] = ()) -> dict[str, str]:
    """Each arch's line style in words, for the captions."""
    return {a: LINE_STYLES[i % len(LINE_STYLES)][2] for i, a in enumerate(arch_order(names))}


def arch_colors(names: Iterable[str] = ()) -> dict[str, tuple]:
    """One colour per arch where a figure tells archs apart by colour (the timing figures, every arch at one
    depth), from its colour family, and grey for torchvision references."""
    palette = sns.color_palette("colorblind")
    used: list[int] = []
    colours: dict[str, tuple] = {}
    for arch in arch_order(names):
        family = get_arch(arch).colours if arch in arch_names() else ""
        pool = [i for i in (*COLOUR_ORDER.get(family, ()), *SPARE_COLOURS) if i not in used]
        # Past every free colour the palette comes round again: two archs share one, none is left out.
        index = pool[0] if pool else len(used) % len(palette)
        used.append(index)
        colours[arch] = palette[index]
    return {**colours, "torchvision": REFERENCE_GREY}


def drawn_archs(runs: pd.DataFrame) -> list[str]:
    """The archs a figure draws: the paper's always (an empty one says so), every other where it has runs."""
    present = set(runs["arch"])
    return [a for a in arch_order(present) if a in paper_archs() or a in present]


def line_key(runs: pd.DataFrame) -> str:
    """'Dashed: plain; solid: residual.', and the line of each other arch that has runs."""
    archs = drawn_archs(runs)
    words = line_words(archs)
    key = "; ".join(f"{words[a]}: {a}" for a in archs)
    preact = [a for a in archs if a in arch_names() and get_arch(a).preact]
    note = f" ({', '.join(preact)}: a pre-activation unit's conv output, as no norm follows it)" if preact else ""
    return key[0].upper() + key[1:] + note + "."
