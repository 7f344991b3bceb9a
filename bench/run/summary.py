"""What `bench run` prints when a grid ends: one line per run, then the verdict on each pair of nets, read the
way `bench report` reads it (bench.results.fitting computes it, bench.results.prose says it)."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.core.config import IMAGENET, QUICK, RunConfig
from bench.core.errors import BenchError, Notify
from bench.core.records import RunStatus
from bench.results import reading
from bench.results.fitting import RunFit, final_train_error, fit_pass, net_fits, pairs
from bench.results.prose import STALLED_50, degradation_sentence, fit_text
from bench.run.progress import print_whole
from resnet import family_of

# The notes a summary line adds to a run's state, for a person: why the grid did not train it to an end of
# its own in this command.
BUSY = "busy (another process)"  # another process holds its lock: its state is that process's to say
OUT_OF_MEMORY = "out of memory"  # it failed for memory, building or training; the grid went on
EARLIER = "earlier"  # it finished or diverged in an earlier command
NOT_STARTED = "not started"  # no worker got to it


@dataclass(frozen=True)
class RunSummary:
    """One run of a grid as the summary gives it."""

    run_id: str
    arch: str
    depth: int
    seed: int
    state: RunStatus | None  # its run state as status.json records it; None where the grid does not know it
    rows: list[dict] = field(default_factory=list)  # its EpochRow dicts, as read back
    seconds: float = 0.0  # training time in this grid
    preset: str = ""  # the preset it was configured from
    note: str = ""  # the words a person is shown beside the state (EARLIER, BUSY...); never parsed back

    def __post_init__(self) -> None:  # a word that is no run state is refused here, not read back later
        if self.state is not None:
            object.__setattr__(self, "state", RunStatus(self.state))

    @classmethod
    def of(cls, config: RunConfig, state: RunStatus | None, rows: list[dict], seconds: float = 0.0,
           note: str = "") -> RunSummary:
        """The summary of `config`'s run."""
        return cls(config.run_id(), config.arch, config.depth, config.seed, state, rows, seconds, config.preset,
                   note)

    @property
    def shown(self) -> str:
        """Its state as the summary table shows it: "finished (earlier)", "busy (another process)"."""
        if self.state is None:
            return self.note
        return f"{self.state} ({self.note})" if self.note else str(self.state)

    @functools.cached_property
    def final_train(self) -> float:
        """Its final training error, a fraction (bench.results.fitting.final_train_error)."""
        return final_train_error([r["train_error"] for r in self.rows], [r["iteration"] for r in self.rows])

    @functools.cached_property
    def first_fit(self) -> int | None:
        """The pass at which it first fit its training set, if it ends fitted (bench.results.fitting.fit_pass)."""
        return fit_pass(r["train_error"] for r in self.rows)

    def fit(self) -> RunFit:
        """What the verdict on its net is computed from (a run with rows has a state)."""
        return RunFit(self.arch, self.depth, self.state, 100 * self.final_train, self.first_fit)  # type: ignore[arg-type]


def read_rows(directory: Path, notify: Notify, *, repair: bool = False) -> list[dict]:
    """The run's epoch rows for the summary; a torn epochs.parquet is read from the checkpoint (and written
    again when `repair`), and an unreadable run costs a notice, never the rest of the grid."""
    try:
        return reading.read_epochs(directory, notify, repair=repair).to_dict("records")
    except BenchError as error:
        notify(str(error))
        return []


def summary_table(summary: list[RunSummary]) -> Table:
    """The end-of-grid table: one line per run with its state, final errors and the pass at which it first
    fit its training set (bench.results.fitting)."""
    # The final top-5 test error too where a run is of the imagenet preset: the paper gives ImageNet's top-5.
    top5 = any(item.preset == IMAGENET.preset for item in summary)
    table = Table(title="bench run", show_lines=False)
    for column in ("run_id", "arch", "depth", "seed", "state", "epochs", "train err", "first fit", "test err",
                   *(("test top-5",) if top5 else ()), "best test", "minutes"):
        table.add_column(column, justify="right" if column not in ("run_id", "arch", "state") else "left")
    for item in summary:
        last = item.rows[-1] if item.rows else {}
        best = min((r["test_error"] for r in item.rows), default=float("nan"))
        last_top5 = last.get("test_top5_error")
        table.add_row(item.run_id, item.arch, str(item.depth), str(item.seed), item.shown, str(len(item.rows)),
                      f"{item.final_train:.2%}", fit_text(int(item.first_fit is not None), 1, item.first_fit),
                      f"{last.get('test_error', float('nan')):.2%}",
                      *(("-" if last_top5 is None or math.isnan(last_top5) else f"{last_top5:.2%}",) if top5
                        else ()),
                      f"{best:.2%}", f"{item.seconds / 60:.1f}")
    return table


def verdict_lines(summary: list[RunSummary]) -> list[str]:
    """Per arch with two depths or more, each net against the next shallower one in one sentence (18 against
    34, then 34 against 50), as `bench report` says it; then, where a quick-preset Bottleneck net (50 layers or
    more) did not fit what the shallower net of its arch fits, why, as measured."""
    found = pairs(net_fits(item.fit() for item in summary if item.rows))
    quick = any(item.preset == QUICK.preset for item in summary)
    # The ImageNet layout's Bottleneck nets: 50 layers and deeper.
    stalled = quick and any(pair.deep.depth >= 50 and family_of(pair.deep.depth) == "imagenet"
                            and pair.deep.fitted < pair.shallow.fitted for pair in found)
    return [degradation_sentence(pair) for pair in found] + ([STALLED_50] if stalled else [])


def print_summary(console: Console, summary: list[RunSummary]) -> None:
    """The end-of-grid table, then the verdicts."""
    print_whole(console, summary_table(summary))
    for line in verdict_lines(summary):
        console.print(line, soft_wrap=True, markup=False, highlight=False)
