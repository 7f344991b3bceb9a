"""The numbers behind the report: curves averaged over seeds, error tables, gaps, timing summaries.

The epoch rows store errors as fractions (0.0712); everything here is in percent, as the paper prints it.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd

from bench import fitting
from bench.fitting import FIT_ERROR, Fit, final_train_error, fit_pass, fits, median_pass
from bench.records import DIVERGED, FINISHED, PHASES, UNFINISHED

# He et al. (2015), Table 6: CIFAR-10 test error (%) of the residual nets, paper schedule, full data.
PAPER_CIFAR10_RESNET = {20: 8.75, 32: 7.51, 44: 7.17, 56: 6.97, 110: 6.43}

TIMING_COLUMNS = ("model", "arch", "depth", "family", "device", "device_name", "batch_size", "input_size",
                  "precision", "channels_last", "compiled", "phase", "median_ms", "images_per_second")
# One timing figure and table per setting: numbers measured under different settings are not comparable.
# (width and cuda_graph are optional: files from before they were recorded lack them.)
TIMING_SETTING = ("device_name", "precision", "family", "batch_size", "input_size", "channels_last", "compiled",
                  "width", "cuda_graph")


def with_percent(epochs: pd.DataFrame) -> pd.DataFrame:
    """The epoch rows with `train` and `test`: the errors in percent, NaN for an epoch whose loss is NaN or
    infinite (the epoch a run diverged: its errors measure the blow-up, not the network)."""
    sane = np.isfinite(epochs["train_loss"].astype(float)) & np.isfinite(epochs["test_loss"].astype(float))
    return epochs.assign(train=epochs["train_error"].where(sane) * 100, test=epochs["test_error"].where(sane) * 100)


def curves(epochs: pd.DataFrame, x: str = "epoch") -> pd.DataFrame:
    """One row per (arch, depth, epoch): the x position (column `x`) and, over the seeds that reached
    that epoch, `seeds` and the mean, std, min and max of train and test error in percent.

    NaN errors (see `with_percent`) are skipped by every statistic, so they never break a line.
    """
    frame = with_percent(epochs)
    stats = {"x": (x, "mean"), "seeds": ("run_id", "nunique")}
    for kind in ("train", "test"):
        for stat in ("mean", "std", "min", "max"):
            stats[f"{kind}_{stat}"] = (kind, stat)
    return frame.groupby(["arch", "depth", "epoch"]).agg(**stats).reset_index()


def final_errors(epochs: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """One row per run: its final training error (bench.fitting.final_train_error: pooled over its last whole
    epoch of iterations) and its last epoch's test error (NaN if an error is), its best test error (percent),
    the pass at which it first fit its training set (bench.fitting.fit_pass; NaN unless it ends fitted), how
    many epochs it has done, and its state."""
    frame = with_percent(epochs).sort_values(["run_id", "epoch"])
    runs_of = frame.groupby("run_id")
    last = runs_of.tail(1).set_index("run_id")
    first = runs_of["train"].agg(lambda train: fit_pass(train / 100))
    final = pd.Series({run_id: final_train_error(run["train"].to_numpy(), run["iteration"].to_numpy())
                       for run_id, run in runs_of}, dtype=float).rename_axis("run_id")
    per_run = pd.DataFrame({"final_train": final, "final_test": last["test"], "epochs_done": last["epoch"],
                            "best_test": runs_of["test"].min(), "first_fit": first})
    columns = ["run_id", "arch", "depth", "seed", "state", "params", "epochs_total"]
    return runs[columns].merge(per_run.reset_index(), on="run_id", how="inner")


def _mean_std(values: pd.Series) -> tuple[float, float]:
    values = values.dropna()
    return (values.mean(), values.std()) if len(values) else (math.nan, math.nan)


def paper_test_error(dataset: str, preset: str, arch: str, depth: int, paper_setup: bool) -> float:
    """The paper's number for this run, where dataset, schedule, arch and depth match and the run used the
    paper's setup (whole splits, width 16); NaN otherwise."""
    name = re.sub(r"[^a-z0-9]", "", dataset.lower())
    cifar10 = name.startswith("cifar10") and not name.startswith("cifar100")
    if cifar10 and preset == "paper" and arch == "residual" and paper_setup:
        return PAPER_CIFAR10_RESNET.get(depth, math.nan)
    return math.nan


def error_table(epochs: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Final and best test error per (arch, depth), mean and std over seeds, beside the paper's number.

    Diverged runs are counted (`diverged`) but left out of the statistics: their last error measures the
    divergence, not the network. Runs still in progress count with the error they have reached so far.
    """
    finals = final_errors(epochs, runs)
    rows = []
    for (arch, depth), group in finals.groupby(["arch", "depth"]):
        kept = group[group["state"] != DIVERGED]
        first = runs[(runs["arch"] == arch) & (runs["depth"] == depth)].iloc[0]
        paper_setup = (pd.isna(first.get("train_subset")) and pd.isna(first.get("test_subset"))
                       and first.get("width") in (16, None))
        final_test, final_test_std = _mean_std(kept["final_test"])
        best_test, best_test_std = _mean_std(kept["best_test"])
        final_train, final_train_std = _mean_std(kept["final_train"])
        fitted = kept[(kept["final_train"] / 100).map(fits)]
        running = group[group["state"].isin(UNFINISHED)]
        rows.append({
            "arch": arch, "depth": int(depth), "params": group["params"].iloc[0],
            "runs": len(group), "diverged": int((group["state"] == DIVERGED).sum()),
            "unfinished": len(running),
            "final_test_mean": final_test, "final_test_std": final_test_std,
            "best_test_mean": best_test, "best_test_std": best_test_std,
            "final_train_mean": final_train, "final_train_std": final_train_std,
            "fitted": len(fitted), "first_fit": median_pass(fitted["first_fit"].dropna().astype(int)) or math.nan,
            "paper_test": paper_test_error(str(first["dataset"]), str(first["preset"]), arch, int(depth), paper_setup),
            "note": _progress_note(running),
        })
    return pd.DataFrame(rows)


def _progress_note(running: pd.DataFrame) -> str:
    notes = [f"seed {r.seed} {r.state} at {r.epochs_done}/{_count(r.epochs_total)} epochs"
             for r in running.itertuples()]
    return "; ".join(notes)


def _count(value: object) -> str:
    return "?" if value is None or pd.isna(value) else str(int(value))


def gap_table(errors: pd.DataFrame) -> pd.DataFrame:
    """Per depth with both archs: final test and train error of plain and residual, and plain minus residual
    (percentage points; positive means the shortcuts help)."""
    wide = errors.pivot(index="depth", columns="arch", values=["final_test_mean", "final_train_mean"])
    rows = []
    for depth in wide.index:
        row = {"depth": int(depth)}
        for kind in ("test", "train"):
            plain = wide.get((f"final_{kind}_mean", "plain"), pd.Series(dtype=float)).get(depth, math.nan)
            residual = wide.get((f"final_{kind}_mean", "residual"), pd.Series(dtype=float)).get(depth, math.nan)
            row |= {f"plain_{kind}": plain, f"residual_{kind}": residual, f"{kind}_gap": plain - residual}
        rows.append(row)
    return pd.DataFrame(rows, columns=["depth", "plain_test", "residual_test", "test_gap",
                                       "plain_train", "residual_train", "train_gap"])


def degradation(errors: pd.DataFrame) -> pd.DataFrame:
    """Per arch with two or more depths: final training error of the deepest net minus the shallowest's
    (percentage points). Positive for plain nets is the degradation problem; negative means none is shown."""
    rows = []
    for arch, group in errors.dropna(subset=["final_train_mean"]).groupby("arch"):
        if len(group) < 2:
            continue
        group = group.sort_values("depth")
        shallow, deep = group.iloc[0], group.iloc[-1]
        gap = deep["final_train_mean"] - shallow["final_train_mean"]
        rows.append({
            "arch": arch, "shallow_depth": int(shallow["depth"]), "deep_depth": int(deep["depth"]),
            "shallow_train": shallow["final_train_mean"], "deep_train": deep["final_train_mean"],
            "train_gap": gap, "test_gap": deep["final_test_mean"] - shallow["final_test_mean"],
            "provisional": bool(group["unfinished"].sum()),
            **{f"{name}_{key}": net.get(key) for name, net in (("shallow", shallow), ("deep", deep))
               for key in ("runs", "fitted", "first_fit")},
        })
    return pd.DataFrame(rows, columns=["arch", "shallow_depth", "deep_depth", "shallow_train", "deep_train",
                                       "train_gap", "test_gap", "provisional", "shallow_runs", "shallow_fitted",
                                       "shallow_first_fit", "deep_runs", "deep_fitted", "deep_first_fit"])


def degradation_verdict(row: pd.Series) -> str:
    """One row of `degradation` in words (bench.fitting.degradation_sentence)."""
    def net(name: str) -> Fit:
        fitted = row.get(f"{name}_fitted")
        first = row.get(f"{name}_first_fit")
        return Fit(row["arch"], int(row[f"{name}_depth"]), float(row[f"{name}_train"]),
                   int(row.get(f"{name}_runs", 1)), 0 if pd.isna(fitted) else int(fitted),
                   None if first is None or pd.isna(first) else float(first))

    return fitting.degradation_sentence(net("shallow"), net("deep"), provisional=bool(row["provisional"]))


def _unique(frame: pd.DataFrame, column: str) -> str:
    values = frame[column].dropna() if column in frame else pd.Series(dtype=object)
    return ", ".join(sorted({str(v) for v in values if str(v)})) or "unknown"


def schedule_text(runs: pd.DataFrame) -> str:
    """The training schedule of a group of runs in one line (preset, length, batch, lr, width, subsets)."""
    first = runs.iloc[0]
    length = (f"{int(first['iterations']):,} iterations" if pd.notna(first.get("iterations"))
              else f"{_count(first.get('epochs'))} epochs")
    parts = [f"preset {first['preset']}: {length}", f"batch {_unique(runs, 'batch_size')}",
             f"lr {_unique(runs, 'lr')}", f"width {_unique(runs, 'width')}"]
    if pd.notna(first.get("train_subset")) or pd.notna(first.get("test_subset")):
        parts.append(f"subset {_count(first.get('train_subset'))} train / {_count(first.get('test_subset'))} test")
    if not first["augment"]:  # read_results gives a run from before the option its default
        parts.append("no augmentation")
    return ", ".join(parts)


def schedule_table(epochs: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Final training and test error (percent, mean over seeds) of each finished net at each schedule length
    and precision: one row per (arch, depth, iterations, precision). Runs by epochs, and unfinished or diverged
    runs, are left out: only a whole schedule says where a net ends."""
    finished = runs[(runs["state"] == FINISHED) & runs["iterations"].notna()]
    final = final_errors(epochs, finished).merge(finished[["run_id", "iterations", "precision"]], on="run_id")
    table = (final.groupby(["arch", "depth", "iterations", "precision"])
             .agg(final_train=("final_train", "mean"), final_test=("final_test", "mean"), seeds=("seed", "nunique"))
             .reset_index())
    table["iterations"] = table["iterations"].astype(int)
    return table.sort_values(["arch", "depth", "iterations", "precision"]).reset_index(drop=True)


def training_gaps(epochs: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Epoch by epoch, a deeper net's training error minus a shallower one's of the same arch (points; below
    zero the deeper trains better), for each pair of depths that both finished one schedule (iterations,
    precision) with one seed: columns arch, shallow, deep (the depths), iterations, precision, seed, iteration,
    lr, shallow_train and deep_train (their training errors, %) and gap."""
    finished = runs[(runs["state"] == FINISHED) & runs["iterations"].notna()]
    mine = epochs[epochs["run_id"].isin(finished["run_id"])]
    frame = with_percent(mine.drop(columns=["iterations", "precision"], errors="ignore")).merge(
        finished[["run_id", "iterations", "precision"]], on="run_id")
    keys = ["arch", "iterations", "precision", "seed"]
    parts = []
    for key, group in frame.groupby(keys):
        train = group.pivot_table(index="iteration", columns="depth", values="train").sort_index()
        lr = group.groupby("iteration")["lr"].first()
        depths = sorted(train.columns)
        for i, shallow in enumerate(depths):
            for deep in depths[i + 1:]:
                both = train[[shallow, deep]].dropna()
                parts.append(pd.DataFrame({
                    **dict(zip(keys, key)), "shallow": shallow, "deep": deep, "iteration": both.index,
                    "lr": lr.reindex(both.index).to_numpy(), "shallow_train": both[shallow].to_numpy(),
                    "deep_train": both[deep].to_numpy(), "gap": (both[deep] - both[shallow]).to_numpy()}))
    columns = ["arch", "shallow", "deep", "iterations", "precision", "seed", "iteration", "lr", "shallow_train",
               "deep_train", "gap"]
    gaps = pd.concat(parts, ignore_index=True)[columns] if parts else pd.DataFrame(columns=columns)
    return gaps.astype({"iterations": int}).sort_values(columns[:7]).reset_index(drop=True)


def crossings(gaps: pd.DataFrame) -> pd.DataFrame:
    """Where each curve of `training_gaps` crosses zero: one row per (arch, shallow, deep, iterations,
    precision, seed). `first_below` is the first iteration at which the deeper net's training error is lower;
    `below_from` the iteration from which it stays lower to the end, at learning rate `lr_then`. Each is NaN
    where there is none: no epoch below, or the last one not below. `shallow_final` and `deep_final` are the
    nets' final training errors (bench.fitting.final_train_error), `final_gap` their difference."""
    keys = ["arch", "shallow", "deep", "iterations", "precision", "seed"]
    rows = []
    for key, curve in gaps.groupby(keys, sort=True):
        below = curve["gap"].to_numpy() < 0
        at = curve["iteration"].to_numpy()
        # The last epoch at or above zero; the curve stays below after it.
        last_above = np.flatnonzero(~below).max() if (~below).any() else -1
        settled = bool(below[-1])
        shallow_final, deep_final = (final_train_error(curve[net].to_numpy(), at)
                                     for net in ("shallow_train", "deep_train"))
        rows.append({**dict(zip(keys, key)),
                     "first_below": at[below.argmax()] if below.any() else math.nan,
                     "below_from": at[last_above + 1] if settled else math.nan,
                     "lr_then": curve["lr"].iloc[last_above + 1] if settled else math.nan,
                     "shallow_final": shallow_final, "deep_final": deep_final,
                     "final_gap": deep_final - shallow_final})
    return pd.DataFrame(rows, columns=[*keys, "first_below", "below_from", "lr_then", "shallow_final",
                                       "deep_final", "final_gap"])


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


def provenance_lines(runs: pd.DataFrame) -> list[str]:
    """Where a group of runs came from, in three short lines: data, schedule, machine and code."""
    dataset = f"Data: {_unique(runs, 'dataset')}"
    note = _unique(runs, "dataset_note")
    if note != "unknown":
        dataset += f" ({note})"
    states = runs["state"].value_counts()
    count = f"{len(runs)} run{'s' if len(runs) != 1 else ''}: " + ", ".join(
        f"{n} {state}" for state, n in states.items())
    seeds = ", ".join(str(s) for s in sorted(runs["seed"].unique()))
    machine = (f"Device: {_unique(runs, 'device_name')}; precision {_unique(runs, 'precision')}; seeds {seeds}; "
               f"commit {_unique(runs, 'git_commit')}; torch {_unique(runs, 'torch')}")
    return [dataset, f"Schedule: {schedule_text(runs)}; {count}", machine]


def fit_caption(runs: pd.DataFrame) -> str | None:
    """What a figure of runs that fit a small subset as stored shows, or None for other runs."""
    first = runs.iloc[0]
    if first["augment"] or pd.isna(first.get("train_subset")):
        return None
    test = f"{_count(first.get('test_subset'))} held-out images" if pd.notna(first.get("test_subset")) else "the test split"
    return (f"A fit: {_count(first['train_subset'])} training images as stored, no augmentation. Training error is the "
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


def timing_settings(timing: pd.DataFrame) -> list[tuple[dict, pd.DataFrame]]:
    """Split timing rows by measurement setting; within one, the latest row per (arch, depth, model, phase)."""
    timing = timing.assign(family=timing["family"].fillna("-"))
    keys = [c for c in TIMING_SETTING if c in timing]
    out = []
    for key, group in timing.groupby(keys, dropna=False, sort=True):
        latest = (group.sort_values("timestamp").drop_duplicates(["arch", "depth", "model", "phase"], keep="last")
                  .sort_values(["arch", "depth", "phase"]).reset_index(drop=True))
        out.append((dict(zip(keys, key)), latest))
    return out


def timing_table(timing: pd.DataFrame) -> pd.DataFrame:
    """One row per (arch, depth, model, phase) of one setting: time per batch, throughput, memory, compute."""
    columns = ["arch", "depth", "model", "phase", "status", "median_ms", "iqr_ms", "images_per_second",
               "peak_memory_bytes", "params", "flops_per_image", "tflops"]
    present = [c for c in columns if c in timing.columns]
    order = {phase: i for i, phase in enumerate(PHASES)}
    return (timing[present].assign(_phase=timing["phase"].map(order))
            .sort_values(["arch", "depth", "_phase"]).drop(columns="_phase").reset_index(drop=True))


def breakdown(timing: pd.DataFrame) -> pd.DataFrame:
    """Per (arch, depth): milliseconds per batch of forward, backward (forward_backward - forward), the
    optimizer step (train_step - forward_backward) and the measured train step (`total`: the three add up
    to it unless the measurements are noisy); NaN where a phase was not measured."""
    wide = timing.pivot_table(index=["arch", "depth"], columns="phase", values="median_ms", aggfunc="last")
    wide = wide.reindex(columns=list(PHASES))
    return pd.DataFrame({
        "forward": wide["forward"],
        "backward": wide["forward_backward"] - wide["forward"],
        "optimizer": wide["train_step"] - wide["forward_backward"],
        "total": wide["train_step"],
    }).reset_index()


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


def layer_profile(layers: pd.DataFrame, kind: str, when: str = "last") -> pd.DataFrame:
    """One row per (arch, depth, layer): `value`, the mean over seeds of `kind` at the first iteration
    (`when="first"`; runs resumed from before layers.parquet existed have none) or at each run's last
    measurement (`when="last"`), with `iteration` (the mean over seeds of when it was taken) and `seeds`.

    Layers are numbered in network order over the layers that have `kind` (Figure 7 counts 3x3 layers).
    """
    rows = layers[layers["kind"] == kind]
    if when == "first":
        rows = rows[rows["iteration"] == 1]
    if rows.empty:
        return pd.DataFrame(columns=["arch", "depth", "layer", "name", "value", "iteration", "seeds"])
    rows = rows[rows["iteration"] == rows.groupby("run_id")["iteration"].transform("max")].copy()
    rows["layer"] = rows.groupby("run_id")["layer"].rank(method="dense").astype(int)
    return (rows.groupby(["arch", "depth", "layer"])
            .agg(name=("name", "first"), value=("value", "mean"), iteration=("iteration", "mean"),
                 seeds=("run_id", "nunique"))
            .reset_index())


def response_ratios(profile: pd.DataFrame) -> pd.DataFrame:
    """Per depth with both nets: the mean response std over layers of the plain and the residual net
    (from `layer_profile(..., "response_std")`), and residual / plain."""
    means = profile.groupby(["depth", "arch"])["value"].mean().unstack("arch")
    rows = [{"depth": int(depth), "plain_std": row["plain"], "residual_std": row["residual"],
             "ratio": row["residual"] / row["plain"]}
            for depth, row in means.iterrows() if {"plain", "residual"} <= set(row.dropna().index)]
    return pd.DataFrame(rows, columns=["depth", "plain_std", "residual_std", "ratio"])


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
