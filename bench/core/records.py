"""Result records as dataclasses, with their parquet schemas derived from them rather than kept in step by hand.

`EpochRow` (epochs.parquet) and `LayerRow` (layers.parquet) live here, below both the training loop that
writes them and the store and report that read them; TimingRow (bench.timing.timing_rows) lives with what
produces it. So do the names results record that both their writers and the report read: run states, layer
measurement kinds and timing phases.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import types
import typing
from dataclasses import dataclass

import pyarrow as pa

_ARROW_TYPES: dict[object, pa.DataType] = {
    str: pa.string(),
    int: pa.int64(),
    float: pa.float64(),
    bool: pa.bool_(),
    dt.datetime: pa.timestamp("us", tz="UTC"),
}
UTC_TIMESTAMP = pa.timestamp("us", tz="UTC")


class RunStatus(str, enum.Enum):
    """The states a run's status.json records: bench.results.store writes and checks them, the report reads them. A
    str, so each is its plain word in status.json, in tables and in text, and equals the strings older
    results hold (enum.StrEnum, but Python 3.10 has none)."""

    RUNNING = "running"
    FINISHED = "finished"
    DIVERGED = "diverged"
    INTERRUPTED = "interrupted"

    __str__ = str.__str__  # the word, in f-strings too, not "RunStatus.RUNNING"


# The members by their own names, as bench.core.records and bench.results.store have always offered them.
RUNNING, FINISHED, DIVERGED, INTERRUPTED = RunStatus
STATES = tuple(RunStatus)
UNFINISHED = (RUNNING, INTERRUPTED)  # may train further
# The phases `bench time` measures, in this order, as its rows name them (bench.timing.timing.make_phase).
PHASES = ("forward", "forward_backward", "train_step")


def _arrow_type(hint: object) -> pa.DataType:
    """The column type of a field type; `X | None` is X (parquet columns are nullable)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        (hint,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    return _ARROW_TYPES[hint]


def record_schema(record: type, **overrides: pa.DataType) -> pa.Schema:
    """The parquet schema of a record dataclass: one column per field, in field order (`overrides`: a column
    type other than the field type's, such as a timestamp kept as ISO text in memory)."""
    hints = typing.get_type_hints(record)
    try:
        return pa.schema([(f.name, overrides.get(f.name) or _arrow_type(hints[f.name]))
                          for f in dataclasses.fields(record)])
    except KeyError as error:
        raise TypeError(f"{record.__name__}: no parquet type for field type {error}") from None


@dataclass(frozen=True)
class EpochRow:
    """One epoch of one run: a row of epochs.parquet, the contract that `bench report` and users read."""

    run_id: str
    dataset: str
    arch: str
    depth: int
    width: int
    shortcut: str | None  # the residual twin's option; a plain net has no shortcut but belongs with that twin
    seed: int
    preset: str
    epoch: int  # epochs finished, from 1
    iteration: int  # iterations finished at the end of this epoch
    lr: float  # the learning rate of the epoch's last iteration
    train_loss: float  # mean over the epoch's (augmented) training batches, as the paper plots it
    train_error: float
    test_loss: float  # the whole test split, eval mode, after the epoch
    test_error: float  # top-1
    # Added with the ImageNet preset (issue #46): older files and checkpoints lack it and read as null. The true
    # label not among the 5 highest logits; with 5 classes or fewer it is among them always, so this is 0.
    test_top5_error: float | None = dataclasses.field(metadata={"added": True})
    epoch_seconds: float  # training plus evaluation; not the diagnostics or checkpoint writes
    images_per_second: float  # training images over training seconds
    device: str
    precision: str
    timestamp: str  # ISO 8601 UTC: text, so the rows kept in a checkpoint are plain types


EPOCH_SCHEMA = record_schema(EpochRow, timestamp=UTC_TIMESTAMP)
# The columns added to the contract after results were first written: a file or checkpoint row without one
# still reads (the column null there); every other column is required.
ADDED_EPOCH_COLUMNS = tuple(f.name for f in dataclasses.fields(EpochRow) if f.metadata.get("added"))
TOP_K = 5  # test_top5_error's k


# The kinds of layers.parquet rows (bench.run.layers measures them, the store checks them, the report draws them).
RESPONSE_STD, GRAD_NORM, WEIGHT_NORM = "response_std", "grad_norm", "weight_norm"


@dataclass(frozen=True)
class LayerRow:
    """One measurement of one layer."""

    run_id: str
    epoch: int  # epochs finished when measured (the first iteration's gradients belong to epoch 0)
    iteration: int  # iterations finished when measured (gradients: the iteration they were computed in, from 1)
    layer: int  # main-path conv index in network order, from 1
    stage: int  # 0 for the stem, 1.. for the stages
    block: int  # block index within the stage, from 0 (0 for the stem)
    name: str  # the conv's module name, e.g. layer2.0.conv1
    kind: str  # response_std | grad_norm | weight_norm
    value: float


LAYER_SCHEMA = record_schema(LayerRow)
