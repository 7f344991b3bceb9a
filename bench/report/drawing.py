"""What every figure of the report shares: the style, the depth colours, panels, legends under them, captions,
titles, the training-error gap axis and one net's line.

Figures are built without pyplot (no GUI backend, no global figure list to leak) and styled with seaborn
inside a local rc context, so importing these modules changes nothing for anyone else. Every line carries a
gid ("plain-20-test", "residual-train_step") so that tests and users can read the plotted numbers back.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Iterable

import matplotlib
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.transforms import offset_copy
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from bench.report.styles import arch_lines
from bench.results.fitting import NOISE_FLOOR


CAPTION_SIZE = 7.5
# The training-gap axis (points, symlog): tenths of a point near a crossing, tens in the first epochs.
GAP_TICKS = [-30, -10, -3, -1, -0.5, 0, 0.5, 1, 3, 10, 30, 100]
# Panels of a multi-panel figure, in inches: at most three side by side, so that a figure stays within about
# 2,000 pixels at the report's 150 dpi and readable at page width; more panels wrap onto further rows.
PANEL_WIDTH, PANEL_HEIGHT, MAX_COLUMNS = 4.3, 4.4, 3
# How far a legend under a panel sits below its axis, in points: past the tick labels and the axis label.
LEGEND_DROP = 34


# The colorblind palette's colours in the order depths take them: its orange and vermillion (1, 3) look alike
# side by side, so the depths next to each other in a report never get both.
DEPTH_ORDER = (0, 1, 2, 4, 5, 9, 3)


def style() -> matplotlib.rc_context:
    """seaborn's whitegrid look at a readable size, for the duration of a with-block only."""
    return matplotlib.rc_context({**sns.axes_style("whitegrid"), **sns.plotting_context("notebook", font_scale=0.85),
                                  "legend.framealpha": 0.92})


def depth_colors(depths: Iterable[int]) -> dict[int, tuple]:
    """One colour per depth, the same in every panel and figure of a report (shallow to deep in palette order)."""
    depths = sorted({int(d) for d in depths})
    if len(depths) > len(DEPTH_ORDER):
        return dict(zip(depths, sns.color_palette("husl", len(depths))))
    palette = sns.color_palette("colorblind")
    return dict(zip(depths, (palette[i] for i in DEPTH_ORDER)))


def add_caption(fig: Figure, lines: list[str], *, title: str | None = None) -> None:
    """Grow the figure at the bottom and write the provenance there, wrapped to the figure's width; then
    lay the panels out above it (and below the title)."""
    chars = int(fig.get_figwidth() * 72 / (0.52 * CAPTION_SIZE))
    text = "\n".join(textwrap.fill(line, chars, subsequent_indent="    ", break_on_hyphens=False) for line in lines)
    panels = fig.get_figheight()
    extra = (text.count("\n") + 1) * CAPTION_SIZE * 1.45 / 72 + 0.15
    fig.set_figheight(panels + extra)
    fig.text(0.008, 0.008, text, fontsize=CAPTION_SIZE, color="0.3", ha="left", va="bottom", gid="caption",
             linespacing=1.3)
    if title:
        fig.suptitle(title, fontsize=13, fontweight="bold")
    fig.tight_layout(rect=(0, extra / fig.get_figheight(), 1, 1))  # tight_layout leaves room for the suptitle


def panels(count: int, *, width: float = PANEL_WIDTH, height: float = PANEL_HEIGHT) -> tuple[Figure, list[Axes]]:
    """A figure of `count` panels, at most MAX_COLUMNS side by side and wrapped onto rows beyond that."""
    columns = min(count, MAX_COLUMNS)
    rows = math.ceil(count / columns)
    fig = Figure(figsize=(width * columns, height * rows))
    axes = list(fig.subplots(rows, columns, squeeze=False).ravel())
    for spare in axes[count:]:
        spare.remove()
    return fig, axes[:count]


def legend_below(ax: Axes, handles: list | None = None, *, columns: int = 2, size: float = 8) -> None:
    """The panel's legend under its x axis, where it covers no line."""
    handles = handles if handles is not None else ax.get_legend_handles_labels()[0]
    # Anchored a fixed distance under the axis (points, not a fraction of the panel's height), below the tick
    # labels and the axis label whatever the panel's size.
    below = offset_copy(ax.transAxes, fig=ax.figure, y=-LEGEND_DROP, units="points")
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0), bbox_transform=below, ncol=columns,
              fontsize=size, frameon=False, borderaxespad=0, handlelength=2.6)


def gap_axis(ax: Axes) -> Patch:
    """A training-error gap axis: linear within ±1 point and logarithmic beyond (GAP_TICKS), zero marked, so
    the first epochs' gap of tens of points and a final one of a point both read; the noise floor shaded, so a
    tie reads as one. Returns the shading's legend handle."""
    ax.axhline(0, color="0.3", lw=0.9)
    ax.axhspan(-NOISE_FLOOR, NOISE_FLOOR, color="0.55", alpha=0.15, lw=0, zorder=0, gid="noise-floor")
    ax.set_yscale("symlog", linthresh=1)
    ax.yaxis.set_major_locator(FixedLocator(GAP_TICKS))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:+g}" if value else "0"))
    ax.yaxis.set_minor_locator(NullLocator())
    return Patch(color="0.55", alpha=0.3, lw=0, label=f"within ±{NOISE_FLOOR:g} point, the noise floor: a tie")


def default_title(runs: pd.DataFrame, what: str) -> str:
    datasets = ", ".join(sorted(runs["dataset"].astype(str).unique()))
    presets = ", ".join(sorted(runs["preset"].astype(str).unique()))
    families = runs["family"].dropna().unique() if "family" in runs else []
    layout = {"cifar": ", CIFAR nets", "imagenet": ", ImageNet layout"}.get(families[0], "") if len(families) == 1 else ""
    return f"{what}: {datasets}, {presets} preset{layout}"


def net_line(ax: Axes, x: np.ndarray, y: np.ndarray, arch: str, depth: int, color: tuple, gid: str) -> Line2D:
    """One net's line, labelled arch-depth, in its arch's line style and marker (the layer and schedule figures)."""
    label = f"{arch}-{depth}"
    (line,) = ax.plot(x, y, color=color, lw=1.6, ms=3.2 if len(x) <= 60 else 0, label=label, gid=gid,
                      **arch_lines([arch])[arch])
    return line
