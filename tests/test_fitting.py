"""What "fits" means (bench.results.fitting), and how the report and `bench run`'s summary read a fit at the floor."""

from __future__ import annotations

import dataclasses
import math

import pandas as pd
import pytest

from bench.results import prose

from bench.report import tables
from bench.results.fitting import (FIT_ERROR, NOISE_FLOOR, PASS_FLOOR, Fit, Pair, final_train_error, first_fit, fit_pass,
                                   fits, median_pass, net_fit, RunFit)
from bench.results.prose import fit_text, fit_verdict
from bench.run.summary import RunSummary, summary_table, verdict_lines


def test_fits_is_three_images_of_768_and_not_four() -> None:
    assert fits(3 / 768) and not fits(4 / 768)
    assert fits(0.0) and not fits(float("nan"))
    assert FIT_ERROR == 0.005


def test_final_training_error_spans_a_whole_epoch_of_iterations() -> None:
    def ends(iterations: int) -> list[int]:  # the iteration each epoch of 390 ends at, as bench run logs them
        return [*range(390, iterations, 390), iterations]

    assert final_train_error([0.5, 0.2, 0.1], ends(1170)) == 0.1  # whole epochs: the last one's
    # 16,000 = 41 x 390 + 10: the last 10 iterations are pooled with the 390 before them, by iterations.
    errors = [0.5] * 40 + [0.1, 0.3]
    assert final_train_error(errors, ends(16000)) == pytest.approx((390 * 0.1 + 10 * 0.3) / 400)
    assert final_train_error(errors[:-1] + [0.1], ends(16000)) == pytest.approx(0.1)
    # 4,000 = 10 x 390 + 100: the same, over 490.
    assert final_train_error([0.5] * 9 + [0.2, 0.1], ends(4000)) == pytest.approx((390 * 0.2 + 100 * 0.1) / 490)
    assert final_train_error([0.3], [10]) == 0.3
    assert math.isnan(final_train_error([0.2, float("nan")], [390, 400]))
    assert math.isnan(final_train_error([], []))


def test_first_fit_is_the_first_pass_at_the_floor_counted_from_one() -> None:
    assert first_fit([0.5, 0.1, 0.004, 0.01, 0.0]) == 3
    assert first_fit([0.5, 0.1, 0.006]) is None
    assert first_fit([float("nan"), 0.0]) == 2
    assert median_pass([21, None, 25]) == 23.0 and median_pass([None]) is None


def test_a_run_fits_only_if_it_ends_at_the_floor() -> None:
    assert fit_pass([0.5, 0.004, 0.01, 0.0]) == 2  # left the floor and came back: its first pass there
    assert fit_pass([0.5, 0.004, 0.01]) is None  # touched the floor and left it
    assert fit_pass([]) is None


def test_fit_text_says_the_pass_how_many_seeds_and_does_not_fit() -> None:
    assert fit_text(1, 1, 21.0) == "pass 21"
    assert fit_text(2, 3, 22.5) == "2 of 3 seeds, pass 22.5"
    assert fit_text(0, 1, None) == "does not fit"
    assert fit_text(0, 2, float("nan")) == "does not fit"


@pytest.mark.parametrize(("deep", "shallow", "expected"), [
    # The deeper does not fit what the shallower fits: the degradation problem, either arch.
    (Fit("plain", 34, 0.0, 1, 0, None), Fit("plain", 18, 0.0, 1, 1, 20.0),
     "plain-34 does not fit what plain-18 fits: degradation shown"),
    (Fit("residual", 34, 0.0, 1, 0, None), Fit("residual", 18, 0.0, 1, 1, 20.0),
     "residual-34 does not fit what residual-18 fits: the deeper residual net trains worse here, unlike the paper"),
    # Both fit: the pass decides.
    (Fit("residual", 34, 0.0, 1, 1, 21.0), Fit("residual", 18, 0.0, 1, 1, 25.0),
     "both fit, residual-34 first (pass 21 against pass 25): the deeper residual net trains better, as in the paper"),
    (Fit("residual", 34, 0.0, 1, 1, 25.0), Fit("residual", 18, 0.0, 1, 1, 25.0),
     "both fit, at the same pass 25: the deeper residual net trains as well, no degradation"),
    (Fit("residual", 34, 0.0, 1, 1, 28.0), Fit("residual", 18, 0.0, 1, 1, 25.0),
     "both fit, residual-34 later (pass 28 against pass 25): no degradation, but the deeper residual net fits"),
    (Fit("plain", 34, 0.0, 1, 1, 30.0), Fit("plain", 18, 0.0, 1, 1, 20.0),
     "both fit, plain-34 later (pass 30 against pass 20): NEGATIVE: no degradation shown"),
    # A pass apart on one seed each is within the noise floor of the pass: a tie, not a result.
    (Fit("residual", 34, 0.0, 1, 1, 20.0), Fit("residual", 18, 0.0, 1, 1, 21.0),
     "both fit, residual-34 first (pass 20 against pass 21), a tie within the 2-pass noise floor of one seed: the "
     "deeper residual net trains as well"),
    # Where seeds were measured, their spread is the noise: here 4 passes, so 3 passes earlier is a tie.
    (Fit("residual", 34, 0.0, 2, 2, 18.0, pass_spread=4.0), Fit("residual", 18, 0.0, 2, 2, 21.0),
     "a tie within the seed spread of 4 passes"),
    # Only the deeper fits.
    (Fit("plain", 34, 0.0, 1, 1, 30.0), Fit("plain", 18, 0.0, 1, 0, None),
     "plain-34 fits and plain-18 does not: NEGATIVE"),
    # Seeds: fewer of the deeper net's seeds fit.
    (Fit("plain", 34, 0.0, 3, 1, 40.0), Fit("plain", 18, 0.0, 3, 3, 20.0),
     "plain-34 does not fit what plain-18 fits (1 of 3 seeds): degradation shown"),
])
def test_the_verdict_at_the_floor(deep: Fit, shallow: Fit, expected: str) -> None:
    assert expected in fit_verdict(Pair(shallow, deep, False))


def test_no_verdict_at_the_floor_when_neither_fits() -> None:
    assert fit_verdict(Pair(Fit("plain", 18, 0.0, 1, 0, None), Fit("plain", 34, 0.0, 1, 0, None), False)) is None


def test_a_net_over_seeds_has_the_spread_of_its_final_error_and_its_pass() -> None:
    net = net_fit([RunFit("residual", 20, "finished", 17.52, None), RunFit("residual", 20, "finished", 18.49, None),
                   RunFit("residual", 20, "diverged", math.nan, None)])
    assert net.spread == pytest.approx(0.97) and math.isnan(net.pass_spread)
    fitted = net_fit([RunFit("residual", 18, "finished", 0.0, 19), RunFit("residual", 18, "finished", 0.0, 22)])
    assert fitted.pass_spread == 3 and fitted.spread == 0
    assert math.isnan(net_fit([RunFit("plain", 18, "finished", 3.0, None)]).spread)


@pytest.mark.parametrize(("shallow", "deep", "expected"), [
    # One seed each: a gap below the stated floor is a tie, above it a result that says what it beat.
    (Fit("residual", 18, 18.01, 1, 0, None), Fit("residual", 34, 17.94, 1, 0, None),
     f"gap -0.07 points, a tie within the {NOISE_FLOOR:g}-point noise floor of one seed: the deeper residual net "
     "trains as well, no degradation"),
    (Fit("residual", 20, 8.29, 1, 0, None), Fit("residual", 56, 6.80, 1, 0, None),
     f"gap -1.49 points, the deeper residual net trains better, as in the paper, beyond the {NOISE_FLOOR:g}-point "
     "noise floor of one seed."),
    (Fit("plain", 20, 22.24, 1, 0, None), Fit("plain", 56, 22.90, 1, 0, None),
     "a tie within the 1-point noise floor of one seed: NEGATIVE: no degradation shown"),
    # Two seeds: the spread is given, and is the noise.
    (Fit("residual", 20, 18.01, 2, 0, None, spread=0.97), Fit("residual", 56, 21.31, 1, 0, None),
     "gap +3.30 points (seed spread 0.97), the deeper residual net trains worse here, unlike the paper, beyond the "
     "seed spread."),
    (Fit("residual", 20, 18.01, 2, 0, None, spread=0.97), Fit("residual", 56, 18.51, 1, 0, None),
     "gap +0.50 points (seed spread 0.97), a tie within the seed spread"),
])
def test_a_gap_within_the_noise_is_a_tie(shallow: Fit, deep: Fit, expected: str) -> None:
    assert expected in prose.degradation_sentence(Pair(shallow, deep, False))


def test_the_noise_floors_are_stated_numbers() -> None:
    assert NOISE_FLOOR == 1.0 and PASS_FLOOR == 2


def _curve(floor: float, fit_at: int | None, passes: int = 8) -> list[float]:
    """Training error per pass: falling to `floor`, reaching 0 from `fit_at` on when given."""
    return [0.0 if fit_at and p >= fit_at else max(floor, 0.6 - 0.1 * p) for p in range(1, passes + 1)]


NETS = {("plain", 18): _curve(0.0, 5), ("plain", 34): _curve(0.2, None),
        ("residual", 18): _curve(0.0, 6), ("residual", 34): _curve(0.0, 4)}


def test_the_report_reads_the_fit_from_the_logged_epochs() -> None:
    epochs = pd.DataFrame([
        {"run_id": f"{arch}-{depth}", "arch": arch, "depth": depth, "epoch": p, "iteration": 6 * p,
         "train_error": error, "test_error": 0.5, "train_loss": 1.0, "test_loss": 1.0}
        for (arch, depth), curve in NETS.items() for p, error in enumerate(curve, start=1)])
    runs = pd.DataFrame([{"run_id": f"{arch}-{depth}", "arch": arch, "depth": depth, "seed": 0, "state": "finished",
                          "params": 1, "epochs_total": 8, "dataset": "synthetic", "preset": "quick",
                          "train_subset": 768, "test_subset": 250, "width": 8} for arch, depth in NETS])
    errors = tables.error_table(epochs, runs).set_index(["arch", "depth"])
    assert errors.loc[("plain", 34), "fitted"] == 0 and pd.isna(errors.loc[("plain", 34), "first_fit"])
    assert errors.loc[("residual", 34), "first_fit"] == 4
    sentences = {row["arch"]: prose.degradation_verdict(row)
                 for _, row in tables.degradation(errors.reset_index()).iterrows()}
    assert "plain-34 does not fit what plain-18 fits: degradation shown" in sentences["plain"]
    assert "20.00% training error" in sentences["plain"]  # the final errors still head the sentence
    assert "residual-34 first (pass 4 against pass 6): the deeper residual net trains better" in sentences["residual"]


def test_the_run_summary_gives_the_first_fit_and_the_verdicts() -> None:
    summary = [RunSummary(run_id=f"{arch}-{depth}", arch=arch, depth=depth, seed=0, state="finished",
                          seconds=60.0,
                          rows=[{"train_error": e, "test_error": 0.5, "iteration": 6 * p} for p, e in enumerate(curve, 1)])
               for (arch, depth), curve in NETS.items()]
    table = summary_table(summary)
    column = next(c for c in table.columns if c.header == "first fit")
    assert list(column.cells) == ["pass 5", "does not fit", "pass 6", "pass 4"]
    assert verdict_lines(summary) == [
        "plain: the 34-layer net ends at 20.00% training error, the 18-layer at 0.00%: gap +20.00 points, "
        "plain-34 does not fit what plain-18 fits: degradation shown (the deeper plain net trains worse).",
        "residual: the 34-layer net ends at 0.00% training error, the 18-layer at 0.00%: gap +0.00 points, "
        "both fit, residual-34 first (pass 4 against pass 6): the deeper residual net trains better, as in the paper."]


def test_where_neither_fits_the_summary_reads_the_gap() -> None:
    summary = [RunSummary(run_id=f"plain-{depth}", arch="plain", depth=depth, seed=0, state=state, note=note,
                          seconds=60.0, rows=[{"train_error": error, "test_error": 0.5, "iteration": 6}])
               for depth, error, state, note in ((18, 0.03, "finished", "earlier"), (34, 0.5, "interrupted", ""))]
    assert verdict_lines(summary) == [
        "plain: the 34-layer net ends at 50.00% training error, the 18-layer at 3.00%: gap +47.00 points, "
        "degradation shown, beyond the 1-point noise floor of one seed (the deeper plain net trains worse) "
        "(provisional: runs still in progress)."]


def test_the_summary_reads_every_depth_against_the_next_shallower() -> None:
    curves = {18: [0.5, 0.0], 34: [0.5, 0.0], 50: [0.9, 0.85]}  # 50 does not fit what 34 fits
    summary = [RunSummary(run_id=f"residual-{depth}", arch="residual", depth=depth, seed=0, state="finished",
                          seconds=60.0, rows=[{"train_error": e, "test_error": 0.5, "iteration": 6 * p}
                                              for p, e in enumerate(curve, 1)])
               for depth, curve in curves.items()]
    lines = verdict_lines(summary)
    assert len(lines) == 2
    assert lines[0].startswith("residual: the 34-layer net ends at 0.00% training error, the 18-layer at 0.00%")
    assert "both fit, at the same pass 2" in lines[0]
    assert lines[1].startswith("residual: the 50-layer net ends at 85.00% training error, the 34-layer at 0.00%")
    assert "residual-50 does not fit what residual-34 fits" in lines[1]
    # Run with the quick preset, the summary says why its 50-layer net did not start, and where to look.
    quick = verdict_lines([dataclasses.replace(item, preset="quick") for item in summary])
    assert quick[:2] == lines and quick[2] == prose.STALLED_50 and "docs/quick-preset.md" in quick[2]
    errors = pd.DataFrame([{"arch": "residual", "depth": d, "final_train_mean": 100 * c[-1], "final_test_mean": 50.0,
                            "unfinished": 0, "runs": 1, "fitted": int(c[-1] <= 0.005),
                            "first_fit": 2 if c[-1] <= 0.005 else None} for d, c in curves.items()])
    pairs = tables.degradation(errors)
    assert pairs[["shallow_depth", "deep_depth"]].values.tolist() == [[18, 34], [34, 50]]
    assert pairs["train_gap"].tolist() == [0.0, 85.0]


def test_the_summary_and_the_report_give_the_same_verdicts_a_diverged_run_counted_not_averaged() -> None:
    # Two seeds of each net; residual-18's second diverged at pass 3 (its loss and errors NaN there).
    curves = {(arch, depth, 0): curve for (arch, depth), curve in NETS.items()}
    curves |= {("plain", 18, 1): _curve(0.0, 6), ("plain", 34, 1): _curve(0.0, 7), ("residual", 34, 1): _curve(0.0, 5),
               ("residual", 18, 1): [0.6, 0.5, math.nan]}
    states = {key: "diverged" if math.isnan(curve[-1]) else "finished" for key, curve in curves.items()}
    rows = {key: [{"run_id": "-".join(map(str, key)), "arch": key[0], "depth": key[1], "epoch": p, "iteration": 6 * p,
                   "train_error": error, "test_error": 0.5, "train_loss": error, "test_loss": 1.0}
                  for p, error in enumerate(curve, start=1)] for key, curve in curves.items()}
    runs = pd.DataFrame([{"run_id": "-".join(map(str, key)), "arch": key[0], "depth": key[1], "seed": key[2],
                          "state": states[key], "params": 1, "epochs_total": 8, "dataset": "synthetic",
                          "preset": "quick", "train_subset": 768, "test_subset": 250, "width": 8} for key in curves])
    errors = tables.error_table(pd.DataFrame([row for of_run in rows.values() for row in of_run]), runs)
    report = [prose.degradation_verdict(row) for _, row in tables.degradation(errors).iterrows()]
    summary = verdict_lines([RunSummary("-".join(map(str, key)), key[0], key[1], key[2], states[key], rows[key])
                             for key in curves])
    assert summary == report
    # The diverged seed is left out of residual-18's final error (not NaN) and counted among its runs, unfitted.
    assert summary[1] == (
        "residual: the 34-layer net ends at 0.00% training error, the 18-layer at 0.00%: gap +0.00 points (seed "
        "spread 0.00), residual-34 fits and residual-18 does not (1 of 2 seeds): the deeper residual net trains "
        "better, as in the paper.")
