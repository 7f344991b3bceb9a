"""bench.timing.timing_rows: timing files read back are checked row by row before anything is drawn; a device name
becomes a bounded folder name."""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bench.core import files
from bench.timing.timing import TIMING_SCHEMA
from tests.conftest import bench
from tests.test_report import write_timing

ROW_LIES = {
    "a negative median": ("median_ms", -1.0),
    "an infinite images/s": ("images_per_second", math.inf),
    "a NaN median in a measured row": ("median_ms", math.nan),
    "a 100,000-character device name": ("device_name", "x" * 100_000),
    "a batch size of 0": ("batch_size", 0),
    "a negative peak memory": ("peak_memory_bytes", -5),
}


def _write(results: Path, name: str, rows: list[dict]) -> None:
    pq.write_table(pa.Table.from_pylist(rows, schema=TIMING_SCHEMA), results / "timing" / name)


def _rows(results: Path, **change: object) -> list[dict]:
    """The rows of tests/test_report.py's timing file (written first), as plain values, with `change` applied."""
    write_timing(results)
    return [{**row, **change} for row in pq.read_table(results / "timing" / "t1.parquet").to_pylist()]


@pytest.mark.slow
@pytest.mark.parametrize("lie", list(ROW_LIES))
def test_a_timing_file_with_a_row_no_measurement_gives_is_skipped_and_the_rest_drawn(tmp_path, lie):
    results = tmp_path / "results"
    column, value = ROW_LIES[lie]
    rows = _rows(results, device_name="Other CPU")
    rows[2][column] = value
    _write(results, "t2.parquet", rows)
    drawn = bench("report", "--results", str(results), "--out", str(tmp_path / "reports"))
    assert drawn.exit_code == 0 and "Traceback" not in drawn.output, drawn.output
    text = " ".join(drawn.output.split())
    assert "skipped timing file" in text and "t2.parquet" in text and column in text
    [speed] = (tmp_path / "reports" / "timing").rglob("speed.png")  # the good file, alone
    assert "Test-CPU" in speed.parent.name


def test_an_out_of_memory_row_without_figures_is_kept(tmp_path):
    results = tmp_path / "results"
    write_timing(results, oom=True)
    drawn = bench("report", "--results", str(results), "--out", str(tmp_path / "reports"))
    assert drawn.exit_code == 0 and "skipped" not in drawn.output, drawn.output


@pytest.mark.slow
def test_a_long_device_name_makes_a_short_stable_folder(tmp_path):
    results = tmp_path / "results"
    name = "Very Long CPU Name " * 10  # 190 characters: allowed, but not as a folder name
    rows = _rows(results, device_name=name)
    _write(results, "t1.parquet", rows)
    for _ in range(2):
        drawn = bench("report", "--results", str(results), "--out", str(tmp_path / "reports"))
        assert drawn.exit_code == 0, drawn.output
    [folder] = [p for p in (tmp_path / "reports" / "timing").iterdir() if p.is_dir()]
    assert len(folder.name) <= files.NAME_LIMIT and folder.name.startswith("Very-Long-CPU-Name")
