"""The speed figure of one measurement setting (`bench time`): throughput against depth per phase, and where
a train step's time goes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import NullLocator

from bench.core.records import PHASES
from bench.report.drawing import add_caption, style
from bench.report.styles import arch_colors
from bench.report.tables import breakdown
from bench.results.prose import timing_provenance
from resnet import paper_archs


PHASE_LABELS = {"forward": "forward", "forward_backward": "forward + backward", "train_step": "train step"}
PHASE_STYLES = {"forward": ":", "forward_backward": "--", "train_step": "-"}


def _depth_axis(ax: Axes, depths: list[int]) -> None:
    """Depth on a log axis (18..152 and 20..1202 both fit) with a tick at every measured depth."""
    ax.set_xscale("log")
    ax.set_xlim(min(depths) / 1.25, max(depths) * 1.25)  # room for markers and notes at the ends
    ax.set_xticks(depths, [str(d) for d in depths])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("depth (layers)")


def timing_figure(timing: pd.DataFrame, setting: dict, *, title: str | None = None) -> Figure:
    """Speed of one measurement setting (one device, precision, batch, input): images/s against depth for
    plain and residual nets and each phase (left), and the time per batch split into forward, backward and
    optimizer step (right). torchvision's reference nets appear as hollow grey markers."""
    colors = arch_colors()
    depths = sorted(int(d) for d in timing["depth"].unique())
    with style():
        fig = Figure(figsize=(12, 4.8))
        left, right = fig.subplots(1, 2)
        for arch in ("plain", "residual", "torchvision"):
            for phase in PHASES:
                rows = timing[(timing["arch"] == arch) & (timing["phase"] == phase)].sort_values("depth")
                if rows.empty:
                    continue
                if arch == "torchvision":
                    left.plot(rows["depth"], rows["images_per_second"], ls="", marker="D", ms=7, mfc="none",
                              mec=colors[arch], mew=1.5, gid=f"{arch}-{phase}")
                else:
                    left.plot(rows["depth"], rows["images_per_second"], color=colors[arch], ls=PHASE_STYLES[phase],
                              lw=2, marker="o", ms=5, gid=f"{arch}-{phase}")
        # One legend entry per colour and one per line style, not one per line; headroom above the data
        # keeps the legend off the lines.
        archs = [a for a in ("plain", "residual") if (timing["arch"] == a).any()]
        handles = [Line2D([], [], color=colors[a], lw=2, marker="o", ms=5, label=a) for a in archs]
        if (timing["arch"] == "torchvision").any():
            handles.append(Line2D([], [], ls="", marker="D", ms=7, mfc="none", mec=colors["torchvision"], mew=1.5,
                                  label="torchvision reference"))
        handles += [Line2D([], [], color="0.35", lw=2, ls=PHASE_STYLES[p], label=PHASE_LABELS[p])
                    for p in PHASES if (timing["phase"] == p).any()]
        left.legend(handles=handles, fontsize=8.5, loc="upper right", ncol=2)
        throughput = timing["images_per_second"].dropna()
        if len(throughput) and throughput.max() / max(throughput.min(), 1e-9) > 20:
            left.set_yscale("log")
            left.set_ylim(throughput.min() / 1.5, throughput.max() * 4)
        elif len(throughput):
            left.set_ylim(0, throughput.max() * 1.45)
        tried = timing[timing["arch"] != "torchvision"]
        for (arch, depth), rows in tried.groupby(["arch", "depth"]):  # tried, but no number to draw
            failed = rows.loc[rows["images_per_second"].isna(), "phase"]
            if failed.empty:
                continue
            what = "" if len(failed) == len(rows) else ": " + ", ".join(PHASE_LABELS.get(p, p) for p in failed)
            left.annotate(f"{arch} OOM{what}", (depth, 0.03 + 0.06 * (arch == "residual")),
                          xycoords=("data", "axes fraction"), ha="center", fontsize=8, color=colors[arch],
                          fontweight="bold")
        _depth_axis(left, depths)
        left.set_ylabel("throughput (images/s)")
        left.set_title("throughput against depth", fontsize=12)
        _breakdown_bars(right, timing, colors)
        right.set_ylabel(f"time per batch of {setting['batch_size']} (ms)")
        right.set_title("where the time goes: forward, backward, optimizer", fontsize=12)
        add_caption(fig, timing_provenance(setting, timing), title=title or
                    f"Speed: {setting['device_name']}, {setting['precision']}, batch {setting['batch_size']}")
    return fig


def _breakdown_bars(ax: Axes, timing: pd.DataFrame, colors: dict[str, tuple]) -> None:
    """Stacked bars per depth, plain (hatched) beside residual; a phase not measured is left out."""
    parts = breakdown(timing[timing["arch"].isin(paper_archs())])
    depths = sorted(parts["depth"].unique())
    shades = dict(zip(("forward", "backward", "optimizer"), sns.color_palette("crest", 3)))
    position = {depth: i for i, depth in enumerate(depths)}
    for offset, arch in ((-0.2, "plain"), (0.2, "residual")):
        rows = parts[parts["arch"] == arch]
        if rows.empty:
            continue
        x = rows["depth"].map(position).to_numpy() + offset
        bottom = np.zeros(len(rows))
        for part, shade in shades.items():
            height = rows[part].clip(lower=0).fillna(0).to_numpy()
            ax.bar(x, height, 0.38, bottom=bottom, color=shade, hatch="//" if arch == "plain" else None,
                   edgecolor="white", lw=0.6, gid=f"{arch}-{part}")
            bottom += height
        # The measured train step: where the stack misses it, the phases were timed with noise.
        ax.plot(x, rows["total"], ls="", marker="_", ms=26, mew=2.2, color="black", zorder=4, gid=f"{arch}-total")
    ax.margins(y=0.08)
    ax.set_xticks(range(len(depths)), [str(d) for d in depths])
    ax.set_xlabel("depth (layers)")
    handles = [Patch(color=shade, label=part) for part, shade in shades.items()]
    handles.append(Line2D([], [], ls="", marker="_", ms=14, mew=2.2, color="black", label="train step, measured"))
    handles += [Patch(facecolor="white", edgecolor="0.3", hatch="//", label="plain (left bar)"),
                Patch(facecolor="white", edgecolor="0.3", label="residual (right bar)")]
    ax.legend(handles=handles, fontsize=8.5, loc="upper left")
