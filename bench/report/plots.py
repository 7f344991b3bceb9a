"""The report's figures as matplotlib Figure objects: the paper's Figures 1, 4/6 and the timing plots.

Figures are built without pyplot (no GUI backend, no global figure list to leak) and styled with seaborn
inside a local rc context, so importing this module changes nothing for anyone else. Every line carries a
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
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullLocator

from bench.core.errors import BenchError
from bench.core.records import DIVERGED, PHASES, UNFINISHED
from bench.report.styles import arch_colors, arch_lines, arch_order, arch_title, drawn_archs, line_key, line_words
from bench.report.tables import breakdown, curve_gaps, curves, with_percent
from bench.results.fitting import FIT_ERROR, NOISE_FLOOR, fit_pass
from bench.results.prose import fit_caption, provenance_lines, schedule_provenance, timing_provenance
from resnet import paper_archs

BANDS = {"minmax": "min to max over seeds", "std": "mean ± 1 std over seeds"}
TRAIN_WIDTH, TEST_WIDTH = 1.1, 2.4
PHASE_LABELS = {"forward": "forward", "forward_backward": "forward + backward", "train_step": "train step"}
PHASE_STYLES = {"forward": ":", "forward_backward": "--", "train_step": "-"}
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


def x_axis(epochs: pd.DataFrame, runs: pd.DataFrame, x: str = "auto") -> tuple[str, float, str]:
    """(column, divisor, label) of the x axis: iterations (x10^4 on long runs, as the paper) for runs
    scheduled by iterations, epochs for runs scheduled by epochs, unless `x` names one."""
    if x == "auto":
        x = "iteration" if "iterations" in runs and runs["iterations"].notna().all() else "epoch"
    if x == "epoch":
        return "epoch", 1.0, "epochs"
    if x == "iteration":
        if epochs["iteration"].max() >= 20_000:
            return "iteration", 1e4, r"iterations ($\times 10^4$)"
        return "iteration", 1.0, "iterations"
    raise BenchError(f"unknown x axis {x!r}: choose auto, iteration or epoch")


def _x_limits(ax: Axes, epochs: pd.DataFrame, runs: pd.DataFrame, xcol: str, scale: float) -> None:
    """From 0 to the planned end of the schedule, so a run in progress shows how far it has come; whole
    epochs only."""
    planned = runs["epochs_total"] if xcol == "epoch" else runs.get("iterations", pd.Series(dtype=float))
    end = max(pd.to_numeric(planned, errors="coerce").max(), epochs[xcol].max()) / scale
    ax.set_xlim(0, end * 1.02 if end > 0 else 1)
    if xcol == "epoch":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _band(curve: pd.DataFrame, kind: str, band: str) -> tuple[pd.Series, pd.Series]:
    if band == "std":
        spread = curve[f"{kind}_std"].fillna(0)
        return curve[f"{kind}_mean"] - spread, curve[f"{kind}_mean"] + spread
    return curve[f"{kind}_min"], curve[f"{kind}_max"]


def _top(data: pd.DataFrame, kinds: Iterable[str], band: str) -> float:
    """Upper y limit: the highest plotted value (bands included, so no point leaves the plot), rounded up to 5%."""
    values = []
    for _, curve in data.groupby(["arch", "depth"]):
        for kind in kinds:
            values.extend(_band(curve, kind, band)[1].dropna())
    top = max(values, default=math.nan) * 1.06
    return 100.0 if math.isnan(top) else min(100.0, max(5.0, 5 * math.ceil(top / 5)))


def _draw(ax: Axes, curve: pd.DataFrame, kind: str, *, scale: float, color: tuple, band: str, bold: bool,
          gid: str) -> None:
    """The mean over seeds as a line, with its band when there is more than one seed."""
    x = curve["x"] / scale
    width = TEST_WIDTH if bold else TRAIN_WIDTH
    marker = "o" if len(curve) <= 25 else None  # a short run's points, or a one-epoch line, stay visible
    ax.plot(x, curve[f"{kind}_mean"], color=color, lw=width, ls="-" if bold else "--", marker=marker,
            ms=3.5 if bold else 2.5,
            gid=gid, zorder=3 if bold else 2)
    if curve["seeds"].max() > 1:
        low, high = _band(curve, kind, band)
        ax.fill_between(x, low, high, color=color, alpha=0.2 if bold else 0.1, lw=0, zorder=1)


def _state_note(runs: pd.DataFrame) -> str:
    """'(running, 3/10 epochs)' style legend note for the unfinished and diverged runs of one line."""
    notes = []
    for run in runs.itertuples():
        seed = f"seed {run.seed} " if len(runs) > 1 else ""
        total = "?" if pd.isna(run.epochs_total) else int(run.epochs_total)
        if run.state in UNFINISHED:
            notes.append(f"{seed}{run.state}, {run.epochs_done}/{total} epochs")
        elif run.state == DIVERGED:
            epoch = run.diverged_epoch if pd.notna(run.diverged_epoch) else run.epochs_done
            notes.append(f"{seed}diverged at epoch {int(epoch)}")
    return f" ({'; '.join(notes)})" if notes else ""


def _mark_states(ax: Axes, epochs: pd.DataFrame, runs: pd.DataFrame, curve: pd.DataFrame, *, kind: str,
                 xcol: str, scale: float, color: tuple, top: float) -> set[str]:
    """An open circle at the last epoch of each unfinished run (on its own `kind` error) and an x on the mean
    line where each diverged run stopped; returns which kinds of mark were drawn."""
    drawn = set()
    frame = with_percent(epochs)
    mean = curve.set_index("epoch")[f"{kind}_mean"]
    for run in runs.itertuples():
        if run.state not in (*UNFINISHED, DIVERGED):
            continue
        rows = frame[frame["run_id"] == run.run_id].sort_values("epoch")
        if rows.empty:
            continue
        own = rows[kind].dropna()
        last = own.iloc[-1] if len(own) else top
        if run.state == DIVERGED:
            at = rows[rows["epoch"] == run.diverged_epoch] if pd.notna(run.diverged_epoch) else rows.iloc[:0]
            row = at.iloc[-1] if len(at) else rows.iloc[-1]
            y = mean.get(row["epoch"], math.nan)
            ax.plot(row[xcol] / scale, min(last if pd.isna(y) else y, top), marker="X", ms=11, color=color,
                    mec="black", mew=0.8, ls="", clip_on=False, zorder=5,
                    gid=f"{run.arch}-{run.depth}-s{run.seed}-diverged")
            drawn.add(DIVERGED)
        else:
            ax.plot(rows.iloc[-1][xcol] / scale, min(last, top), marker="o", ms=10, mfc="white", mec=color, mew=2,
                    ls="", clip_on=False, zorder=5, gid=f"{run.arch}-{run.depth}-s{run.seed}-{run.state}")
            drawn.add("unfinished")
    return drawn


def _mark_fits(ax: Axes, epochs: pd.DataFrame, runs: pd.DataFrame, *, xcol: str, scale: float,
               color: tuple) -> set[str]:
    """A triangle on the floor at the pass where each run that ends fitted first fit (bench.results.fitting)."""
    drawn = set()
    for run in runs.itertuples():
        rows = epochs[epochs["run_id"] == run.run_id].sort_values("epoch")
        if (at := fit_pass(rows["train_error"])) is None:
            continue
        ax.plot(rows[xcol].iloc[at - 1] / scale, 0, marker="^", ms=8, color=color, mec="white", mew=0.8, ls="",
                clip_on=False, zorder=6, gid=f"{run.arch}-{run.depth}-s{run.seed}-fit")
        drawn.add("fit")
    return drawn


def _mark_handles(drawn: set[str]) -> list[Line2D]:
    handles = []
    if "fit" in drawn:
        handles.append(Line2D([], [], marker="^", ms=8, color="0.3", ls="",
                              label=f"first fit (training error <= {FIT_ERROR:.1%})"))
    if "unfinished" in drawn:
        handles.append(Line2D([], [], marker="o", ms=8, mfc="white", mec="0.3", mew=2, ls="",
                              label="last epoch so far (unfinished run)"))
    if DIVERGED in drawn:
        handles.append(Line2D([], [], marker="X", ms=9, color="0.5", mec="black", mew=0.8, ls="",
                              label="diverged here (loss NaN/inf)"))
    return handles


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


def _gap_axis(ax: Axes) -> Patch:
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


def _default_title(runs: pd.DataFrame, what: str) -> str:
    datasets = ", ".join(sorted(runs["dataset"].astype(str).unique()))
    presets = ", ".join(sorted(runs["preset"].astype(str).unique()))
    families = runs["family"].dropna().unique() if "family" in runs else []
    layout = {"cifar": ", CIFAR nets", "imagenet": ", ImageNet layout"}.get(families[0], "") if len(families) == 1 else ""
    return f"{what}: {datasets}, {presets} preset{layout}"


def degradation_figure(epochs: pd.DataFrame, runs: pd.DataFrame, *, x: str = "auto", band: str = "minmax",
                       colors: dict[int, tuple] | None = None, title: str | None = None) -> Figure:
    """The paper's Figures 4 and 6: plain nets, their residual twins, then a panel for each other arch
    (resnet.archs) that has runs, one colour per depth, thin dashed training error and bold test error,
    mean over seeds with a band (`band`: "minmax" or "std"), one y range for all. Where an arch has two depths,
    a last panel draws each net's training error minus the next shallower one's (`tables.curve_gaps`), on an
    axis where a gap of a point reads as well as one of tens: the residual half of the paper is a point or two.
    Panels wrap at MAX_COLUMNS. `runs` must carry state, epochs_done, epochs_total, diverged_epoch.
    """
    if band not in BANDS:
        raise BenchError(f"unknown band {band!r}: choose one of {', '.join(BANDS)}")
    epochs = epochs[epochs["run_id"].isin(runs["run_id"])]
    xcol, scale, xlabel = x_axis(epochs, runs, x)
    data = curves(epochs, xcol)
    gaps = curve_gaps(data)
    colors = colors or depth_colors(data["depth"])
    top = _top(data, ("train", "test"), band)
    archs = drawn_archs(runs)
    with style():
        fig, axes = panels(len(archs) + (not gaps.empty))
        for ax, arch in zip(axes, archs):
            handles, drawn = [], set()
            for depth, curve in data[data["arch"] == arch].groupby("depth"):
                color = colors[depth]
                line_runs = runs[(runs["arch"] == arch) & (runs["depth"] == depth)]
                for kind in ("train", "test"):
                    _draw(ax, curve, kind, scale=scale, color=color, band=band, bold=kind == "test",
                          gid=f"{arch}-{depth}-{kind}")
                drawn |= _mark_states(ax, epochs, line_runs, curve, kind="test", xcol=xcol, scale=scale, color=color,
                                      top=top)
                drawn |= _mark_fits(ax, epochs, line_runs, xcol=xcol, scale=scale, color=color)
                handles.append(Line2D([], [], color=color, lw=TEST_WIDTH,
                                      label=f"{arch}-{depth}{_state_note(line_runs)}"))
            ax.set_title(arch_title(arch), fontsize=11)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("error (%)")
            ax.set_ylim(0, top)
            _x_limits(ax, epochs, runs, xcol, scale)
            if not handles:
                ax.text(0.5, 0.5, f"no {arch} runs yet", transform=ax.transAxes, ha="center", color="0.4")
                continue
            handles += [Line2D([], [], color="0.35", lw=TRAIN_WIDTH, ls="--", label="training error"),
                        Line2D([], [], color="0.35", lw=TEST_WIDTH, label="test error"), *_mark_handles(drawn)]
            legend_below(ax, handles)
        notes = [f"Thin dashed: training error; bold: test error"
                 + (f"; line: mean over seeds, band: {BANDS[band]}." if runs["seed"].nunique() > 1 else ".")
                 + " Each run's last training error is pooled over its last whole epoch of iterations, as the "
                   "tables give it."]
        if not gaps.empty:
            _gap_panel(axes[-1], gaps, scale=scale, xlabel=xlabel)
            _x_limits(axes[-1], epochs, runs, xcol, scale)
            notes.append("Last panel: each net's training error minus the next shallower net's of its arch, epoch by "
                         "epoch; below 0 the deeper net trains better; grey: within the noise floor, a tie (the "
                         "verdicts use the seed spread where two seeds were run). y: linear within ±1 point, "
                         "logarithmic beyond.")
        fit = [line] if (line := fit_caption(runs)) else []
        add_caption(fig, [*provenance_lines(runs), *notes, *fit],
                    title=title or _default_title(runs, "Training plain vs residual networks"))
    return fig


def _gap_panel(ax: Axes, gaps: pd.DataFrame, *, scale: float, xlabel: str) -> None:
    """`tables.curve_gaps` as one line per pair, in the arch's colour and line style."""
    colors, lines = arch_colors(gaps["arch"]), arch_lines(gaps["arch"])
    for (arch, shallow, deep), curve in gaps.groupby(["arch", "shallow", "deep"], sort=False):
        style_of = lines[arch]
        ax.plot(curve["x"] / scale, curve["gap"], color=colors[arch], lw=1.8, ls=style_of["ls"],
                marker=style_of["marker"] if len(curve) <= 25 else None, ms=3,
                gid=f"{arch}-{deep}-{shallow}-gap", label=f"{arch}-{deep} minus {arch}-{shallow}")
    noise = _gap_axis(ax)
    ax.set_title("training error, deeper minus shallower", fontsize=11)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("gap (points)")
    legend_below(ax, [*ax.get_legend_handles_labels()[0], noise], columns=1)


def depth_figure(epochs: pd.DataFrame, runs: pd.DataFrame, depth: int, *, x: str = "auto", band: str = "minmax",
                 title: str | None = None) -> Figure:
    """Every arch at one depth on one axis, training error (left) and test error (right) on the same y range, one
    colour per arch: the remedies beside plain and residual without reading across the degradation figure's
    panels."""
    runs = runs[runs["depth"] == depth]
    epochs = epochs[epochs["run_id"].isin(runs["run_id"])]
    xcol, scale, xlabel = x_axis(epochs, runs, x)
    data = curves(epochs, xcol)
    colors = arch_colors(data["arch"])
    lines = [(f"{arch}-{depth}", f"{arch}-{depth}", data[data["arch"] == arch], runs[runs["arch"] == arch],
              colors[arch]) for arch in arch_order(data["arch"]) if (data["arch"] == arch).any()]
    top = _top(data, ("train", "test"), band)
    # On a log axis the archs that end a point or two apart stay apart beside one that ends tens of points above;
    # a net fitted to 0% has no place on it.
    log = bool((data["train_min"].dropna() >= 1).all())
    with style():
        fig = Figure(figsize=(12, 4.6))
        for ax, kind in zip(fig.subplots(1, 2, sharex=True), ("train", "test")):
            _error_panel(ax, epochs, runs, lines, kind, xcol=xcol, scale=scale, xlabel=xlabel, band=band, top=top,
                         fits=kind == "train", log=log and kind == "train")
        spread = (f"Line: mean over seeds, band: {BANDS[band]}." if runs["seed"].nunique() > 1
                  else "One seed per net.")
        if log:
            spread += " Training error on a log axis, so that nets a point apart stay apart."
        add_caption(fig, [*provenance_lines(runs), spread],
                    title=title or _default_title(runs, f"Every arch at {depth} layers"))
    return fig


def _error_panel(ax: Axes, epochs: pd.DataFrame, runs: pd.DataFrame, lines: list[tuple], kind: str, *, xcol: str,
                 scale: float, xlabel: str, band: str, top: float, fits: bool = False, log: bool = False) -> None:
    """One panel of `kind` error ("train" or "test"): a bold line per (gid, label, curve, runs, colour) of
    `lines`, each with its state marks (and, with `fits`, where it first fit), a legend under it, and the axes
    from 0 to `top` (with `log`, a log axis from just below the lowest band) and over the planned schedule of
    `runs`."""
    handles, drawn = [], set()
    for gid, label, curve, line_runs, color in lines:
        _draw(ax, curve, kind, scale=scale, color=color, band=band, bold=True, gid=f"{gid}-{kind}")
        drawn |= _mark_states(ax, epochs, line_runs, curve, kind=kind, xcol=xcol, scale=scale, color=color, top=top)
        if fits:
            drawn |= _mark_fits(ax, epochs, line_runs, xcol=xcol, scale=scale, color=color)
        handles.append(Line2D([], [], color=color, lw=TEST_WIDTH, label=f"{label}{_state_note(line_runs)}"))
    legend_below(ax, handles + _mark_handles(drawn), columns=3)
    if log:
        low = min(_band(curve, kind, band)[0].min() for _, _, curve, _, _ in lines)
        ax.set_yscale("log")
        ax.set_ylim(low / 1.15, top)
        ticks = [t for t in (1, 2, 5, 10, 15, 20, 30, 50, 70, 100) if low / 1.15 <= t <= top]
        ax.yaxis.set_major_locator(FixedLocator(ticks))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.yaxis.set_minor_locator(NullLocator())
    else:
        ax.set_ylim(0, top)
    _x_limits(ax, epochs, runs, xcol, scale)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{'training' if kind == 'train' else 'test'} error (%)")


def figure1(epochs: pd.DataFrame, runs: pd.DataFrame, *, x: str = "auto", band: str = "minmax",
            colors: dict[int, tuple] | None = None, title: str | None = None) -> Figure:
    """The paper's Figure 1: training error (left) and test error (right) of the shallowest and the deepest
    plain nets. Needs plain runs at two depths or more."""
    plain = runs[runs["arch"] == "plain"]
    depths = sorted(plain["depth"].unique())
    if len(depths) < 2:
        raise BenchError("Figure 1 needs plain runs at two depths: run e.g. `bench run --depths 18 34`")
    plain = plain[plain["depth"].isin([depths[0], depths[-1]])]
    epochs = epochs[epochs["run_id"].isin(plain["run_id"])]
    xcol, scale, xlabel = x_axis(epochs, plain, x)
    data = curves(epochs, xcol)
    colors = colors or depth_colors(depths)
    lines = [(f"plain-{depth}", f"plain-{depth}", curve, plain[plain["depth"] == depth], colors[depth])
             for depth, curve in data.groupby("depth")]
    with style():
        fig = Figure(figsize=(12, 4.5))
        for ax, kind in zip(fig.subplots(1, 2, sharex=True), ("train", "test")):
            _error_panel(ax, epochs, plain, lines, kind, xcol=xcol, scale=scale, xlabel=xlabel, band=band,
                         top=_top(data, (kind,), band))
        spread = (f"Line: mean over seeds, band: {BANDS[band]}." if plain["seed"].nunique() > 1
                  else "One seed per depth.")
        add_caption(fig, [*provenance_lines(plain), spread],
                    title=title or _default_title(plain, f"Plain {depths[0]} vs {depths[-1]} layers"))
    return fig


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


def _net_line(ax: Axes, x: np.ndarray, y: np.ndarray, arch: str, depth: int, color: tuple, gid: str) -> Line2D:
    label = f"{arch}-{depth}"
    (line,) = ax.plot(x, y, color=color, lw=1.6, ms=3.2 if len(x) <= 60 else 0, label=label, gid=gid,
                      **arch_lines([arch])[arch])
    return line


def figure7(profile: pd.DataFrame, runs: pd.DataFrame, *, colors: dict[int, tuple] | None = None,
            title: str | None = None) -> Figure:
    """The paper's Figure 7: the std of each 3x3 layer's response (BN output, before ReLU and addition) in
    network order (left) and sorted by magnitude (right), plain (dashed) and residual (solid) nets of every
    depth overlaid. `profile` is `tables.layer_profile(layers, "response_std")`."""
    colors = colors or depth_colors(profile["depth"])
    with style():
        fig = Figure(figsize=(12, 4.6))
        axes = fig.subplots(1, 2, sharey=True)
        for (arch, depth), net in profile.sort_values("layer").groupby(["arch", "depth"]):
            values = net["value"].to_numpy()
            x = np.arange(1, len(values) + 1)
            _net_line(axes[0], x, values, arch, depth, colors[depth], f"{arch}-{depth}-layer")
            _net_line(axes[1], x, np.sort(values)[::-1], arch, depth, colors[depth], f"{arch}-{depth}-sorted")
        for ax, xlabel in zip(axes, ("layer index (original)", "layer index (sorted by magnitude)")):
            ax.set_xlabel(xlabel)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes[0].set_ylabel("std of the layer's response")
        axes[0].set_ylim(bottom=0)
        legend_below(axes[1], columns=3)
        iterations = ", ".join(f"{i:,}" for i in sorted({int(i) for i in profile["iteration"]}))
        add_caption(fig, [*provenance_lines(runs),
                          f"Responses: each 3x3 layer's BatchNorm output before ReLU and addition, eval mode, at each "
                          f"run's last measurement (iteration {iterations}), over 1,000 test images spread over the "
                          f"split (`bench analyze`: the whole split); mean over seeds. {line_key(runs)}"],
                    title=title or _default_title(runs, "Std of layer responses (Figure 7)"))
    return fig


def gradient_figure(first: pd.DataFrame, last: pd.DataFrame, runs: pd.DataFrame, *,
                    colors: dict[int, tuple] | None = None, title: str | None = None) -> Figure:
    """The L2 norm of each conv weight's gradient across depth, at the first iteration (left) and at the last
    measurement (right), log scale. `first`/`last` are `tables.layer_profile(layers, "grad_norm", ...)`."""
    colors = colors or depth_colors(pd.concat([first["depth"], last["depth"]]))
    with style():
        fig = Figure(figsize=(12, 4.6))
        axes = fig.subplots(1, 2, sharey=True)
        for ax, profile, when in zip(axes, (first, last), ("first", "last")):
            for (arch, depth), net in profile.sort_values("layer").groupby(["arch", "depth"]):
                _net_line(ax, net["layer"].to_numpy(), net["value"].to_numpy(), arch, depth, colors[depth],
                          f"{arch}-{depth}-grad-{when}")
            moments = sorted({int(i) for i in profile["iteration"]})
            ax.set_title(f"{'first iteration' if when == 'first' else 'last measurement'} "
                         f"(iteration {', '.join(f'{m:,}' for m in moments)})", fontsize=11)
            ax.set_xlabel("conv layer (network order, input to output)")
            ax.set_yscale("log")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes[0].set_ylabel("gradient norm of the conv weight")
        legend_below(axes[1], columns=3)
        add_caption(fig, [*provenance_lines(runs),
                          "Gradient: L2 norm of each main-path conv weight's gradient after backward, before the "
                          f"optimizer step; mean over seeds. {line_key(runs)}"],
                    title=title or _default_title(runs, "Gradient norm across depth"))
    return fig


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
                line = _net_line(ax, mean.index.to_numpy(), mean.to_numpy(), arch, depth, colors[depth],
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
                    title=title or _default_title(runs, "Final error against schedule length"))
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
            noise = _gap_axis(ax)
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
                    title=title or _default_title(runs, "Where the deeper net crosses the shallower"))
    return fig
