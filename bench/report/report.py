"""`bench report`: the paper's figures and tables from whatever is under one or more results folders.

    reports/
        README.md                      every figure and table, with where the numbers came from
        <dataset>-<preset>/            one set per experiment: degradation.png, figure1.png,
                                       errors.{md,csv}, gaps.{md,csv}, degradation.{md,csv}, and where the
                                       runs have layers.parquet: figure7.png, gradients.png,
                                       responses.{md,csv}, figure7.csv, gradients.csv
        timing/<device>-<precision>-.../  speed.png and speed.{md,csv} per measurement setting
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from bench.results import prose

from bench.core.config import EXECUTION_FIELDS, FORMATS, RunConfig
from bench.core.errors import BenchError, Notify
from bench.report import tables
from bench.results.fitting import FIT_ERROR, NOISE_FLOOR, is_tie
from bench.core.records import GRAD_NORM, RESPONSE_STD
from bench.report.drawing import depth_colors, style
from bench.report.layer_plots import figure7, gradient_figure
from bench.report.plots import degradation_figure, depth_figure, figure1
from bench.report.schedule_plots import crossing_figure, schedule_figure
from bench.report.timing_plots import PHASE_LABELS, timing_figure
from bench.core.files import check_writable, own_folder, write_atomic
from bench.core.provenance import utc_now
from bench.core.records import DIVERGED, FINISHED
from bench.results.store import dataset_folder, read_layers, read_results, write_text
from bench.timing.timing_rows import read_timing

PNG_DPI = 150
# The runs of one experiment (one figure, one mean over seeds) differ only in these RunConfig fields; runs
# made on several machines belong together, runs of another precision or schedule do not.
# warmup_lr varies with depth within the paper preset (110 layers and deeper warm up).
# How a run executes (config.EXECUTION_FIELDS) never splits an experiment.
_VARIES_WITHIN = {"arch", "depth", "seed", "dataset", "warmup_lr", *EXECUTION_FIELDS}
EXPERIMENT_FIELDS = tuple(f.name for f in dataclasses.fields(RunConfig) if f.name not in _VARIES_WITHIN)
# The network family is not a RunConfig field but follows the depth: CIFAR nets and ImageNet-layout nets are
# two experiments (the paper's Figures 6 and 4), never one figure, even at one width.
# The RunConfig fields that hold counts (int, or None for a default).
_INTEGER_FIELDS = {f.name for f in dataclasses.fields(RunConfig) if str(f.type).startswith("int")}
FAMILY_NAMES = {"cifar": "cifar-nets", "imagenet": "imagenet-layout"}


def load_results(results: Sequence[Path]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(epochs, runs, timing) of all the given results folders merged; a missing folder is a BenchError, a
    run folder or timing file that cannot be read is skipped with a one-line warning on stderr."""
    for root in results:
        if not Path(root).is_dir():
            raise BenchError(f"results folder {root} does not exist: pass --results DIR, or make results with "
                             "`bench run --depths 18 34`")
    epochs, runs = read_results([Path(r) for r in results])
    return epochs, runs, read_timing([Path(r) for r in results])


def experiments(runs: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """The runs split into experiments: one per (dataset, preset, network family), split further (and named
    by what differs, e.g. 'cifar10-quick-epochs-8') where runs of one preset were made with other settings,
    so that a mean over seeds never mixes schedules. The family is named only where a preset has both."""
    out = []
    for (dataset, preset), by_preset in runs.groupby(["dataset", "preset"], sort=True):
        families = by_preset["family"].fillna("") if "family" in by_preset else pd.Series("", by_preset.index)
        for family, group in by_preset.groupby(families, sort=True):
            name = f"{dataset}-{preset}" + (f"-{FAMILY_NAMES.get(family, family)}" if families.nunique() > 1 else "")
            keys = group.apply(lambda row: tuple(repr(_setting(row, f)) for f in EXPERIMENT_FIELDS), axis=1)
            differing = [f for i, f in enumerate(EXPERIMENT_FIELDS) if keys.map(lambda k: k[i]).nunique() > 1]
            for _, sub in group.groupby(keys, sort=True):
                suffix = "".join(f"-{f.replace('_', '-')}-{_setting(sub.iloc[0], f)}" for f in differing)
                out.append((dataset_folder(f"{name}{suffix}"), sub.reset_index(drop=True)))
    return out


def schedule_groups(runs: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """Finished runs that differ only in schedule length (iterations) and precision, where there are two
    lengths or more: one group per (dataset, preset, family, the other experiment fields), named
    '<experiment>-schedules'. Precisions share a group (bf16 and fp32 measured within seed noise of each other:
    README) so that one figure spans every length; its table and figure tell them apart."""
    finished = runs[(runs["state"] == FINISHED) & runs["iterations"].notna()]
    out = []
    # experiments() splits on every other experiment field; with length and precision blanked, only they differ.
    for name, group in experiments(finished.assign(iterations=None, precision=None)):
        group = finished[finished["run_id"].isin(group["run_id"])]
        if group["iterations"].nunique() >= 2:
            out.append((f"{name}-schedules", group.reset_index(drop=True)))
    return out


def _schedules(name: str, epochs: pd.DataFrame, runs: pd.DataFrame, out: Path, formats: Sequence[str],
               colors: dict) -> tuple[list[Path], list[str]]:
    """The final-error-against-schedule-length figure and table of one group of `schedule_groups`, and where
    each deeper net's training error crosses the shallower's (a figure of the gap, a table, sentences)."""
    folder = own_folder(out, out / name)  # a link there is refused, not written through
    table = tables.schedule_table(epochs, runs)
    paths = save_figure(schedule_figure(table, runs, colors=colors), folder / "final-error-vs-schedule", formats)
    markdown = schedule_markdown(table)
    readme = [f"## {name}", "", *[f"- {line}" for line in prose.schedule_provenance(runs)], "",
              "### Final error against schedule length (where depth starts to pay off)", "",
              *_figure_lines(paths, out, "final error against schedule length"), markdown, ""]
    written = paths + _write_table(table, folder / "final-error-vs-schedule", markdown)
    gaps = tables.training_gaps(epochs, runs)
    if not gaps.empty:
        crossing = tables.crossings(gaps)
        figure = save_figure(crossing_figure(gaps, crossing, runs), folder / "training-gap", formats)
        lines = crossing_lines(crossing)
        readme += ["### Where the deeper net's training error crosses the shallower's", "",
                   *_figure_lines(figure, out, "training error gap against iteration"), *lines, ""]
        written += figure + _write_table(crossing, folder / "crossings", "\n".join(lines))
    return written, readme


def _setting(run: pd.Series, field: str) -> object:
    """A config value of a run, comparable across runs: lists as tuples, NaN as None, and a count as an int
    again where pandas made it a float beside another run's None (input size 224, not 224.0)."""
    value = run.get(field)
    if isinstance(value, list):
        return tuple(value)
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    if field in _INTEGER_FIELDS and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def save_figure(fig: Figure, base: Path, formats: Sequence[str]) -> list[Path]:
    """Write `fig` as `base`.<format> for each format, atomically (a report killed mid-write leaves the old
    figure whole, never half a PNG); returns the paths."""
    base.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    with style():
        for fmt in formats:
            path = base.with_suffix(f".{fmt}")
            write_atomic(path, lambda handle: fig.savefig(handle, dpi=PNG_DPI, format=fmt, bbox_inches="tight",
                                                          pad_inches=0.12))
            paths.append(path)
    return paths


def _write_table(frame: pd.DataFrame, base: Path, markdown: str) -> list[Path]:
    """The table as CSV (full precision, for machines) and Markdown (rounded, for people)."""
    base.parent.mkdir(parents=True, exist_ok=True)
    csv, md = base.with_suffix(".csv"), base.with_suffix(".md")
    write_text(csv, frame.to_csv(index=False))
    write_text(md, markdown + "\n")
    return [csv, md]


def _image(path: Path, out: Path, alt: str) -> str:
    """A README line showing the figure (PNG or SVG) or linking to it (PDF)."""
    relative = path.relative_to(out).as_posix()
    return f"![{alt}]({relative})" if path.suffix in (".png", ".svg") else f"[{alt} ({path.suffix[1:]})]({relative})"


def _figure_lines(paths: list[Path], out: Path, alt: str) -> list[str]:
    shown = next((p for p in paths if p.suffix in (".png", ".svg")), paths[0])
    others = [f"[{p.suffix[1:]}]({p.relative_to(out).as_posix()})" for p in paths if p != shown]
    return [_image(shown, out, alt), "", *([f"Also as {', '.join(others)}.", ""] if others else [])]


def _plus_minus(errors: pd.DataFrame, name: str) -> list[str]:
    return [prose.plus_minus(m, s) for m, s in zip(errors[f"{name}_mean"], errors[f"{name}_std"])]


def error_markdown(errors: pd.DataFrame) -> str:
    """Table 6 form: one row per net with its parameters and final/best test error over seeds."""
    rows = pd.DataFrame({
        "net": errors["arch"] + "-" + errors["depth"].astype(str),
        "params": errors["params"].map(lambda p: "-" if pd.isna(p) else f"{p / 1e6:.2f}M"),
        "runs": errors["runs"].astype(str) + errors["diverged"].map(lambda d: f" ({d} diverged)" if d else ""),
        "final test error (%)": _plus_minus(errors, "final_test"),
        "best test error (%)": _plus_minus(errors, "best_test"),
        "final training error (%)": _plus_minus(errors, "final_train"),
        "paper (%)": errors["paper_test"],
        "still running": errors["note"].replace("", "-"),
    })
    if "final_top5_mean" in errors:  # where the runs measured it (bench.report.tables.error_table)
        rows.insert(4, "final top-5 test error (%)", _plus_minus(errors, "final_top5"))
    if errors["fitted"].any():  # a set fitted to the floor: how fast says more than how low (bench.results.fitting)
        fits = [prose.fit_text(row.fitted, row.runs - row.diverged, row.first_fit) for row in errors.itertuples()]
        rows.insert(rows.columns.get_loc("final training error (%)") + 1, f"fits (training error <= {FIT_ERROR:.1%})",
                    fits)
    return prose.markdown_table(rows)


def gap_markdown(errors: pd.DataFrame, gaps: pd.DataFrame) -> str:
    """Table 2 form: plain and residual side by side per depth (final test error), and their gap."""
    cells = {}
    for row in errors.itertuples():
        cells[(row.arch, row.depth)] = prose.plus_minus(row.final_test_mean, row.final_test_std)
    header = ["final test error (%)", *[f"{d} layers" for d in gaps["depth"]]]
    body = [[arch, *[cells.get((arch, d), "-") for d in gaps["depth"]]] for arch in ("plain", "residual")]
    body.append(["plain - residual (points)", *[prose.format_value(g) for g in gaps["test_gap"]]])
    body.append(["same, training error", *[prose.format_value(g) for g in gaps["train_gap"]]])
    return prose.markdown_table(pd.DataFrame(body, columns=header))


def schedule_markdown(table: pd.DataFrame) -> str:
    """One row per net, final training then test error (%) at each schedule length (and precision, where the
    group has two); a mean over seeds says how many."""
    mixed = table["precision"].nunique() > 1
    table = table.assign(net=table["arch"] + "-" + table["depth"].astype(str))
    rows = table[["net"]].drop_duplicates().set_index("net")
    lengths = table[["iterations", "precision"]].drop_duplicates().itertuples(index=False)
    for iterations, precision in sorted(lengths, key=lambda length: (length[0], length[1] != "fp32", length[1])):
        cells = table[(table["iterations"] == iterations) & (table["precision"] == precision)].set_index("net")
        name = f"{iterations:,}" + (f" ({precision})" if mixed else "")
        for column, what in (("final_train", "training"), ("final_test", "test")):
            rows[f"{what} error at {name}"] = cells.apply(
                lambda row: f"{row[column]:.2f}" + (f" ({row['seeds']} seeds)" if row["seeds"] > 1 else ""), axis=1)
    order = [c for what in ("training", "test") for c in rows.columns if c.startswith(what)]
    return prose.markdown_table(rows[order].fillna("-").reset_index())


def crossing_lines(crossings: pd.DataFrame) -> list[str]:
    """Where each deeper net's training error crosses below the shallower's, schedule by schedule, in words;
    first, per pair, the final gap at each length and the lengths at which the deeper net ends below."""
    lines = []
    for (arch, shallow, deep), pair in crossings.groupby(["arch", "shallow", "deep"], sort=True):
        a, b = f"{arch}-{deep}", f"{arch}-{shallow}"
        finals = pair.groupby("iterations")["final_gap"].mean()
        noise = {n: _noise(of_length) for n, of_length in pair.groupby("iterations")}
        ends_below = [f"{n:,}" for n, gap in finals.items() if gap < 0 and not is_tie(gap, noise[n])]
        lines.append(f"- **{a} against {b}**, final training error, deeper minus shallower: "
                     + ", ".join(f"{gap:+.2f} points at {n:,} iterations"
                                 + (f" (a tie: within {noise[n]:.2f} points of noise)" if is_tie(gap, noise[n]) else "")
                                 for n, gap in finals.items())
                     + f"; {a} ends below {b}, beyond the noise, in "
                     + (f"the {' and '.join(ends_below)}-iteration schedule{'s' if len(ends_below) > 1 else ''}"
                        if ends_below else "none of them") + ".")
        for row in pair.itertuples():
            where = f"{row.iterations:,} iterations ({row.precision}, seed {row.seed})"
            finals_text = f"{row.deep_final:.2f}% vs {row.shallow_final:.2f}% ({row.final_gap:+.2f} points)"
            if pd.notna(row.below_from):
                first = ("" if row.first_below == row.below_from
                         else f"first below at iteration {row.first_below:,.0f}, ")
                lines.append(f"    - {where}: crosses; {first}below from iteration {row.below_from:,.0f} (lr "
                             f"{row.lr_then:g}) to the end; final {finals_text}.")
            else:
                dips = (f"below at some epochs (first at iteration {row.first_below:,.0f}) but " if
                        pd.notna(row.first_below) else "")
                lines.append(f"    - {where}: does not cross; {dips}ends above: final {finals_text}.")
        lines += _over_seeds(pair, a)
    return lines


def _noise(runs: pd.DataFrame) -> float:
    """What the final gaps of one schedule length are read against: the larger seed spread (max minus min) of
    its two nets' final training errors where it has two seeds or more, else bench.results.fitting.NOISE_FLOOR."""
    if runs["seed"].nunique() < 2:
        return NOISE_FLOOR
    return max(runs[net].max() - runs[net].min() for net in ("shallow_final", "deep_final"))


def _over_seeds(pair: pd.DataFrame, deep: str) -> list[str]:
    """One line per schedule (length, precision) that has two seeds or more: the final gap's mean ± std and
    range, and in how many seeds the deeper net crosses, from which iteration (mean ± std of those that do).
    One seed's crossing is not a result; the spread says how far the next seed may move it."""
    lines = []
    for (iterations, precision), runs in pair.groupby(["iterations", "precision"], sort=True):
        if len(runs) < 2:
            continue
        gap, crossed = runs["final_gap"], runs["below_from"].dropna()
        where = ""
        if len(crossed):
            spread = f" ± {crossed.std():,.0f}" if len(crossed) > 1 else ""
            where = f"; below from iteration {crossed.mean():,.0f}{spread}"
        lines.append(f"    - {iterations:,} iterations ({precision}) over {len(runs)} seeds: final gap "
                     f"{prose.plus_minus(gap.mean(), gap.std())} points ({gap.min():+.2f} to {gap.max():+.2f}); "
                     f"{deep} crosses in {len(crossed)} of {len(runs)}{where}.")
    return lines


def timing_markdown(table: pd.DataFrame) -> str:
    """The timing table in units people read: ms, images/s, MiB, millions of parameters, GFLOPs."""
    def column(name: str, convert: Callable[[float], str]) -> pd.Series:
        values = table[name] if name in table else pd.Series(math.nan, index=table.index)
        return values.map(lambda v: "-" if pd.isna(v) else convert(v))

    rows = pd.DataFrame({
        "net": table["model"], "phase": table["phase"].map(lambda p: PHASE_LABELS.get(p, p)),
        "status": column("status", str),
        "median ms / batch": column("median_ms", lambda v: f"{v:.2f}"),
        "IQR ms": column("iqr_ms", lambda v: f"{v:.2f}"),
        "images/s": column("images_per_second", lambda v: f"{v:,.0f}"),
        "peak memory (MiB)": column("peak_memory_bytes", lambda v: f"{v / 2**20:,.0f}"),
        "params (M)": column("params", lambda v: f"{v / 1e6:.2f}"),
        "GFLOPs / image": column("flops_per_image", lambda v: f"{v / 1e9:.3g}"),
        "TFLOPS": column("tflops", lambda v: f"{v:.3g}"),
    })
    return prose.markdown_table(rows)


def _layer_sections(layers: pd.DataFrame, runs: pd.DataFrame, folder: Path, out: Path, formats: Sequence[str],
                    colors: dict) -> tuple[list[Path], list[str]]:
    """Figure 7, the gradient-norm profile and the response ratios of one experiment's layers.parquet rows.
    Diverged runs are left out, as in the error tables: their last measurement is of the blow-up."""
    written, readme = [], []
    runs = runs[runs["state"] != DIVERGED]
    layers = layers[layers["run_id"].isin(runs["run_id"])]
    responses = tables.layer_profile(layers, RESPONSE_STD)
    if not responses.empty:
        with_data = runs[runs["run_id"].isin(layers.loc[layers["kind"] == RESPONSE_STD, "run_id"])]
        paths = save_figure(figure7(responses, with_data, colors=colors), folder / "figure7", formats)
        ratios = tables.response_ratios(responses)
        write_text(folder / "figure7.csv", responses.to_csv(index=False))
        written += [*paths, folder / "figure7.csv"]
        written += _write_table(ratios, folder / "responses", prose.markdown_table(ratios))
        readme += ["### Std of layer responses (paper Figure 7)", "", *_figure_lines(paths, out, "figure 7"),
                   prose.response_sentence(ratios, responses), ""]
    first = tables.layer_profile(layers, GRAD_NORM, "first")
    if not first.empty:
        last = tables.layer_profile(layers, GRAD_NORM, "last")
        with_data = runs[runs["run_id"].isin(layers.loc[layers["kind"] == GRAD_NORM, "run_id"])]
        paths = save_figure(gradient_figure(first, last, with_data, colors=colors), folder / "gradients", formats)
        write_text(folder / "gradients.csv",
                   pd.concat([first.assign(when="first"), last.assign(when="last")]).to_csv(index=False))
        written += [*paths, folder / "gradients.csv"]
        readme += ["### Gradient norm across depth", "", *_figure_lines(paths, out, "gradient norms")]
    return written, readme


def _experiment(name: str, epochs: pd.DataFrame, runs: pd.DataFrame, layers: pd.DataFrame, out: Path,
                formats: Sequence[str], colors: dict, notify: Notify) -> tuple[list[Path], list[str]]:
    """Figures and tables of one experiment; returns (files written, README lines)."""
    folder = own_folder(out, out / name)  # a link there is refused, not written through
    written, readme = [], [f"## {name}", "", *[f"- {line}" for line in prose.provenance_lines(runs)], ""]
    paths = save_figure(degradation_figure(epochs, runs, colors=colors), folder / "degradation", formats)
    written += paths
    readme += ["### Plain vs residual (paper Figures 4 and 6)", "", *_figure_lines(paths, out, "degradation")]
    if fit := prose.fit_caption(runs):
        readme += [f"*{fit}*", ""]
    for depth in sorted(d for d, archs in runs.groupby("depth")["arch"].nunique().items() if archs >= 3):
        paths = save_figure(depth_figure(epochs, runs, depth), folder / f"archs-{depth}", formats)
        written += paths
        readme += [f"### Every arch at {depth} layers (the remedies beside plain and residual)", "",
                   *_figure_lines(paths, out, f"every arch at {depth} layers")]
    if runs.loc[runs["arch"] == "plain", "depth"].nunique() >= 2:
        paths = save_figure(figure1(epochs, runs, colors=colors), folder / "figure1", formats)
        written += paths
        readme += ["### Shallowest vs deepest plain net (paper Figure 1)", "", *_figure_lines(paths, out, "figure 1")]
    else:
        notify(f"{name}: Figure 1 skipped (it needs plain runs at two depths)")

    errors = tables.error_table(epochs, runs)
    gaps = tables.gap_table(errors)
    degradation = tables.degradation(errors)
    sentences = [prose.degradation_verdict(row) for _, row in degradation.iterrows()]
    markdown = {"errors": error_markdown(errors), "gaps": gap_markdown(errors, gaps),
                "degradation": "\n".join(f"- {s}" for s in sentences) or "- needs two depths of one arch"}
    for table, frame in (("errors", errors), ("gaps", gaps), ("degradation", degradation)):
        written += _write_table(frame, folder / table, markdown[table])
    caveat = [prose.paper_caveat(runs), ""] if errors["paper_test"].notna().any() else []
    readme += ["### Test error per net (paper Table 6 form; mean ± std over seeds; diverged runs left out)", "",
               markdown["errors"], "", *caveat, "### Plain minus residual at each depth (paper Table 2 form)", "",
               markdown["gaps"], "", "### The degradation, as one number (final training error, deepest minus "
               "shallowest)", "", markdown["degradation"], ""]
    files, lines = _layer_sections(layers[layers["run_id"].isin(runs["run_id"])], runs, folder, out, formats,
                                   colors)
    return written + files, readme + lines


def _timing(timing: pd.DataFrame, out: Path, formats: Sequence[str]) -> tuple[list[Path], list[str]]:
    """Speed figures and tables, one per measurement setting."""
    written, readme = [], []
    for setting, rows in tables.timing_settings(timing):
        name = dataset_folder("-".join(str(setting[k]) for k in ("device_name", "precision", "family"))
                              + f"-b{setting['batch_size']}-{setting['input_size']}px"
                              + (f"-w{int(setting['width'])}" if pd.notna(setting.get("width")) else "")
                              + ("-channels-last" if setting["channels_last"] else "")
                              + ("-compiled" if setting["compiled"] else "")
                              + ("-cuda-graph" if prose.is_set(setting.get("cuda_graph")) else ""))
        folder = own_folder(out, out / "timing" / name)
        paths = save_figure(timing_figure(rows, setting), folder / "speed", formats)
        table = tables.timing_table(rows)
        markdown = timing_markdown(table)
        written += paths + _write_table(table, folder / "speed", markdown)
        readme += [f"## Speed: {name}", "", *[f"- {line}" for line in prose.timing_provenance(setting, rows)], "",
                   *_figure_lines(paths, out, f"speed {name}"), markdown, ""]
    return written, readme


def make_report(results: Sequence[Path], out: Path, *, dataset: str | None = None,
                formats: Sequence[str] = ("png",), finished_only: bool = False,
                notify: Notify = print) -> list[Path]:
    """Draw every figure and table of the results folders (merged) into `out`, with `out`/README.md
    showing them all; `dataset` keeps one dataset's runs only, `finished_only` finished runs only (what a
    committed report shows, while later runs of the same grid are still training). Returns the files
    written."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise BenchError(f"unknown format {', '.join(unknown) or '(none)'}: choose from {', '.join(FORMATS)}")
    results = [Path(r) for r in results]
    check_writable(Path(out), tidy=True, option="--out")  # before anything is read or drawn
    epochs, runs, timing = load_results(results)
    layers = read_layers(runs, notify)
    if runs.empty and timing.empty:
        raise BenchError(f"no results under {', '.join(map(str, results))}: make some with "
                         "`bench run --depths 18 34` (training) or `bench time` (speed)")
    if dataset is not None:
        if runs.empty:
            raise BenchError(f"no training runs under {', '.join(map(str, results))} to filter by --dataset: "
                             f"make some with `bench run --dataset {dataset} --depths 18 34`")
        keep = (runs["dataset"] == dataset) | (runs["dataset"].map(dataset_folder) == dataset)
        if not keep.any():
            raise BenchError(f"no runs of dataset {dataset!r}: choose one of "
                             f"{', '.join(sorted(runs['dataset'].astype(str).unique()))}")
        runs = runs[keep]
    if finished_only and not runs.empty:
        runs = runs[runs["state"] == FINISHED]
    out = Path(out)
    colors = depth_colors(runs["depth"]) if not runs.empty else {}
    written, sections = [], []
    for name, group in (experiments(runs) if not runs.empty else []):
        group_epochs = epochs[epochs["run_id"].isin(group["run_id"])]
        if group_epochs.empty:
            notify(f"{name}: no epoch finished yet, nothing to draw")
            continue
        files, lines = _experiment(name, group_epochs, group, layers, out, formats, colors, notify)
        written += files
        sections += lines
    for name, group in (schedule_groups(runs) if not runs.empty else []):
        files, lines = _schedules(name, epochs[epochs["run_id"].isin(group["run_id"])], group, out, formats, colors)
        written += files
        sections += lines
    if dataset is None and not timing.empty:
        files, lines = _timing(timing, out, formats)
        written += files
        sections += lines
    if not written:
        raise BenchError(f"no epoch has finished yet under {', '.join(map(str, results))}: wait for the first "
                         "epoch of `bench run`, then run `bench report` again")
    readme = out / "README.md"
    header = ["# Results", "", f"Generated {utc_now()} by `bench report` from "
              f"{', '.join(f'`{r}`' for r in results)}. Errors are in percent; gaps in percentage points. Final "
              "training error is the running error over the last whole epoch of iterations (a schedule's short "
              "last epoch pooled with the one before it); final test error is the last epoch's, on the whole "
              "test split.", ""]
    write_text(readme, "\n".join(header + sections))
    written.append(readme)
    notify(f"wrote {len(written)} files to {out}: open {readme}")
    return written
