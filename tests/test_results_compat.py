"""Results written by earlier code stay valid: the same command finds the same run_ids, skips what finished,
resumes what did not, and computes the same numbers.

`tests/fixtures/results-f13b454/` was written by commit f13b454 (before layers.parquet and before run_ids
learned to ignore new options left at their defaults), on version 2 of the synthetic set (f13b454's code with
bench/data/synthetic.py's version 2 dropped in: the set's drawing changed, its interface did not), with:

    bench run --depths 8 <OPTIONS> --epochs 2                      # plain-8, residual-8: finished
    bench run --depths 8 <OPTIONS> --epochs 3 --time-limit 0.001   # plain-8: interrupted after epoch 1

(OPTIONS below, less --augment, which f13b454 always did and had no option for; with OMP_NUM_THREADS=1;
checkpoints of finished runs and lock files removed, as in a commit.)
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from bench.core.records import ADDED_EPOCH_COLUMNS
from bench.results import checkpoints, parquet, reading, store
from tests.conftest import MEASURED_COLUMNS, bench

FIXTURE = Path(__file__).parent / "fixtures" / "results-f13b454"
# One thread, as the fixture was made: CPU results are exact at a fixed thread count, not across counts.
# --augment: f13b454's quick preset augmented (today's does not), and an explicit option keeps the old run_ids.
OPTIONS = ["--dataset", "synthetic", "--preset", "quick", "--width", "2", "--batch-size", "32", "--train-subset",
           "256", "--test-subset", "64", "--augment", "--no-progress", "--threads", "1", "--device", "cpu"]
FINISHED = {"plain-8-s0-d668bc60", "residual-8-s0-85e2c5fb"}  # --epochs 2
INTERRUPTED = "plain-8-s0-12fee9a6"  # --epochs 3, stopped after epoch 1


def ran(*args: str):
    result = bench(*args)
    assert result.exit_code == 0, result.output
    return result.stdout  # notices go to stderr; stdout is one line per run


def _epochs(results: Path, run_id: str) -> pd.DataFrame:
    return pd.read_parquet(results / "synthetic" / run_id / store.EPOCHS)


@pytest.fixture
def old_results(tmp_path: Path) -> Path:
    shutil.copytree(FIXTURE, tmp_path / "results")
    return tmp_path / "results"


def test_the_same_commands_find_the_same_run_ids(old_results, data_dir):
    common = ["run", "--depths", "8", *OPTIONS, "--data-dir", str(data_dir), "--results", str(old_results),
              "--dry-run"]
    two = {line.split()[0]: line.split()[5] for line in ran(*common, "--epochs", "2").splitlines() if line}
    assert two == {run_id: "finished" for run_id in FINISHED}
    three = {line.split()[0]: line.split()[5] for line in ran(*common, "--epochs", "3").splitlines() if line}
    assert three[INTERRUPTED] == "interrupted" and len(three) == 2


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_finished_runs_are_skipped_and_unfinished_ones_resume(old_results, data_dir, tmp_path):
    common = ["run", "--depths", "8", *OPTIONS, "--data-dir", str(data_dir)]
    before = {run_id: _epochs(old_results, run_id) for run_id in (*FINISHED, INTERRUPTED)}
    ran(*common, "--epochs", "2", "--results", str(old_results))
    for run_id in FINISHED:  # skipped: not a byte of their rows changed
        pd.testing.assert_frame_equal(_epochs(old_results, run_id), before[run_id])
    ran(*common, "--epochs", "3", "--arch", "plain", "--results", str(old_results))
    resumed = _epochs(old_results, INTERRUPTED)
    assert resumed["epoch"].tolist() == [1, 2, 3]
    # The epoch trained by the old code predates the top-5 column: null there, measured from the resume on.
    assert resumed["test_top5_error"].isna().tolist() == [True, False, False]
    pd.testing.assert_frame_equal(resumed.iloc[:1].drop(columns=list(ADDED_EPOCH_COLUMNS)), before[INTERRUPTED])

    # The numbers do not move: today's code, from scratch, gives the old code's numbers to the last bit, in
    # the memory format they were made in (a new run may get another on a CPU where one was measured faster).
    fresh = tmp_path / "fresh"
    ran(*common, "--no-channels-last", "--epochs", "2", "--results", str(fresh))
    ran(*common, "--no-channels-last", "--epochs", "3", "--arch", "plain", "--results", str(fresh))
    for run_id in (*FINISHED, INTERRUPTED):
        expected = _epochs(old_results, run_id).drop(columns=[*MEASURED_COLUMNS, *ADDED_EPOCH_COLUMNS], errors="ignore")
        got = _epochs(fresh, run_id)
        assert got["test_top5_error"].between(0, 1).all()
        pd.testing.assert_frame_equal(got.drop(columns=[*MEASURED_COLUMNS, *ADDED_EPOCH_COLUMNS]), expected)


def test_old_results_read_with_the_added_columns_null(old_results):
    epochs, runs = reading.read_results([old_results])
    assert len(runs) == 3 and list(epochs.columns) == list(parquet.EPOCH_COLUMNS)
    assert epochs["test_top5_error"].isna().all() and epochs["test_error"].notna().all()
    # The interrupted run's checkpoint holds rows without the column too: they read the same way.
    checkpoint = checkpoints.load_checkpoint(old_results / "synthetic" / INTERRUPTED)
    assert "test_top5_error" not in checkpoint["rows"][0]
    assert parquet.epochs_frame(checkpoint["rows"])["test_top5_error"].isna().all()
