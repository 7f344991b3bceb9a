"""bench.run.summary: what `bench run` prints at the end (the verdicts are tested with bench.results.fitting's)."""

from __future__ import annotations

import pytest

from bench.core.records import RunStatus
from bench.run.summary import BUSY, EARLIER, RunSummary, summary_table

ROWS = [{"train_error": 0.5, "test_error": 0.6, "iteration": 4}, {"train_error": 0.0, "test_error": 0.4, "iteration": 8}]


def test_a_summary_line_shows_its_note_beside_the_state_and_computes_from_the_state_alone() -> None:
    earlier = RunSummary("plain-8", "plain", 8, 0, "finished", ROWS, note=EARLIER)
    busy = RunSummary("residual-8", "residual", 8, 0, None, note=BUSY)
    assert earlier.state is RunStatus.FINISHED and earlier.fit().state == RunStatus.FINISHED
    column = next(c for c in summary_table([earlier, busy]).columns if c.header == "state")
    assert list(column.cells) == ["finished (earlier)", "busy (another process)"]


def test_a_summary_state_is_a_run_state_not_the_words_shown_with_it() -> None:
    with pytest.raises(ValueError, match="finished \\(earlier\\)"):
        RunSummary("plain-8", "plain", 8, 0, "finished (earlier)", ROWS)  # type: ignore[arg-type]


def test_the_final_top5_error_is_a_column_where_a_run_is_of_the_imagenet_preset() -> None:
    rows = [{**row, "test_top5_error": top5} for row, top5 in zip(ROWS, (0.3, 0.1))]
    imagenet = RunSummary("plain-18", "plain", 18, 0, "finished", rows, preset="imagenet")
    old = RunSummary("residual-18", "residual", 18, 0, "finished", ROWS, preset="imagenet")  # rows without it
    column = next(c for c in summary_table([imagenet, old]).columns if c.header == "test top-5")
    assert list(column.cells) == ["10.00%", "-"]
    quick = RunSummary("plain-8", "plain", 8, 0, "finished", rows, preset="quick")
    assert "test top-5" not in [c.header for c in summary_table([quick]).columns]
