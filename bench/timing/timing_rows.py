"""What `bench time` records and shows: its rows (TimingRow, results/timing/<id>.parquet), the typed result
of a sweep with what went wrong writing it, the table printed at its end, and the timing files read back."""

from __future__ import annotations

import datetime as dt
import math
import secrets
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from rich.table import Table

from bench.core.errors import BenchError, Notify
from bench.core.files import refuse_links_below
from bench.core.records import record_schema
from bench.results import parquet

OK, OOM = "ok", "oom"


@dataclass(frozen=True)
class TimingRow:
    """One measurement: a row of results/timing/<id>.parquet. The first 22 fields are the documented contract;
    status tells an out-of-memory row (its figures are None) from a measured one; width, git_commit,
    cuda_graph, stem and the math settings (bench.core.provenance.numerics: cudnn autotuning; TF32 allowed or, both False,
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
# The most bytes a timing file may hold before it is opened (one row per net, device, precision, batch and phase),
# far above what a sweep writes: a larger one is refused unread (bench.core.files.read_regular).
TIMING_LIMIT = 64 * 2**20
# The columns a file must have to be read as `bench time`'s.
TIMING_COLUMNS = ("model", "arch", "depth", "family", "device", "device_name", "batch_size", "input_size",
                  "precision", "channels_last", "compiled", "phase", "median_ms", "images_per_second")
# One timing figure and table per setting: numbers measured under different settings are not comparable.
# (width and cuda_graph are optional: files from before they were recorded lack them.)
TIMING_SETTING = ("device_name", "precision", "family", "batch_size", "input_size", "channels_last", "compiled",
                  "width", "cuda_graph")


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
        parquet.write_parquet(path, table)
    except BenchError as error:
        kept = Path(tempfile.gettempdir()) / f"bench-timing-{run_id}.parquet"
        try:
            parquet.write_parquet(kept, table)
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


# What a timing row's fields may be before it is drawn: counts from 1, measured figures finite and positive (an
# out-of-memory row has none), names short text (a device name becomes part of a folder name).
_COUNTS = ("depth", "batch_size", "input_size")
_MEASURED = ("median_ms", "images_per_second")
_TEXTS = ("model", "arch", "family", "device", "device_name", "precision", "phase")
NAME_LIMIT = 200


def _wrong_row(frame: pd.DataFrame) -> str | None:
    """The first field of `frame`'s rows that is not what a timing row holds, in words, or None."""
    # Files from before `status` was recorded mark an out-of-memory row by its missing figures alone.
    measured = (frame["status"] != OOM) if "status" in frame else frame["median_ms"].notna()
    for column in _TEXTS:
        for value in frame[column]:
            if not isinstance(value, str) or not 0 < len(value) <= NAME_LIMIT:
                return f"its {column} {str(value)[:40]!r} is not a name of at most {NAME_LIMIT} characters"
    for column in (*_COUNTS, *_MEASURED, "iqr_ms", "tflops", "peak_memory_bytes"):
        if column not in frame:
            continue
        values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float, na_value=math.nan)
        finite, missing = np.isfinite(values), np.isnan(values)
        if column in _COUNTS:
            ok = finite & (values >= 1)
        elif column in _MEASURED:
            ok = (finite & (values > 0)) | (missing & ~measured.to_numpy(dtype=bool))
        else:
            ok = missing | (finite & (values >= 0))
        if not ok.all():
            return f"its {column} holds {frame[column].iloc[int(np.flatnonzero(~ok)[0])]!r}, which no measurement is"
    return None


def read_timing(results: Sequence[Path], notify: Notify | None = None) -> pd.DataFrame:
    """Every `bench time` row under `<results>/timing/*.parquet`, the same measurement kept once; a torn or
    foreign file is skipped with a one-line `notify` (default: stderr, as read_results'), never blocking the
    others."""
    notify = notify or (lambda message: print(message, file=sys.stderr))
    frames = []
    folders = []
    for root in results:
        try:
            folders.append(refuse_links_below(root, Path(root) / "timing"))
        except BenchError as error:
            notify(f"skipped the timing files: {error}")
    for path in sorted(p for folder in folders for p in folder.glob("*.parquet")):
        try:
            frame, _ = parquet.read_parquet(path, TIMING_LIMIT, "delete it and run `bench time` again")
        except BenchError as error:  # a FIFO, a device or a huge file: not opened
            notify(f"skipped timing file {error}")
            continue
        except Exception as error:  # pyarrow raises several types for a torn or foreign file
            notify(f"skipped timing file {path} ({type(error).__name__}): it is unreadable; delete it and run "
                   "`bench time` again")
            continue
        missing = [c for c in TIMING_COLUMNS if c not in frame.columns]
        if missing:
            notify(f"skipped timing file {path}: it lacks {', '.join(missing)}, so it is not from `bench time`; "
                   "move it out of the results folder")
            continue
        if (wrong := _wrong_row(frame)) is not None:
            notify(f"skipped timing file {path}: {wrong}; delete it and run `bench time` again")
            continue
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=list(TIMING_COLUMNS))
    timing = pd.concat(frames, ignore_index=True)
    key = [c for c in (*TIMING_SETTING, "model", "arch", "depth", "phase", "timestamp") if c in timing]
    return timing.drop_duplicates(key).reset_index(drop=True)
