"""What `bench time` records and shows: its rows (TimingRow, results/timing/<id>.parquet), the typed result
of a sweep with what went wrong writing it, and the table printed at its end."""

from __future__ import annotations

import datetime as dt
import secrets
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
from rich.table import Table

from bench import store
from bench.errors import BenchError
from bench.records import record_schema

OK, OOM = "ok", "oom"


@dataclass(frozen=True)
class TimingRow:
    """One measurement: a row of results/timing/<id>.parquet. The first 22 fields are the documented contract;
    status tells an out-of-memory row (its figures are None) from a measured one; width, git_commit,
    cuda_graph, stem and the math settings (bench.provenance.numerics: cudnn autotuning; TF32 allowed or, both False,
    IEEE fp32) say what was timed."""

    model: str
    arch: str
    depth: int
    family: str
    device: str
    device_name: str
    batch_size: int
    input_size: int
    precision: str
    channels_last: bool
    compiled: bool
    phase: str
    median_ms: float | None
    iqr_ms: float | None
    images_per_second: float | None
    peak_memory_bytes: int | None
    params: int
    flops_per_image: int
    tflops: float | None
    threads: int
    torch_version: str
    timestamp: dt.datetime
    status: str
    width: int
    git_commit: str | None
    cuda_graph: bool
    stem: str
    cudnn_benchmark: bool | None  # these three: absent from files written before they were recorded
    allow_tf32_matmul: bool | None
    allow_tf32_cudnn: bool | None


TIMING_SCHEMA = record_schema(TimingRow)


@dataclass
class TimingResult:
    """What a sweep of `bench time` gives back: its rows, where they were written, and what went wrong.

    `path` is None when nothing was timed (and nothing written). `error` says why the rows are not in the
    results folder (a disk filled during the sweep): `path` then names where they were kept instead, or is
    None when they could not be kept anywhere. `interrupted`: a Ctrl-C (or SIGTERM) ended the sweep early,
    and the rows are those of the networks timed whole.
    """

    rows: pd.DataFrame
    path: Path | None = None
    error: str | None = None
    interrupted: bool = False


def write_timing(rows: list[dict], folder: Path) -> tuple[Path | None, str | None]:
    """Write `rows` as folder/<id>.parquet; returns (path, None). Should that fail (a disk filled during the
    sweep), the rows go to the temporary folder instead: (that path, what happened), or (None, what happened)
    when they cannot be kept anywhere."""
    run_id = f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(3)}"
    path = folder / f"{run_id}.parquet"
    table = pa.Table.from_pylist(rows, schema=TIMING_SCHEMA)
    try:
        store.write_parquet(path, table)
    except BenchError as error:
        kept = Path(tempfile.gettempdir()) / f"bench-timing-{run_id}.parquet"
        try:
            store.write_parquet(kept, table)
        except BenchError:
            return None, f"{error}; the measurements could not be kept anywhere (the table above has them)"
        return kept, f"{error}; the measurements are kept in {kept}: move it into {folder}/"
    return path, None


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def timing_rich_table(df: pd.DataFrame) -> Table:
    """A sweep's rows as a rich table, one line per measurement, nets of a depth together."""
    table = Table(title="bench time", title_justify="left")
    for name in ("model", "device", "batch", "size", "precision", "phase"):
        table.add_column(name)
    for name in ("median ms", "IQR ms", "images/s", "peak memory", "TFLOP/s", "params", "GFLOP/img"):
        table.add_column(name, justify="right")
    for row in df.itertuples(index=False):
        shown = row.model + (" (compiled)" if row.compiled else "") + (" CL" if row.channels_last else "")
        if row.status == OOM:
            figures = ["out of memory", "", "", "", ""]
        else:
            figures = [f"{row.median_ms:.2f}", f"{row.iqr_ms:.2f}", f"{row.images_per_second:,.0f}",
                       format_bytes(row.peak_memory_bytes), f"{row.tflops:.3f}"]
        table.add_row(shown, row.device, str(row.batch_size), str(row.input_size), row.precision, row.phase,
                      *figures, f"{row.params / 1e6:.2f}M", f"{row.flops_per_image / 1e9:.3f}")
    if len(df):
        names = ", ".join(sorted(set(df["device_name"])))
        table.caption = f"{names}; {int(df['threads'].iloc[0])} CPU threads; torch {df['torch_version'].iloc[0]}"
    return table
