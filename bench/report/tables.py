"""The numbers behind the report: curves averaged over seeds, error tables, gaps, timing summaries (bench.results.prose
says them in words).

The epoch rows store errors as fractions (0.0712); everything here is in percent, as the paper prints it.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd

from bench.core.records import DIVERGED, FINISHED, PHASES, UNFINISHED
from bench.results.fitting import Fit, RunFit, final_train_error, fit_pass, net_fit, pairs
from bench.results.prose import count_text
from bench.timing.timing_rows import TIMING_SETTING

# He et al. (2015), Table 6: CIFAR-10 test error (%) of the residual nets, paper schedule, full data.
PAPER_CIFAR10_RESNET = {20: 8.75, 32: 7.51, 44: 7.17, 56: 6.97, 110: 6.43}

def with_percent(epochs: pd.DataFrame) -> pd.DataFrame:
    """The epoch rows with `train` and `test`: the errors in percent, NaN for an epoch whose loss is NaN or
    infinite (the epoch a run diverged: its errors measure the blow-up, not the network)."""
    sane = np.isfinite(epochs["train_loss"].astype(float)) & np.isfinite(epochs["test_loss"].astype(float))
    top5 = {"top5": epochs["test_top5_error"].where(sane) * 100} if "test_top5_error" in epochs else {}
    return epochs.assign(train=epochs["train_error"].where(sane) * 100, test=epochs["test_error"].where(sane) * 100,
                         **top5)


def pooled_percent(epochs: pd.DataFrame) -> pd.DataFrame:
    """`with_percent`, with each run's last training error replaced by its final training error (bench.results.fitting.
    final_train_error, pooled over the last whole epoch of iterations): a curve then ends at the number the
    tables give, not on a short last epoch of a few batches."""
    frame = with_percent(epochs).sort_values(["run_id", "epoch"])
    last = frame.groupby("run_id").tail(1).index
    final = {run_id: final_train_error(run["train"].to_numpy(), run["iteration"].to_numpy())
             for run_id, run in frame.groupby("run_id")}
    frame.loc[last, "train"] = frame.loc[last, "run_id"].map(final).to_numpy(dtype=float)
    return frame


def curves(epochs: pd.DataFrame, x: str = "epoch") -> pd.DataFrame:
    """One row per (arch, depth, epoch): the x position (column `x`) and, over the seeds that reached
    that epoch, `seeds` and the mean, std, min and max of train and test error in percent; each run's last
    training error is its pooled final one (`pooled_percent`).

    NaN errors (see `with_percent`) are skipped by every statistic, so they never break a line.
    """
    frame = pooled_percent(epochs)
    stats = {"x": (x, "mean"), "seeds": ("run_id", "nunique")}
    for kind in ("train", "test"):
        for stat in ("mean", "std", "min", "max"):
            stats[f"{kind}_{stat}"] = (kind, stat)
    return frame.groupby(["arch", "depth", "epoch"]).agg(**stats).reset_index()


def curve_gaps(data: pd.DataFrame) -> pd.DataFrame:
    """From `curves`: per arch, each depth's mean training error minus the next shallower depth's, epoch by epoch
    (points; below zero the deeper net trains better). Columns arch, shallow, deep, epoch, x, gap."""
    columns = ["arch", "shallow", "deep", "epoch", "x", "gap"]
    parts = []
    for arch, of_arch in data.groupby("arch", sort=False):
        train = of_arch.pivot_table(index="epoch", columns="depth", values="train_mean")
        x = of_arch.groupby("epoch")["x"].mean()
        depths = sorted(train.columns)
        for shallow, deep in zip(depths, depths[1:]):
            both = train[[shallow, deep]].dropna()
            parts.append(pd.DataFrame({"arch": arch, "shallow": int(shallow), "deep": int(deep), "epoch": both.index,
                                       "x": x.reindex(both.index).to_numpy(),
                                       "gap": (both[deep] - both[shallow]).to_numpy()}))
    return pd.concat(parts, ignore_index=True)[columns] if parts else pd.DataFrame(columns=columns)


def final_errors(epochs: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """One row per run: its final training error (bench.results.fitting.final_train_error: pooled over its last whole
    epoch of iterations) and its last epoch's test error (NaN if an error is), its best test error (percent),
    the pass at which it first fit its training set (bench.results.fitting.fit_pass; NaN unless it ends fitted), how
    many epochs it has done, and its state."""
    frame = with_percent(epochs).sort_values(["run_id", "epoch"])
    runs_of = frame.groupby("run_id")
    last = runs_of.tail(1).set_index("run_id")
    first = runs_of["train"].agg(lambda train: fit_pass(train / 100))
    final = pd.Series({run_id: final_train_error(run["train"].to_numpy(), run["iteration"].to_numpy())
                       for run_id, run in runs_of}, dtype=float).rename_axis("run_id")
    per_run = pd.DataFrame({"final_train": final, "final_test": last["test"], "epochs_done": last["epoch"],
                            "best_test": runs_of["test"].min(), "first_fit": first,
                            "final_top5": last["top5"] if "top5" in last else math.nan})
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
    """Final and best test error per (arch, depth), mean and std over seeds, beside the paper's number; the
    final training error and the fit are the net's bench.results.fitting.Fit.

    Diverged runs are counted (`diverged`) but left out of the statistics: their last error measures the
    divergence, not the network. Runs still in progress count with the error they have reached so far.
    """
    finals = final_errors(epochs, runs)
    rows = []
    for (arch, depth), group in finals.groupby(["arch", "depth"]):
        net = net_fit([RunFit(arch, int(depth), run.state, run.final_train,
                              None if pd.isna(run.first_fit) else int(run.first_fit)) for run in group.itertuples()])
        kept = group[group["state"] != DIVERGED]
        first = runs[(runs["arch"] == arch) & (runs["depth"] == depth)].iloc[0]
        paper_setup = (pd.isna(first.get("train_subset")) and pd.isna(first.get("test_subset"))
                       and first.get("width") in (16, None))
        final_test, final_test_std = _mean_std(kept["final_test"])
        # The top-5 error where the runs measured it (null in results that predate it): otherwise no column.
        top5 = dict(zip(("final_top5_mean", "final_top5_std"), _mean_std(kept["final_top5"])))
        best_test, best_test_std = _mean_std(kept["best_test"])
        running = group[group["state"].isin(UNFINISHED)]
        rows.append({
            "arch": arch, "depth": int(depth), "params": group["params"].iloc[0],
            "runs": net.runs, "diverged": int((group["state"] == DIVERGED).sum()),
            "unfinished": net.unfinished,
            "final_test_mean": final_test, "final_test_std": final_test_std,
            **(top5 if finals["final_top5"].notna().any() else {}),
            "best_test_mean": best_test, "best_test_std": best_test_std,
            "final_train_mean": net.final_train, "final_train_std": kept["final_train"].dropna().std(),
            "final_train_spread": net.spread, "first_fit_spread": net.pass_spread,
            "fitted": net.fitted, "first_fit": math.nan if net.first_fit is None else net.first_fit,
            "paper_test": paper_test_error(str(first["dataset"]), str(first["preset"]), arch, int(depth), paper_setup),
            "note": _progress_note(running),
        })
    return pd.DataFrame(rows)


def _progress_note(running: pd.DataFrame) -> str:
    notes = [f"seed {r.seed} {r.state} at {r.epochs_done}/{count_text(r.epochs_total)} epochs"
             for r in running.itertuples()]
    return "; ".join(notes)


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
    """Each net of `errors` (an error_table) against the next shallower one of its arch (bench.results.fitting.pairs):
    final training error of the deeper minus the shallower's (percentage points), and the same of the final
    test error. Positive for plain nets is the degradation problem; negative means none is shown."""
    nets = [Fit(row.arch, int(row.depth), row.final_train_mean, int(row.runs), int(row.fitted),
                None if pd.isna(row.first_fit) else float(row.first_fit), int(row.unfinished),
                float(getattr(row, "final_train_spread", math.nan)), float(getattr(row, "first_fit_spread", math.nan)))
            for row in errors.sort_values(["arch", "depth"]).itertuples()]
    test = errors.set_index(["arch", "depth"])["final_test_mean"]
    rows = []
    for pair in pairs(nets):
        shallow, deep = pair.shallow, pair.deep
        rows.append({"arch": deep.arch, "shallow_depth": shallow.depth, "deep_depth": deep.depth,
                     "shallow_train": shallow.final_train, "deep_train": deep.final_train,
                     "train_gap": deep.final_train - shallow.final_train,
                     "test_gap": test[(deep.arch, deep.depth)] - test[(shallow.arch, shallow.depth)],
                     "provisional": pair.provisional,
                     **{f"{name}_{key}": math.nan if value is None else value
                        for name, net in (("shallow", shallow), ("deep", deep))
                        for key, value in (("runs", net.runs), ("fitted", net.fitted), ("first_fit", net.first_fit),
                                           ("spread", net.spread), ("pass_spread", net.pass_spread))}})
    return pd.DataFrame(rows, columns=["arch", "shallow_depth", "deep_depth", "shallow_train", "deep_train",
                                       "train_gap", "test_gap", "provisional", "shallow_runs", "shallow_fitted",
                                       "shallow_first_fit", "shallow_spread", "shallow_pass_spread", "deep_runs",
                                       "deep_fitted", "deep_first_fit", "deep_spread", "deep_pass_spread"])


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
    lr, shallow_train and deep_train (their training errors, %, each run's last one pooled: `pooled_percent`) and
    gap."""
    finished = runs[(runs["state"] == FINISHED) & runs["iterations"].notna()]
    mine = epochs[epochs["run_id"].isin(finished["run_id"])]
    frame = pooled_percent(mine.drop(columns=["iterations", "precision"], errors="ignore")).merge(
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
    nets' final training errors (each curve's last point, pooled by `training_gaps`), `final_gap` their
    difference."""
    keys = ["arch", "shallow", "deep", "iterations", "precision", "seed"]
    rows = []
    for key, curve in gaps.groupby(keys, sort=True):
        below = curve["gap"].to_numpy() < 0
        at = curve["iteration"].to_numpy()
        # The last epoch at or above zero; the curve stays below after it.
        last_above = np.flatnonzero(~below).max() if (~below).any() else -1
        settled = bool(below[-1])
        # training_gaps ends each curve on the runs' pooled final errors (pooled_percent).
        shallow_final, deep_final = (float(curve[net].iloc[-1]) for net in ("shallow_train", "deep_train"))
        rows.append({**dict(zip(keys, key)),
                     "first_below": at[below.argmax()] if below.any() else math.nan,
                     "below_from": at[last_above + 1] if settled else math.nan,
                     "lr_then": curve["lr"].iloc[last_above + 1] if settled else math.nan,
                     "shallow_final": shallow_final, "deep_final": deep_final,
                     "final_gap": deep_final - shallow_final})
    return pd.DataFrame(rows, columns=[*keys, "first_below", "below_from", "lr_then", "shallow_final",
                                       "deep_final", "final_gap"])


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


