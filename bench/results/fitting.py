"""What "fits" means, and the numbers of the verdict on each pair of nets, computed once for `bench run`'s
summary and `bench report` (bench.results.prose says them in words).

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

import numpy as np

from bench.core.records import DIVERGED, UNFINISHED

# Training error (a fraction) at or below which a net fits its set: 3 images of the quick preset's 768, the
# same fraction of any other. Not 0: one image left over is noise at the floor, not an optimisation failure.
FIT_ERROR = 0.005
# Where neither net of a pair has two seeds, a gap in final training error (points) below this is a tie: two
# seeds of one reference net differed by about this much (docs/reference-results.md), and nothing smaller is
# known to be more than noise.
NOISE_FLOOR = 1.0
# The same for the pass of first fit where neither net has two seeds that fit (passes): residual-18's first fit
# moved over this many passes across six seeds of the quick preset (docs/quick-preset.md).
PASS_FLOOR = 2


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


@dataclass(frozen=True)
class RunFit:
    """How one run ended in training error: what the verdict on its net is computed from."""

    arch: str
    depth: int
    state: str  # a run state (bench.core.records.STATES)
    final_train: float  # final training error (final_train_error), percent; NaN where an error is
    first_fit: int | None  # the pass of first fit (fit_pass): None unless the run ends fitted


@dataclass(frozen=True)
class Fit:
    """How the runs of one net (arch x depth) ended, over their seeds."""

    arch: str
    depth: int
    final_train: float  # final training error, percent, mean over the seeds that did not diverge
    runs: int
    fitted: int  # runs that end fitted (fit_pass), of those that did not diverge
    first_fit: float | None  # the median pass of first fit of the runs that fitted; None when none did
    unfinished: int = 0  # runs that may train further
    spread: float = math.nan  # final training error, max minus min over its seeds (points); NaN under two seeds
    pass_spread: float = math.nan  # the pass of first fit, max minus min over its seeds that fit; NaN under two

    @property
    def net(self) -> str:
        return f"{self.arch}-{self.depth}"


@dataclass(frozen=True)
class Pair:
    """A net against the next shallower one of its arch: what one verdict is read from."""

    shallow: Fit
    deep: Fit
    provisional: bool  # a run of the arch may train further

    @property
    def gap(self) -> float:
        """Final training error, deeper minus shallower (points)."""
        return self.deep.final_train - self.shallow.final_train

    @property
    def spread(self) -> float:
        """The larger seed spread of its two nets (points), NaN where neither has two seeds."""
        return _larger(self.shallow.spread, self.deep.spread)

    @property
    def noise(self) -> float:
        """What its gap is read against: the measured seed spread, or NOISE_FLOOR where none was measured."""
        return NOISE_FLOOR if math.isnan(self.spread) else self.spread

    @property
    def pass_spread(self) -> float:
        """The larger spread of the pass of first fit of its two nets, NaN where neither has two seeds that fit."""
        return _larger(self.shallow.pass_spread, self.deep.pass_spread)

    @property
    def pass_noise(self) -> float:
        """What a difference in the pass of first fit is read against: its spread, or PASS_FLOOR."""
        return PASS_FLOOR if math.isnan(self.pass_spread) else self.pass_spread

    @property
    def tie(self) -> bool:
        """Whether its gap is within the noise: neither net shown to train better."""
        return is_tie(self.gap, self.noise)


def _larger(a: float, b: float) -> float:
    """The larger of two spreads, either of which may be NaN (not measured); NaN where neither was."""
    measured = [value for value in (a, b) if not math.isnan(value)]
    return max(measured) if measured else math.nan


def is_tie(gap: float, noise: float) -> bool:
    """Whether a difference (points) is within `noise` (a seed spread, or NOISE_FLOOR): no result either way."""
    return abs(gap) < noise


def net_fit(runs: Sequence[RunFit]) -> Fit:
    """The Fit of one net from its runs. A diverged run counts among the runs but not in the error or the fit:
    its last error measures the divergence, not the network."""
    kept = [run for run in runs if run.state != DIVERGED]
    finals = [run.final_train for run in kept if not math.isnan(run.final_train)]
    passes = [run.first_fit for run in kept if run.first_fit is not None]
    spread = float(max(finals) - min(finals)) if len(finals) >= 2 else math.nan
    pass_spread = float(max(passes) - min(passes)) if len(passes) >= 2 else math.nan
    return Fit(runs[0].arch, runs[0].depth, float(np.mean(finals)) if finals else math.nan, len(runs), len(passes),
               median_pass(passes), sum(run.state in UNFINISHED for run in runs), spread, pass_spread)


def net_fits(runs: Iterable[RunFit]) -> list[Fit]:
    """One Fit per net (arch x depth) of `runs`, in the order each net first appears."""
    by_net: dict[tuple[str, int], list[RunFit]] = {}
    for run in runs:
        by_net.setdefault((run.arch, run.depth), []).append(run)
    return [net_fit(of_net) for of_net in by_net.values()]


def pairs(nets: Iterable[Fit]) -> list[Pair]:
    """Per arch with two depths or more (in the order each arch first appears), each net against the next
    shallower one (18 against 34, then 34 against 50); nets with no final error are left out."""
    known = [net for net in nets if not math.isnan(net.final_train)]
    out = []
    for arch in dict.fromkeys(net.arch for net in known):
        of_arch = sorted((net for net in known if net.arch == arch), key=lambda net: net.depth)
        provisional = any(net.unfinished for net in of_arch)
        out += [Pair(shallow, deep, provisional) for shallow, deep in zip(of_arch, of_arch[1:])]
    return out
