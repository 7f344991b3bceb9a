"""The report's tables in Markdown, and the crossings in words: what reports/README.md shows of each table
that bench.report.tables computes (the CSV beside it keeps every digit)."""

from __future__ import annotations

import math
from collections.abc import Callable

import pandas as pd

from bench.report.timing_plots import PHASE_LABELS
from bench.results import prose
from bench.results.fitting import FIT_ERROR, NOISE_FLOOR, is_tie


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
