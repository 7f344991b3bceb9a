"""Result records as dataclasses, with their parquet schemas derived from them rather than kept in step by hand
(layers.parquet so far; epochs and timing still declare theirs)."""

from __future__ import annotations

import datetime as dt
import typing

import pyarrow as pa

_ARROW_TYPES: dict[object, pa.DataType] = {
    str: pa.string(),
    int: pa.int64(),
    float: pa.float64(),
    bool: pa.bool_(),
    dt.datetime: pa.timestamp("us", tz="UTC"),
}


def record_schema(record: type) -> pa.Schema:
    """The parquet schema of a record dataclass: one column per field, in field order."""
    hints = typing.get_type_hints(record)
    try:
        return pa.schema([(name, _ARROW_TYPES[hints[name]]) for name in record.__dataclass_fields__])
    except KeyError as error:
        raise TypeError(f"{record.__name__}: no parquet type for field type {error}") from None
