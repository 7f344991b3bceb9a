"""The report's words: the numbers of bench.report.tables and bench.results.fitting as sentences, captions and Markdown tables.

bench.report.tables computes, this module says it, bench.report's plots modules draw it and bench.report.report puts it
together; `bench run`'s summary says its verdicts with the same sentences.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from bench.results.fitting import FIT_ERROR, NOISE_FLOOR, PASS_FLOOR, Fit, Pair, is_tie
from resnet import has_shortcut


def count_text(value: object) -> str:
    """A count as text; '?' when it is not known."""
    return "?" if value is None or pd.isna(value) else str(int(value))


def _unique(frame: pd.DataFrame, column: str) -> str:
    values = frame[column].dropna() if column in frame else pd.Series(dtype=object)
    return ", ".join(sorted({str(v) for v in values if str(v)})) or "unknown"


def format_value(value: object, digits: int = 2) -> str:
    """A table cell: floats to `digits` decimals, NaN/None as '-', everything else as text."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        return f"{value:.{digits}f}"
    return str(value)


def plus_minus(mean: float, std: float) -> str:
    """'7.12 ± 0.15', or just the mean when there is no spread (one seed)."""
    if pd.isna(mean):
        return "-"
    return f"{mean:.2f}" if pd.isna(std) else f"{mean:.2f} ± {std:.2f}"


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub Markdown table of `frame` (cells through `format_value`)."""
    headers = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(format_value(v) for v in row) + " |")
    return "\n".join(lines)


def schedule_text(runs: pd.DataFrame) -> str:
    """The training schedule of a group of runs in one line (preset, length, batch, lr, width, subsets)."""
    first = runs.iloc[0]
    length = (f"{int(first['iterations']):,} iterations" if pd.notna(first.get("iterations"))
              else f"{count_text(first.get('epochs'))} epochs")
    optimizer = _unique(runs, "optimizer")
    lr = f"lr {_unique(runs, 'lr')}" if optimizer in ("sgd", "unknown") else f"{optimizer} lr {_unique(runs, 'lr')}"
    parts = [f"preset {first['preset']}: {length}", f"batch {_unique(runs, 'batch_size')}", lr,
             f"width {_unique(runs, 'width')}"]
    if pd.notna(first.get("train_subset")) or pd.notna(first.get("test_subset")):
        parts.append(f"subset {count_text(first.get('train_subset'))} train / {count_text(first.get('test_subset'))} test")
    if not first["augment"]:  # read_results gives a run from before the option its default
        parts.append("no augmentation")
    return ", ".join(parts)


def provenance_lines(runs: pd.DataFrame) -> list[str]:
    """Where a group of runs came from, in three short lines: data, schedule, machine and code."""
    dataset = f"Data: {_unique(runs, 'dataset')}"
    note = _unique(runs, "dataset_note")
    if note != "unknown":
        dataset += f" ({note})"
    dataset += f"; {input_text(runs)}"
    states = runs["state"].value_counts()
    count = f"{len(runs)} run{'s' if len(runs) != 1 else ''}: " + ", ".join(
        f"{n} {state}" for state, n in states.items())
    seeds = ", ".join(str(s) for s in sorted(runs["seed"].unique()))
    machine = (f"Device: {_unique(runs, 'device_name')}; precision {_unique(runs, 'precision')}; seeds {seeds}; "
               f"commit {_unique(runs, 'git_commit')}; torch {_unique(runs, 'torch')}")
    return [dataset, f"Schedule: {schedule_text(runs)}; {count}", machine]


def input_text(runs: pd.DataFrame) -> str:
    """The input size the nets saw, and the stored size where they were resized: '224x224 inputs (stored
    32x32, resized on the device)' or '32x32 inputs'."""
    stored = runs["image_size"] if "image_size" in runs else pd.Series(None, index=runs.index, dtype=object)
    given = runs["input_size"] if "input_size" in runs else pd.Series(None, index=runs.index, dtype=object)
    seen = given.where(given.notna(), stored)
    sizes = ", ".join(f"{int(s)}x{int(s)}" for s in sorted(seen.dropna().unique())) or "?"
    if not given.notna().any():
        return f"{sizes} inputs"
    stored_sizes = ", ".join(f"{int(s)}x{int(s)}" for s in sorted(stored.dropna().unique())) or "?"
    return f"{sizes} inputs (stored {stored_sizes}, resized on the device)"


def schedule_provenance(runs: pd.DataFrame) -> list[str]:
    """provenance_lines for runs of several schedule lengths (which schedule_text would name only one of)."""
    *most, last = (f"{int(i):,}" for i in sorted(runs["iterations"].dropna().unique()))
    lengths = f"{', '.join(most)} and {last}" if most else last
    data, _, machine = provenance_lines(runs)
    first = runs.iloc[0]
    decays = ", ".join(f"{f:.0%}" for f in first["lr_decay_at"]) if isinstance(first.get("lr_decay_at"), list) else "?"
    return [data, f"Schedules: preset {_unique(runs, 'preset')}, {lengths} iterations; lr {_unique(runs, 'lr')}, "
                  f"times {_unique(runs, 'lr_decay')} at {decays} of each; batch {_unique(runs, 'batch_size')}; "
                  f"width {_unique(runs, 'width')}", machine]


def fit_caption(runs: pd.DataFrame) -> str | None:
    """What a figure of runs that fit a small subset as stored shows, or None for other runs."""
    first = runs.iloc[0]
    if first["augment"] or pd.isna(first.get("train_subset")):
        return None
    test = f"{count_text(first.get('test_subset'))} held-out images" if pd.notna(first.get("test_subset")) else "the test split"
    return (f"A fit: {count_text(first['train_subset'])} training images as stored, no augmentation. Training error is the "
            f"optimisation test (a net fits at <= {FIT_ERROR:.1%}: triangles mark the pass where each run first does); "
            f"test error, on {test}, is what so few images teach, not comparable with the paper's.")


def is_set(flag: object) -> bool:
    """A timing setting's flag: missing (None, or NaN from files that predate it) counts as off."""
    return bool(flag) if pd.notna(flag) else False


def timing_provenance(setting: dict, timing: pd.DataFrame) -> list[str]:
    """Where a set of timing rows came from: device, precision, batch, input, and the software."""
    flags = [name for name in ("channels_last", "compiled", "cuda_graph") if is_set(setting.get(name))]
    what = (f"Device: {setting['device_name']}; precision {setting['precision']}; batch {setting['batch_size']}; "
            f"input {setting['input_size']}x{setting['input_size']}; family {setting['family']}"
            + (f"; width {int(setting['width'])}" if pd.notna(setting.get("width")) else "")
            + (f"; {', '.join(flags)}" if flags else ""))
    software = f"torch {_unique(timing, 'torch_version')}; threads {_unique(timing, 'threads')}"
    if "git_commit" in timing:
        software += f"; commit {_unique(timing, 'git_commit')}"
    stamps = pd.to_datetime(timing["timestamp"], utc=True, errors="coerce").dropna()
    if len(stamps):
        software += f"; measured {stamps.min():%Y-%m-%d}" + (
            f" to {stamps.max():%Y-%m-%d}" if stamps.max().date() != stamps.min().date() else "")
    lines = [what, software + "; median over repeats, latest measurement per net"]
    failed = sorted(timing.loc[timing["median_ms"].isna(), "model"].unique())
    if failed:  # out of memory: no number to draw, but the reader should know it was tried
        lines.append(f"Not measured (out of memory or failed): {', '.join(failed)}")
    return lines


def degradation_verdict(row: pd.Series) -> str:
    """One row of bench.report.tables.degradation in words (degradation_sentence)."""
    def net(name: str) -> Fit:
        fitted = row.get(f"{name}_fitted")
        first = row.get(f"{name}_first_fit")
        spread, pass_spread = (row.get(f"{name}_{key}") for key in ("spread", "pass_spread"))
        return Fit(row["arch"], int(row[f"{name}_depth"]), float(row[f"{name}_train"]),
                   int(row.get(f"{name}_runs", 1)), 0 if pd.isna(fitted) else int(fitted),
                   None if first is None or pd.isna(first) else float(first),
                   spread=math.nan if spread is None or pd.isna(spread) else float(spread),
                   pass_spread=math.nan if pass_spread is None or pd.isna(pass_spread) else float(pass_spread))

    return degradation_sentence(Pair(net("shallow"), net("deep"), bool(row["provisional"])))


def fit_text(fitted: int, runs: int, first_fit: float | None) -> str:
    """A table cell: 'pass 21' (of first fit, the median over the runs that fitted), '2 of 3 seeds, pass 21'
    when only some fitted, 'does not fit' when none did."""
    if not fitted or first_fit is None or math.isnan(first_fit):
        return "does not fit"
    return ("" if fitted == runs else f"{fitted} of {runs} seeds, ") + f"pass {first_fit:g}"


def _pass_text(net: Fit) -> str:
    """'pass 21', or 'pass -' when no run fitted."""
    return "pass -" if net.first_fit is None else f"pass {net.first_fit:g}"


def _share(net: Fit) -> str:
    """'' for a single run, else ' (2 of 3 seeds)'."""
    return "" if net.runs == 1 else f" ({net.fitted} of {net.runs} seeds)"


def degradation_sentence(pair: Pair) -> str:
    """A net against the next shallower one of its arch in one sentence: the final training errors and
    their gap (with the seed spread where either net has two seeds), then the verdict: read at the floor where
    either net fits, else from the gap against the noise (bench.results.fitting.Pair.noise), a tie within it, saying
    plainly when it is negative (none shown)."""
    shallow, deep = pair.shallow, pair.deep
    spread = "" if math.isnan(pair.spread) else f" (seed spread {pair.spread:.2f})"
    head = (f"{deep.arch}: the {deep.depth}-layer net ends at {deep.final_train:.2f}% training error, "
            f"the {shallow.depth}-layer at {shallow.final_train:.2f}%: gap {pair.gap:+.2f} points{spread}")
    verdict = fit_verdict(pair) or _gap_verdict(pair)
    tail = " (provisional: runs still in progress)" if pair.provisional else ""
    return f"{head}, {verdict}{tail}."


def noise_text(pair: Pair) -> str:
    """What a pair's gap was read against: 'the seed spread' or 'the 1-point noise floor of one seed'."""
    return "the seed spread" if not math.isnan(pair.spread) else f"the {NOISE_FLOOR:g}-point noise floor of one seed"


def _gap_verdict(pair: Pair) -> str:
    arch, gap = pair.deep.arch, pair.gap
    if pair.tie:
        return (f"a tie within {noise_text(pair)}: "
                + (f"NEGATIVE: no degradation shown (the deeper {arch} net trains as well)" if not has_shortcut(arch)
                   else f"the deeper {arch} net trains as well, no degradation (the paper's trains better)"))
    beyond = f", beyond {noise_text(pair)}"
    if not has_shortcut(arch):
        return (f"degradation shown{beyond} (the deeper {arch} net trains worse)" if gap > 0
                else f"NEGATIVE: no degradation shown{beyond} (the deeper {arch} net trains better)")
    return (f"the deeper {arch} net trains better, as in the paper{beyond}" if gap < 0
            else f"the deeper {arch} net trains worse here, unlike the paper{beyond}")


# What `bench run` adds where the quick preset's 50-layer nets did not fit: why, as measured (the docs page).
STALLED_50 = ("The 50-layer nets do not start in the quick preset: at lr 0.1 their large first gradients inflate the "
              "weights they hit, and every later step is then too small to learn (measured: docs/quick-preset.md). "
              "preact-50 fits; the reference runs (docs/reference-results.md) show deeper nets at a longer schedule.")


def fit_verdict(pair: Pair) -> str | None:
    """The degradation read at the floor, or None when neither net fits. Deeper fits first, by more passes than
    the noise (bench.results.fitting.Pair.pass_noise): the paper's "deeper residual trains better"; both fit: no
    degradation; the deeper does not fit what the shallower fits: degradation."""
    shallow, deep = pair.shallow, pair.deep
    if not shallow.fitted and not deep.fitted:
        return None
    plain, arch = not has_shortcut(deep.arch), deep.arch
    if deep.fitted < shallow.fitted:
        head = f"{deep.net} does not fit what {shallow.net} fits{_share(deep)}"
        return f"{head}: " + (f"degradation shown (the deeper {arch} net trains worse)" if plain
                              else f"the deeper {arch} net trains worse here, unlike the paper")
    if deep.fitted > shallow.fitted:
        head = f"{deep.net} fits and {shallow.net} does not{_share(shallow)}"
        return f"{head}: " + (f"NEGATIVE: no degradation shown (the deeper {arch} net trains better)" if plain
                              else f"the deeper {arch} net trains better, as in the paper")
    if is_tie(deep.first_fit - shallow.first_fit, pair.pass_noise) and deep.first_fit != shallow.first_fit:
        which = "first" if deep.first_fit < shallow.first_fit else "later"
        head = (f"both fit{_share(deep)}, {deep.net} {which} ({_pass_text(deep)} against {_pass_text(shallow)}), "
                f"a tie within {_pass_noise_text(pair)}")
        tail = (f"NEGATIVE: no degradation shown (the deeper {arch} net trains as well)" if plain
                else f"the deeper {arch} net trains as well, no degradation (the paper's trains better)")
    elif deep.first_fit < shallow.first_fit:
        head = f"both fit{_share(deep)}, {deep.net} first ({_pass_text(deep)} against {_pass_text(shallow)})"
        tail = (f"NEGATIVE: no degradation shown (the deeper {arch} net trains better)" if plain
                else f"the deeper {arch} net trains better, as in the paper")
    elif deep.first_fit == shallow.first_fit:
        head = f"both fit{_share(deep)}, at the same {_pass_text(deep)}"
        tail = (f"NEGATIVE: no degradation shown (the deeper {arch} net trains as well)" if plain
                else f"the deeper {arch} net trains as well, no degradation (the paper's trains better)")
    else:
        head = f"both fit{_share(deep)}, {deep.net} later ({_pass_text(deep)} against {_pass_text(shallow)})"
        tail = (f"NEGATIVE: no degradation shown (the deeper {arch} net fits too, more slowly)" if plain
                else f"no degradation, but the deeper {arch} net fits more slowly (the paper's trains better)")
    return f"{head}: {tail}"


def _pass_noise_text(pair: Pair) -> str:
    """'the seed spread of 3 passes' or 'the 2-pass noise floor of one seed'."""
    if math.isnan(pair.pass_spread):
        return f"the {PASS_FLOOR}-pass noise floor of one seed"
    return f"the seed spread of {pair.pass_spread:g} passes"


def response_sentence(ratios: pd.DataFrame, profile: pd.DataFrame) -> str:
    """Figure 7's finding in numbers: how large residual responses are against plain ones, per depth, and
    how the residual nets' responses change with depth."""
    parts = [f"at depth {r.depth} the residual net's 3x3 responses have a mean std of {r.residual_std:.3f}, "
             f"{r.ratio:.2f}x the plain net's {r.plain_std:.3f}" for r in ratios.itertuples()]
    residual = profile[profile["arch"] == "residual"].groupby("depth")["value"].mean()
    if len(residual) >= 2:
        parts.append("residual nets by depth: " + ", ".join(f"{d} layers {v:.3f}" for d, v in residual.items()))
    if not parts:
        return "No depth has both nets' response statistics yet."
    return "Mean response std over the 3x3 layers, at each run's last measurement: " + "; ".join(parts) + "."


def paper_caveat(runs: pd.DataFrame) -> str:
    """What differs between these runs and the paper's Table 6 numbers printed beside them."""
    differences = []
    iterations = sorted(pd.to_numeric(runs.get("iterations"), errors="coerce").dropna().astype(int).unique())
    if iterations != [64_000]:
        length = " / ".join(f"{i:,}" for i in iterations) + " iterations" if iterations else "epochs"
        differences.append(f"a schedule of {length} instead of 64,000 (a shorter one ends at a higher error)")
    for field, paper in (("batch_size", 128), ("lr", 0.1), ("precision", "fp32")):
        values = set(runs[field].dropna()) if field in runs else set()
        if values - {paper}:
            differences.append(f"{field} {', '.join(map(str, sorted(values)))} instead of {paper}")
    note = _unique(runs, "dataset_note")
    if note != "unknown":
        differences.append(f"this copy of the data ({note})")
    if not differences:
        return "The paper's column is its Table 6 (CIFAR-10, 64,000 iterations)."
    return ("The paper's column is its Table 6 (original CIFAR-10 images, 64,000 iterations); these runs differ "
            "by " + " and by ".join(differences) + ", so compare trends, not digits.")
