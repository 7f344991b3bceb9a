"""The committed reference runs (results/reference/, made by scripts/reference.sh) keep the results contract,
keep their run_ids under today's code, and regenerate the committed report's tables exactly."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from bench.cli import app, expand_lists
from bench.core.config import PAPER, GridConfig
from bench.core.records import ADDED_EPOCH_COLUMNS, EPOCH_SCHEMA, LAYER_SCHEMA
from bench.report.report import make_report
from bench.results import reading, store

ROOT = Path(__file__).parent.parent
REFERENCE = ROOT / "results" / "reference"
REPORT = ROOT / "reports" / "reference"
# scripts/reference.sh: every net gets the paper's recipe at 4,000 iterations on the whole CIFAR-10 copy, and
# the CIFAR nets also at 8,000 (and at 16,000 in bf16); the 20-layer pair again in bf16, residual-20 with a
# second seed, the remedies at 56 layers, and the ImageNet layout 18/34/50 at 16,000 in fp32 and
# residual-20/56 with seed 1 at 16,000 in bf16.
BASE = dataclasses.replace(PAPER, iterations=4000, dataset="cifar10")
GRIDS = {"cifar": GridConfig(base=BASE, depths=(20, 56)),
         "imagenet": GridConfig(base=dataclasses.replace(BASE, width=16), depths=(18, 34)),
         "cifar-8000": GridConfig(base=dataclasses.replace(BASE, iterations=8000), depths=(20, 56)),
         "cifar-bf16": GridConfig(base=dataclasses.replace(BASE, precision="bf16"), depths=(20,)),
         "cifar-seed-1": GridConfig(base=BASE, depths=(20,), archs=("residual",), seeds=(1,)),
         "cifar-16000-bf16": GridConfig(base=dataclasses.replace(BASE, iterations=16000, precision="bf16"),
                                        depths=(20, 56)),
         "remedies-56": GridConfig(base=BASE, depths=(56,), archs=("dirac", "preact", "zero-init")),
         "imagenet-16000": GridConfig(base=dataclasses.replace(BASE, width=16, iterations=16000),
                                      depths=(18, 34, 50), archs=("residual", "plain")),
         "cifar-16000-bf16-seed-1": GridConfig(base=dataclasses.replace(BASE, iterations=16000, precision="bf16"),
                                               depths=(20, 56), archs=("residual",), seeds=(1,))}
# The same grids as the command lines that make them.
COMMANDS = (["--depths", "20", "56", "--iterations", "4000"],
            ["--depths", "18", "34", "--width", "16", "--iterations", "4000"],
            ["--depths", "20", "56", "--iterations", "8000"],
            ["--depths", "20", "--iterations", "4000", "--precision", "bf16"],
            ["--depths", "20", "--arch", "residual", "--seeds", "1", "--iterations", "4000"],
            ["--depths", "20", "56", "--iterations", "16000", "--precision", "bf16"],
            ["--depths", "56", "--arch", "dirac", "preact", "zero-init", "--iterations", "4000"],
            ["--depths", "18", "34", "50", "--width", "16", "--arch", "residual", "plain", "--iterations", "16000"],
            ["--depths", "20", "56", "--arch", "residual", "--seeds", "1", "--iterations", "16000", "--precision",
             "bf16"])
# Only finished runs are committed; a reference chunk running in this checkout leaves others beside them.
RUNS = [d for d in reading.find_runs([REFERENCE]) if store.run_state(d) == store.FINISHED]
pytestmark = pytest.mark.skipif(not RUNS, reason="no reference runs committed yet")


def test_every_committed_run_keeps_the_results_contract():
    for directory in RUNS:
        names = pq.read_schema(directory / store.EPOCHS).names  # a run made before a column was added lacks it
        assert names == [name for name in EPOCH_SCHEMA.names if name in names or name not in ADDED_EPOCH_COLUMNS]
        assert pq.read_schema(directory / store.LAYERS).names == list(LAYER_SCHEMA.names)
        meta = store.read_json(directory / store.CONFIG)
        assert meta["run_id"] == directory.name


def test_the_reference_commands_still_name_the_committed_runs():
    planned = {run.run_id() for grid in GRIDS.values() for run in grid.runs()}
    assert {directory.name for directory in RUNS} <= planned


@pytest.mark.slow
@pytest.mark.data
def test_dry_run_shows_the_committed_runs_as_finished():
    if not (ROOT / "data" / "cifar10-jpg").is_dir():
        pytest.skip("the CIFAR-10 copy is not extracted under data/")
    states = {}
    for args in COMMANDS:
        result = CliRunner().invoke(app, expand_lists([
            "run", *args, "--preset", "paper", "--dataset", "cifar10",
            "--data-dir", str(ROOT / "data"), "--results", str(REFERENCE), "--dry-run"]))
        assert result.exit_code == 0, result.output
        states |= {line.split()[0]: line.split()[5] for line in result.stdout.splitlines() if line.strip()}
    assert all(states[directory.name] == "finished" for directory in RUNS)


@pytest.mark.slow
@pytest.mark.timeout(700)
def test_regenerating_the_report_gives_the_committed_tables(tmp_path):
    if not REPORT.is_dir():
        pytest.skip("no committed report yet")
    out = tmp_path / "reports"  # as scripts/reference.sh makes it: finished (committed) runs only
    make_report([REFERENCE], out, dataset="cifar10", finished_only=True, notify=lambda message: None)
    committed = sorted(p.relative_to(REPORT) for p in REPORT.rglob("*.csv"))
    assert committed == sorted(p.relative_to(out) for p in out.rglob("*.csv"))
    for name in committed:
        pd.testing.assert_frame_equal(pd.read_csv(out / name), pd.read_csv(REPORT / name))
        if (REPORT / name).with_suffix(".md").exists():
            assert (out / name).with_suffix(".md").read_text() == (REPORT / name).with_suffix(".md").read_text()


def test_a_short_last_epoch_is_pooled_into_the_final_training_error():
    # 16,000 = 41 x 390 + 10: the last epoch is 10 batches, so the final training error the report states is
    # the running error of the last 400 iterations (bench.results.fitting.final_train_error), not of those 10 alone.
    # One schedule table per layout: the CIFAR nets' and the ImageNet layout's.
    tables = sorted(REPORT.glob("cifar10-paper-*-schedules/final-error-vs-schedule.csv"))
    if not tables:
        pytest.skip("no committed schedule table yet")
    finals = pd.concat(map(pd.read_csv, tables)).set_index(["arch", "depth", "iterations", "precision"])["final_train"]
    checked = 0
    for directory in RUNS:
        epochs = pd.read_parquet(directory / store.EPOCHS).sort_values("epoch")
        if epochs["iteration"].iloc[-1] != 16000:
            continue
        before, last = epochs.iloc[-2], epochs.iloc[-1]
        assert (before["iteration"], last["iteration"]) == (15990, 16000)
        pooled = 100 * (390 * before["train_error"] + 10 * last["train_error"]) / 400
        row = last["arch"], last["depth"], 16000, last["precision"]
        assert finals[row] == pytest.approx(pooled) and finals[row] != pytest.approx(100 * last["train_error"])
        checked += 1
    assert checked >= 2
