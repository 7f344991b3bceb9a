"""The sections of reports/README.md, one experiment, schedule group or timing setting each: its figures and
tables written under the report's folder, and the README lines that show them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from bench.core.errors import Notify
from bench.core.files import own_folder, write_atomic
from bench.core.records import DIVERGED, GRAD_NORM, RESPONSE_STD
from bench.report import tables
from bench.report.drawing import style
from bench.report.layer_plots import figure7, gradient_figure
from bench.report.markdown_tables import (crossing_lines, error_markdown, gap_markdown, schedule_markdown,
                                          timing_markdown)
from bench.report.plots import degradation_figure, depth_figure, figure1
from bench.report.schedule_plots import crossing_figure, schedule_figure
from bench.report.timing_plots import timing_figure
from bench.results import prose
from bench.results.store import dataset_folder, write_text


PNG_DPI = 150


def schedule_section(name: str, epochs: pd.DataFrame, runs: pd.DataFrame, out: Path, formats: Sequence[str],
                     colors: dict) -> tuple[list[Path], list[str]]:
    """The final-error-against-schedule-length figure and table of one group of `report.schedule_groups`, and where
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


def experiment_section(name: str, epochs: pd.DataFrame, runs: pd.DataFrame, layers: pd.DataFrame, out: Path,
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


def timing_section(timing: pd.DataFrame, out: Path, formats: Sequence[str]) -> tuple[list[Path], list[str]]:
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
