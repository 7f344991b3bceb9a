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
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from bench.core.config import EXECUTION_FIELDS, FORMATS, RunConfig
from bench.core.errors import BenchError, Notify
from bench.core.files import check_writable
from bench.core.provenance import utc_now
from bench.core.records import FINISHED
from bench.report.drawing import depth_colors
from bench.report.sections import experiment_section, schedule_section, timing_section
from bench.results.reading import read_layers, read_results
from bench.results.store import dataset_folder, write_text
from bench.timing.timing_rows import read_timing


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
        files, lines = experiment_section(name, group_epochs, group, layers, out, formats, colors, notify)
        written += files
        sections += lines
    for name, group in (schedule_groups(runs) if not runs.empty else []):
        files, lines = schedule_section(name, epochs[epochs["run_id"].isin(group["run_id"])], group, out, formats,
                                        colors)
        written += files
        sections += lines
    if dataset is None and not timing.empty:
        files, lines = timing_section(timing, out, formats)
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
