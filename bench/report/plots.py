"""The training-curve figures: the paper's Figures 4/6 (with the training-error gap panel) and 1, and every
arch at one depth; error against iteration or epoch, mean over seeds with a band, each run's state marked.
(bench.report.drawing has what every figure shares.)
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullLocator

from bench.core.errors import BenchError
from bench.core.records import DIVERGED, UNFINISHED
from bench.report.drawing import add_caption, default_title, depth_colors, gap_axis, legend_below, panels, style
from bench.report.styles import arch_colors, arch_lines, arch_order, arch_title, drawn_archs
from bench.report.tables import curve_gaps, curves, with_percent
from bench.results.fitting import FIT_ERROR, fit_pass
from bench.results.prose import fit_caption, provenance_lines


BANDS = {"minmax": "min to max over seeds", "std": "mean ± 1 std over seeds"}
TRAIN_WIDTH, TEST_WIDTH = 1.1, 2.4


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
                    title=title or default_title(runs, "Training plain vs residual networks"))
    return fig


def _gap_panel(ax: Axes, gaps: pd.DataFrame, *, scale: float, xlabel: str) -> None:
    """`tables.curve_gaps` as one line per pair, in the arch's colour and line style."""
    colors, lines = arch_colors(gaps["arch"]), arch_lines(gaps["arch"])
    for (arch, shallow, deep), curve in gaps.groupby(["arch", "shallow", "deep"], sort=False):
        style_of = lines[arch]
        ax.plot(curve["x"] / scale, curve["gap"], color=colors[arch], lw=1.8, ls=style_of["ls"],
                marker=style_of["marker"] if len(curve) <= 25 else None, ms=3,
                gid=f"{arch}-{deep}-{shallow}-gap", label=f"{arch}-{deep} minus {arch}-{shallow}")
    noise = gap_axis(ax)
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
                    title=title or default_title(runs, f"Every arch at {depth} layers"))
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
                    title=title or default_title(plain, f"Plain {depths[0]} vs {depths[-1]} layers"))
    return fig
