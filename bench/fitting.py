"""What "fits" means, and the verdict on a pair of nets, defined once for `bench run`'s summary and
`bench report`.

The `quick` preset fits a small training set as it is stored. At the 0% floor "which net ends lower" is
decided by an image or two, so the question there is whether a net fits the set, and how fast: the pass
(epoch) at which its training error first reaches the floor. Where neither net of a pair fits, the gap in
final training error gives the verdict, as it always did.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from resnet import SHORTCUT_ARCHS

# Training error (a fraction) at or below which a net fits its set: 3 images of the quick preset's 768, the
# same fraction of any other. Not 0: one image left over is noise at the floor, not an optimisation failure.
FIT_ERROR = 0.005


def final_train_error(train_errors: Sequence[float], iterations: Sequence[int]) -> float:
    """Where a run ends in training error (the unit of `train_errors`, one per epoch, with the iteration each
    ended at): its last epoch's, pooled with the epochs before it, weighted by their iterations, until they
    span a whole epoch. A schedule of iterations ends on a short epoch (16,000 = 41 x 390 + 10): alone its
    running error is 10 batches, 1,280 images, and moved by a point against the whole epoch before it at the
    same learning rate (plain-20, 16,000 iterations: 11.48% vs 10.47%). Test error needs no such care: it is
    measured on the whole test set at the last weights. NaN where any pooled epoch's error is NaN."""
    ends = [int(i) for i in iterations]
    if not ends:
        return math.nan
    counts = [b - a for a, b in zip([0, *ends[:-1]], ends)]
    # A whole epoch is the usual length (the median), which the short last one does not move.
    whole, pooled, weight = statistics.median(counts), 0.0, 0
    for error, count in zip(reversed(train_errors), reversed(counts)):
        pooled, weight = pooled + float(error) * count, weight + count
        if weight >= whole:
            break
    return pooled / weight if weight else math.nan


def first_fit(train_errors: Iterable[float]) -> int | None:
    """The pass (1-based epoch) at which the training error (fractions, one per epoch) first is at most
    FIT_ERROR, or None when it never is."""
    return next((epoch for epoch, error in enumerate(train_errors, start=1) if error <= FIT_ERROR), None)


def fit_pass(train_errors: Iterable[float]) -> int | None:
    """The pass of first fit of a run that ends fitted (its last epoch fits), else None: a run that touched the
    floor and left it does not fit its set. What `bench run`'s summary, the report's table and its figure show."""
    errors = list(train_errors)
    return first_fit(errors) if errors and fits(errors[-1]) else None


def median_pass(passes: Iterable[int | None]) -> float | None:
    """The median of the passes that are not None, or None when all are."""
    known = [p for p in passes if p is not None]
    return float(statistics.median(known)) if known else None


def fits(final_train_error: float) -> bool:
    """Whether a run that ended at this training error (a fraction) fits its set; NaN does not."""
    return final_train_error <= FIT_ERROR


def fit_text(fitted: int, runs: int, first_fit: float | None) -> str:
    """A table cell: 'pass 21' (of first fit, the median over the runs that fitted), '2 of 3 seeds, pass 21'
    when only some fitted, 'does not fit' when none did."""
    if not fitted or first_fit is None or math.isnan(first_fit):
        return "does not fit"
    return ("" if fitted == runs else f"{fitted} of {runs} seeds, ") + f"pass {first_fit:g}"


@dataclass(frozen=True)
class Fit:
    """How the runs of one net (arch x depth) ended, over their seeds."""

    arch: str
    depth: int
    final_train: float  # final training error, percent, mean over the seeds
    runs: int
    fitted: int  # runs whose final training error is at most FIT_ERROR
    first_fit: float | None  # the median pass of first fit of the runs that fitted; None when none did

    @property
    def net(self) -> str:
        return f"{self.arch}-{self.depth}"

    @property
    def pass_text(self) -> str:
        """'pass 21', or 'pass -' when no run fitted."""
        return "pass -" if self.first_fit is None else f"pass {self.first_fit:g}"

    @property
    def share(self) -> str:
        """'' for a single run, else ' (2 of 3 seeds)'."""
        return "" if self.runs == 1 else f" ({self.fitted} of {self.runs} seeds)"


def degradation_sentence(shallow: Fit, deep: Fit, *, provisional: bool = False) -> str:
    """The degradation of one arch, its deepest net against its shallowest, in one sentence: the final
    training errors and their gap, then the verdict (read at the floor where either net fits, else from the
    gap), saying plainly when it is negative (none shown)."""
    gap = deep.final_train - shallow.final_train
    head = (f"{deep.arch}: the {deep.depth}-layer net ends at {deep.final_train:.2f}% training error, "
            f"the {shallow.depth}-layer at {shallow.final_train:.2f}%: gap {gap:+.2f} points")
    verdict = fit_verdict(shallow, deep) or _gap_verdict(deep.arch, gap)
    tail = " (provisional: runs still in progress)" if provisional else ""
    return f"{head}, {verdict}{tail}."


def _gap_verdict(arch: str, gap: float) -> str:
    if arch not in SHORTCUT_ARCHS:
        return (f"degradation shown (the deeper {arch} net trains worse)" if gap > 0
                else f"NEGATIVE: no degradation shown (the deeper {arch} net trains as well or better)")
    if math.isclose(gap, 0.0, abs_tol=1e-9):
        return f"the deeper {arch} net trains as well, no degradation (the paper's trains better)"
    return (f"the deeper {arch} net trains better, as in the paper" if gap < 0
            else f"the deeper {arch} net trains worse here, unlike the paper")


def fit_verdict(shallow: Fit, deep: Fit) -> str | None:
    """The degradation read at the floor, or None when neither net fits. Deeper fits first: the paper's
    "deeper residual trains better"; both fit: no degradation; the deeper does not fit what the shallower
    fits: degradation."""
    if not shallow.fitted and not deep.fitted:
        return None
    plain, arch = deep.arch not in SHORTCUT_ARCHS, deep.arch
    if deep.fitted < shallow.fitted:
        head = f"{deep.net} does not fit what {shallow.net} fits{deep.share}"
        return f"{head}: " + (f"degradation shown (the deeper {arch} net trains worse)" if plain
                              else f"the deeper {arch} net trains worse here, unlike the paper")
    if deep.fitted > shallow.fitted:
        head = f"{deep.net} fits and {shallow.net} does not{shallow.share}"
        return f"{head}: " + (f"NEGATIVE: no degradation shown (the deeper {arch} net trains better)" if plain
                              else f"the deeper {arch} net trains better, as in the paper")
    if deep.first_fit < shallow.first_fit:
        head = f"both fit{deep.share}, {deep.net} first ({deep.pass_text} against {shallow.pass_text})"
        tail = (f"NEGATIVE: no degradation shown (the deeper {arch} net trains better)" if plain
                else f"the deeper {arch} net trains better, as in the paper")
    elif deep.first_fit == shallow.first_fit:
        head = f"both fit{deep.share}, at the same {deep.pass_text}"
        tail = (f"NEGATIVE: no degradation shown (the deeper {arch} net trains as well)" if plain
                else f"the deeper {arch} net trains as well, no degradation (the paper's trains better)")
    else:
        head = f"both fit{deep.share}, {deep.net} later ({deep.pass_text} against {shallow.pass_text})"
        tail = (f"NEGATIVE: no degradation shown (the deeper {arch} net fits too, more slowly)" if plain
                else f"no degradation, but the deeper {arch} net fits more slowly (the paper's trains better)")
    return f"{head}: {tail}"
