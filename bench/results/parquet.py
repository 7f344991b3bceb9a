"""epochs.parquet and layers.parquet: a run's rows as tables of the contract (bench.core.records' EPOCH_SCHEMA and
LAYER_SCHEMA), written atomically, and checked against that contract when read back (every column of its kind of
type, the numbers in range, the rows of their run); bench.results.reading reads them through these checks, and
bench.results.checkpoints checks a checkpoint's epoch rows with them."""

from __future__ import annotations

import datetime as dt
import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from bench.core.files import read_regular, write_atomic
from bench.core.records import (ADDED_EPOCH_COLUMNS, DIVERGED, EPOCH_SCHEMA, FINISHED, GRAD_NORM, LAYER_SCHEMA,
                                RESPONSE_STD, WEIGHT_NORM)

EPOCH_COLUMNS = tuple(EPOCH_SCHEMA.names)
LAYER_KINDS = (RESPONSE_STD, GRAD_NORM, WEIGHT_NORM)


def _table(rows: Sequence[dict]) -> pa.Table:
    def timestamp(value: object) -> object:  # rows keep ISO strings, so checkpoints hold plain types only
        return dt.datetime.fromisoformat(value) if isinstance(value, str) else value

    # A checkpoint written before a column was added holds rows without it: null there.
    rows = [{**{c: row.get(c) if c in ADDED_EPOCH_COLUMNS else row[c] for c in EPOCH_COLUMNS},
             "timestamp": timestamp(row["timestamp"])} for row in rows]
    return pa.Table.from_pylist(rows, schema=EPOCH_SCHEMA)


def epochs_frame(rows: Sequence[dict]) -> pd.DataFrame:
    """Epoch rows as a DataFrame with exactly the columns and dtypes of EPOCH_SCHEMA."""
    return _table(rows).to_pandas()


def write_parquet(path: Path, table: pa.Table) -> None:
    """Write `table` to `path` as parquet, atomically."""
    write_atomic(Path(path), lambda handle: pq.write_table(table, handle))


def write_epochs(path: Path, rows: Sequence[dict]) -> None:
    """Write all epoch rows of a run so far to `path` (parquet, EPOCH_SCHEMA), atomically."""
    write_parquet(path, _table(rows))


def write_layers(path: Path, rows: Sequence[dict]) -> None:
    """Write all layer rows of a run so far to `path` (parquet, LAYER_SCHEMA), atomically."""
    write_parquet(path, pa.Table.from_pylist(list(rows), schema=LAYER_SCHEMA))


# Kinds of arrow type a column may be stored as and still mean what EPOCH_SCHEMA says (pandas writes large_string
# for string, a user's tool may widen integers); a number stored as text is another kind, refused.
_TYPE_KINDS = (pa.types.is_boolean, pa.types.is_integer, pa.types.is_floating, pa.types.is_timestamp,
               lambda t: pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t))


def _same_kind(stored: pa.DataType, wanted: pa.DataType) -> bool:
    return any(kind(stored) and kind(wanted) for kind in _TYPE_KINDS)


def _check_columns(schema: pa.Schema, wanted: pa.Schema, added: Sequence[str] = ()) -> None:
    """Every column of `wanted` in `schema` (those `added` to the contract later may be missing), of its kind
    of type; a ValueError names the first that is not."""
    for field in wanted:
        if field.name not in schema.names and field.name in added:
            continue
        if field.name not in schema.names:
            raise ValueError(f"no column {field.name}")
        if not _same_kind(schema.field(field.name).type, field.type):
            raise ValueError(f"column {field.name} is {schema.field(field.name).type}, not {field.type}")


# What the numbers of an epoch row may be (column -> lowest, highest, what it is): errors are fractions, counts
# count from 1, times and rates are finite; a loss may be NaN or infinite (that is how a run diverges, and the
# row is kept) but never negative.
_EPOCH_RANGES = {
    "train_error": (0, 1, "a fraction in [0, 1]"), "test_error": (0, 1, "a fraction in [0, 1]"),
    "epoch": (1, math.inf, "a count from 1"), "iteration": (1, math.inf, "a count from 1"),
    "depth": (1, math.inf, "a count from 1"), "width": (1, math.inf, "a count from 1"),
    "lr": (0, math.inf, "a finite number >= 0"), "epoch_seconds": (0, math.inf, "a finite number >= 0"),
    "images_per_second": (0, math.inf, "a finite number >= 0"),
    "test_top5_error": (0, 1, "a fraction in [0, 1]")}
_LOSSES = ("train_loss", "test_loss")
_ERRORS = ("train_error", "test_error")


def _first_outside(frame: pd.DataFrame, column: str, low: float, high: float, finite: bool = True) -> object:
    """The first value of `column` outside [low, high] (NaN and infinities too, when `finite`), else None."""
    values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float, na_value=math.nan)
    inside = (values >= low) & (values <= high)
    if finite:
        inside &= np.isfinite(values)
    else:
        inside |= np.isnan(values) | (values == math.inf)
    bad = np.flatnonzero(~inside)
    if not len(bad):
        return None
    value = frame[column].iloc[bad[0]]
    return value.item() if isinstance(value, np.generic) else value  # 1e+308, not np.float64(1e+308)


def check_epoch_values(frame: pd.DataFrame) -> None:
    """The numbers of epoch rows against the contract (_EPOCH_RANGES); a ValueError names the first that is not
    what it should be. A NaN error is not a missing one, nor is 1e308 a large one: either would be drawn or
    tabled as something it is not."""
    # The errors of an epoch whose loss is NaN or infinite mean nothing (the report masks them), so there NaN is
    # what they honestly are; a number must still be a fraction.
    losses = frame[list(_LOSSES)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float, na_value=math.nan)
    diverged = ~np.isfinite(losses).all(axis=1)
    for column, (low, high, meaning) in _EPOCH_RANGES.items():
        if column in ADDED_EPOCH_COLUMNS:  # null where a row predates the column
            if column not in frame:
                continue
            rows = frame[frame[column].notna()]
        else:
            rows = frame[~(diverged & frame[column].isna())] if column in _ERRORS else frame
        if (value := _first_outside(rows, column, low, high)) is not None:
            raise ValueError(f"column {column} holds {value!r}, not {meaning}")
    for column in _LOSSES:
        if (value := _first_outside(frame, column, 0, math.inf, finite=False)) is not None:
            raise ValueError(f"column {column} holds {value!r}, a negative loss")


def check_epochs(frame: pd.DataFrame, schema: pa.Schema, run_id: str, status: dict) -> None:
    """epochs.parquet against the contract and its run folder: every EPOCH_SCHEMA column of its kind of type,
    its numbers in range (check_epoch_values), rows of this run only, and, for a run that ended, as many epochs
    as status.json says it trained."""
    _check_columns(schema, EPOCH_SCHEMA, ADDED_EPOCH_COLUMNS)
    check_epoch_values(frame)
    others = sorted(set(frame["run_id"]) - {run_id})
    if others:
        raise ValueError(f"rows of run {others[0]}")
    named = dict(zip(("arch", "depth"), run_id.rsplit("-", 3)))  # a run_id is <arch>-<depth>-s<seed>-<hash>
    for column, value in named.items():
        if (wrong := sorted(set(frame[column].astype(str)) - {value})):
            raise ValueError(f"column {column} holds {wrong[0]!r:.40}, but the run is {run_id}")
    if not frame["epoch"].astype("int64").tolist() == list(range(1, len(frame) + 1)):
        raise ValueError("its epochs are not one row per epoch, 1, 2, 3... in order")
    epochs = status.get("epoch")
    if status.get("state") in (FINISHED, DIVERGED) and isinstance(epochs, int) and len(frame) != epochs:
        raise ValueError(f"{len(frame)} epochs, but status.json says {epochs}")
    recorded = [count for count in (epochs, status.get("epochs_total")) if isinstance(count, int)]
    if recorded and len(frame) > max(recorded):  # a running run may be an epoch ahead of its status, not more
        raise ValueError(f"{len(frame)} epochs, more than the {max(recorded)} status.json says")


def with_added_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """Epoch rows written before a column was added to the contract, with that column, null, in its place."""
    for column in ADDED_EPOCH_COLUMNS:
        if column not in frame:
            frame.insert(min(EPOCH_COLUMNS.index(column), len(frame.columns)), column,
                         pd.Series(np.nan, index=frame.index, dtype="float64"))
    return frame


def read_parquet(path: Path, limit: int, fix: str) -> tuple[pd.DataFrame, pa.Schema]:
    """A parquet file that is a regular file of at most `limit` bytes (else a RefusedFile naming `fix`), as a
    DataFrame with the schema it was stored with; a torn or foreign file raises what pyarrow raises."""
    raw = read_regular(path, limit, fix)
    return pd.read_parquet(io.BytesIO(raw)), pq.read_schema(pa.BufferReader(raw))


# What the numbers of a layer row may be (column -> lowest): counts, and measurements that are norms and standard
# deviations, so never negative. A measurement may be NaN or infinite only in a run that diverged.
_LAYER_LOWEST = {"epoch": 0, "iteration": 0, "layer": 1, "stage": 0, "block": 0}


def check_layers(frame: pd.DataFrame, schema: pa.Schema, run_id: str, diverged: bool) -> None:
    """layers.parquet against the contract and its run folder: LAYER_SCHEMA's columns of their kinds of type, rows
    of this run only, known kinds, counts and measurements in range (NaN or infinite only in a run that
    `diverged`); a ValueError names the first thing that is not."""
    _check_columns(schema, LAYER_SCHEMA)
    others = sorted(set(frame["run_id"]) - {run_id})
    if others:
        raise ValueError(f"rows of run {others[0]}")
    kinds = sorted(set(frame["kind"]) - set(LAYER_KINDS))
    if kinds:
        raise ValueError(f"kind {kinds[0]!r}, not one of {', '.join(LAYER_KINDS)}")
    for column, low in _LAYER_LOWEST.items():
        if (value := _first_outside(frame, column, low, math.inf)) is not None:
            raise ValueError(f"column {column} holds {value!r}, below {low}")
    if (value := _first_outside(frame, "value", 0, math.inf, finite=not diverged)) is not None:
        raise ValueError(f"column value holds {value!r}, not a finite number >= 0")
