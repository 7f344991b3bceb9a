"""The schedule figures: final error against schedule length, and where a deeper net's training error crosses
the shallower's, iteration by iteration."""

from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from bench.report.drawing import add_caption, default_title, depth_colors, gap_axis, legend_below, net_line, style
from bench.report.styles import arch_lines, arch_order, arch_title, line_words
from bench.results.prose import schedule_provenance
from resnet import paper_archs


def schedule_figure(table: pd.DataFrame, runs: pd.DataFrame, *, colors: dict[int, tuple] | None = None,
                    title: str | None = None) -> Figure:
    """Final training error (left) and test error (right) against schedule length, one line per net finished at
    two lengths or more: where a deeper net starts to pay off. `table` is `tables.schedule_table`; each arch has
    its line style and marker. A line joins only lengths next to each other in the table, so it never runs
    through a length that net was not run at. Where the table mixes precisions, each precision's points get
    their own marker fill (fp32 filled, others hollow) and the line joins the mean over every run of a length."""
    colors = colors or depth_colors(table["depth"])
    lengths = sorted(table["iterations"].unique())
    precisions = sorted(table["precision"].unique(), key=lambda p: (p != "fp32", p))
    mixed = len(precisions) > 1
    drawn = table.groupby(["arch", "depth"]).filter(lambda net: net["iterations"].nunique() >= 2)
    lines = arch_lines(table["arch"])
    left_out = sorted({f"{arch}-{depth}" for arch, depth in zip(table["arch"], table["depth"])}
                      - {f"{arch}-{depth}" for arch, depth in zip(drawn["arch"], drawn["depth"])})
    with style():
        fig = Figure(figsize=(12, 4.4))
        axes = fig.subplots(1, 2, sharey=True)
        for ax, column, what in zip(axes, ("final_train", "final_test"), ("training", "test")):
            for (arch, depth), net in drawn.groupby(["arch", "depth"]):
                sums = net.assign(total=net[column] * net["seeds"]).groupby("iterations")[["total", "seeds"]].sum()
                # NaN at a length the net lacks breaks the line there.
                mean = (sums["total"] / sums["seeds"]).reindex(lengths)
                line = net_line(ax, mean.index.to_numpy(), mean.to_numpy(), arch, depth, colors[depth],
                                 f"{arch}-{depth}-{column}")
                line.set_markersize(5)
                if mixed:
                    line.set_marker("None")
                    for precision, points in net.groupby("precision"):
                        ax.plot(points["iterations"], points[column], ls="none", marker=lines[arch]["marker"],
                                ms=6, color=colors[depth], mfc=colors[depth] if precision == "fp32" else "white",
                                gid=f"{arch}-{depth}-{column}-{precision}")
            ax.set_xscale("log", base=2)
            ax.set_xticks(lengths, [f"{n:,}" for n in lengths])
            ax.minorticks_off()
            ax.set_xlim(lengths[0] / 1.25, lengths[-1] * 1.25)
            ax.set_xlabel("schedule length (iterations)")
            ax.set_title(f"final {what} error", fontsize=11)
        axes[0].set_ylabel("error (%)")
        axes[0].set_ylim(0, None)
        # Legend entries with the marker the points carry, so every marker drawn is named.
        handles = [Line2D([], [], color=colors[depth], lw=1.6, ls=lines[arch]["ls"], ms=6,
                          marker=lines[arch]["marker"], label=f"{arch}-{depth}")
                   for (arch, depth), _ in drawn.groupby(["arch", "depth"])]
        if mixed:
            handles += [Line2D([], [], ls="none", marker="o", color="0.4", mfc="0.4" if p == "fp32" else "white",
                               label=f"{p} ({'filled' if p == 'fp32' else 'hollow'})") for p in precisions]
        legend_below(axes[1], handles, columns=3)
        words = line_words(drawn["arch"])
        key = "; ".join(f"{words[a]}: {a}" for a in arch_order(drawn["arch"]) if (drawn["arch"] == a).any())
        notes = ["Each point: a whole run of that length (the lr decays scale with it), finished; mean over seeds. "
                 f"{key[:1].upper()}{key[1:]}. A line joins lengths next to each other only: a gap in it is a "
                 "length not run."]
        if left_out:
            notes.append(f"Run at one length only, so in the table and not drawn: {', '.join(left_out)}.")
        if mixed:
            notes.append(f"Precisions mixed ({', '.join(precisions)}): fp32 points filled, "
                         f"{', '.join(precisions[1:])} hollow; where a length has both, the line joins the mean "
                         "over all its runs.")
        add_caption(fig, [*schedule_provenance(runs), *notes],
                    title=title or default_title(runs, "Final error against schedule length"))
    return fig


def crossing_figure(gaps: pd.DataFrame, crossed: pd.DataFrame, runs: pd.DataFrame, *,
                    title: str | None = None) -> Figure:
    """A deeper net's training error minus a shallower one's against iteration, one panel per arch and one line
    per schedule length (and precision and seed, where they vary): below zero the deeper net trains better;
    a dot where a curve goes below for good. `gaps` is `tables.training_gaps`, `crossed` is `tables.crossings` of
    it (the dots, as the report's table states them). The y axis is linear within
    ±1 point and logarithmic beyond, so that the first epochs' gap of tens of points and a crossing of a
    tenth of a point are both legible."""
    archs = [a for a in paper_archs() if a in set(gaps["arch"])]
    lines = arch_lines(gaps["arch"])
    lengths = sorted(gaps["iterations"].unique())
    palette = dict(zip(lengths, sns.color_palette("viridis_r", len(lengths) + 1)[1:]))
    varies = [k for k in ("precision", "seed") if gaps[k].nunique() > 1]
    settles = crossed.set_index(["arch", "shallow", "deep", "iterations", "precision", "seed"])
    with style():
        fig = Figure(figsize=(6 * len(archs), 4.6))
        axes = np.atleast_1d(fig.subplots(1, len(archs), squeeze=False)[0])
        for ax, arch in zip(axes, archs):
            keys = ["shallow", "deep", "iterations", "precision", "seed"]
            for (shallow, deep, iterations, precision, seed), curve in gaps[gaps["arch"] == arch].groupby(keys):
                extra = ", ".join(f"seed {seed}" if k == "seed" else precision for k in varies)
                label = (f"{arch}-{deep} minus {arch}-{shallow}, {iterations:,} iterations"
                         + (f" ({extra})" if extra else ""))
                gid = f"{arch}-{deep}-{shallow}-{iterations}-{precision}-s{seed}"
                ax.plot(curve["iteration"], curve["gap"], color=palette[iterations], lw=1.5, label=label, gid=gid,
                        **lines[arch], ms=0)
                settled = settles.loc[(arch, shallow, deep, iterations, precision, seed), "below_from"]
                if pd.notna(settled):
                    ax.plot([settled], curve.loc[curve["iteration"] == settled, "gap"].to_numpy(), "o",
                            color=palette[iterations], ms=6, mec="black", mew=0.6, zorder=5, gid=f"{gid}-crossing")
            noise = gap_axis(ax)
            ax.set_xlabel("iteration")
            ax.set_title(f"{arch_title(arch)}: deeper minus shallower", fontsize=11)
            dots = [Line2D([], [], ls="", marker="o", ms=6, color="0.5", mec="black", mew=0.6,
                           label="below from here to the end")] if any(
                (line.get_gid() or "").endswith("-crossing") for line in ax.get_lines()) else []
            legend_below(ax, [*ax.get_legend_handles_labels()[0], *dots, noise], columns=1)
        axes[0].set_ylabel("training error gap (points)")
        add_caption(fig, [*schedule_provenance(runs),
                          "Training error of each epoch (running, augmented) of the deeper net minus the shallower's "
                          "of one schedule and seed; below zero the deeper trains better. Dot: the epoch from which "
                          "it stays below to the end. y: linear within ±1 point, logarithmic beyond."],
                    title=title or default_title(runs, "Where the deeper net crosses the shallower"))
    return fig
