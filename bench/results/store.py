"""The results folder: one directory per run, written so that a crash, Ctrl-C or a full disk loses nothing.

    results/<dataset>/<run_id>/
        config.json       the resolved RunConfig, dataset, environment (versions, device, commit), start time
        data.json         the data's name, source and fingerprint again, kept when config.json is deleted
        epochs.parquet    one row per epoch, schema EPOCH_SCHEMA (a contract: report and users read it)
        layers.parquet    per-layer diagnostics, one row per measurement x layer, schema LAYER_SCHEMA
        status.json       running | finished | diverged | interrupted, with the epoch it got to
        chunks.json       where and under which commit each start of the run trained (bench.results.chunks)
        checkpoint.pt     model, optimizer, the configuration (the schedule derives from it), RNG states, epoch rows so far
        checkpoint.prev.pt  the one before, used if the latest is torn

Every file is written whole or not at all (bench.core.files.write_atomic), so readers never see half a file, and a
link planted in a shared folder is never written through. Every file is read back by one reader per kind, the
same for `bench run`, `bench report` and `bench analyze`: a regular file under its size bound (FILE_LIMITS), then
its content against its contract (keys and types, columns and types, finite values in range) before anything
uses it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import errno
import fcntl
import io
import json
import math
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from bench.core.config import RunConfig
from resnet import FAMILY_DEFAULTS, family_of
from bench.core.errors import BenchError, Notify, first_line
from bench.core.files import (RefusedFile, check_nesting, open_regular, read_regular, refuse_link, refuse_links_below,
                              safe_name, size_text, write_atomic)
from bench.core.provenance import utc_now
from bench.core.records import (ADDED_EPOCH_COLUMNS, DIVERGED, EPOCH_SCHEMA, FINISHED, GRAD_NORM, INTERRUPTED,
                                LAYER_SCHEMA, RESPONSE_STD, RUNNING, STATES, WEIGHT_NORM, RunStatus)

EPOCH_COLUMNS = tuple(EPOCH_SCHEMA.names)

CONFIG, EPOCHS, LAYERS, STATUS = "config.json", "epochs.parquet", "layers.parquet", "status.json"
DATA = "data.json"
CHECKPOINT, PREVIOUS_CHECKPOINT = "checkpoint.pt", "checkpoint.prev.pt"

# The run states (bench.core.records.RunStatus) are store.RUNNING, store.FINISHED... to callers of the results folder
# too.

# What the JSON files of a run folder must hold (key -> type), checked whenever one is read back.
CONFIG_SHAPE: dict[str, type | tuple[type, ...]] = {
    "run_id": str, "config": dict, "dataset": (dict, type(None)), "model": (dict, type(None)),
    "schedule": (dict, type(None)), "environment": (dict, type(None))}
STATUS_SHAPE: dict[str, type | tuple[type, ...]] = {"state": str}
# The fix for any damaged file of a run folder: `bench run` rewrites config.json, status.json and
# epochs.parquet of a run it finds again (from its configuration and checkpoint).
_REWRITE = "delete it and run the same `bench run` command again, which rewrites it"

# The most bytes each run file may hold before it is opened, far above what bench writes (a config.json is
# about 2 KiB, status.json 0.2 KiB; epochs.parquet grows by some 200 bytes an epoch, layers.parquet by some
# 40 bytes a measured layer, a checkpoint is about twice the weights). A larger one is not read: a sparse
# 1 GiB status.json would cost seconds and gigabytes before it could be refused.
FILE_LIMITS = {STATUS: 64 * 2**10, CONFIG: 2**20, DATA: 2**20, EPOCHS: 64 * 2**20, LAYERS: 2**30,
               CHECKPOINT: 4 * 2**30}
TIMING_LIMIT = 64 * 2**20  # a bench time results file: one row per net, device, precision, batch and phase
LAYER_KINDS = (RESPONSE_STD, GRAD_NORM, WEIGHT_NORM)



def dataset_folder(dataset: str) -> str:
    """A folder name for a dataset name ('imagefolder:tiny' -> 'imagefolder-tiny')."""
    return safe_name(dataset).strip("-") or "dataset"


def run_dir(results: Path, dataset: str, run_id: str) -> Path:
    """Where the run's files live; a link in place of its dataset or run folder is a BenchError naming it."""
    return refuse_links_below(results, Path(results) / dataset_folder(dataset) / run_id)


def write_text(path: Path, text: str) -> None:
    """Write `text` (UTF-8), atomically."""
    write_atomic(Path(path), lambda handle: handle.write(text.encode()))


def write_json(path: Path, data: dict) -> None:
    """Write `data` as indented JSON, atomically."""
    write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path, shape: Mapping[str, type | tuple[type, ...]] | None = None) -> dict:
    """Read a JSON object written by `write_json`; a torn or foreign file, or one of another shape, is a
    BenchError. `shape` maps keys to the types their values must have (CONFIG_SHAPE, STATUS_SHAPE)."""
    path = Path(path)
    raw = read_regular(path, FILE_LIMITS.get(path.name, FILE_LIMITS[CONFIG]), _REWRITE)
    check_nesting(raw, path, _REWRITE)
    try:
        data = json.loads(raw)
    except ValueError as error:
        reason = first_line(error)
        raise BenchError(f"cannot read {path} ({reason}): {_REWRITE}") from None
    if not isinstance(data, dict):
        raise BenchError(f"{path} holds a JSON {type(data).__name__}, not an object: {_REWRITE}")
    for key, kind in (shape or {}).items():
        if not isinstance(data.get(key), kind):
            raise BenchError(f"{path} has no valid {key!r}: {_REWRITE}")
    return data


def read_status(directory: Path) -> dict:
    """A run's status.json, checked ({} when it has none yet): the one reader of status.json."""
    path = Path(directory) / STATUS
    if not path.exists():
        return {}
    status = read_json(path, STATUS_SHAPE)
    if status["state"] not in STATES:
        raise BenchError(f"{path} has an unknown state {status['state']!r}: {_REWRITE}")
    for key in _STATUS_COUNTS:
        if status.get(key) is not None and not _count(status[key]):
            raise BenchError(f"{path} has {key} {status[key]!r:.40}, not a count: {_REWRITE}")
    return status


_STATUS_COUNTS = ("epoch", "epochs_total", "diverged_epoch")  # what status.json counts, where it has them


def read_config(directory: Path) -> dict:
    """A run's config.json, checked against its folder: its config must give its own run_id, and that run_id
    must be the folder's name. An edited or copied-in config.json (a plain-20 relabelled residual-56) is a
    BenchError, never believed."""
    directory = Path(directory)
    path = directory / CONFIG
    meta = read_json(path, CONFIG_SHAPE)
    try:
        derived = RunConfig.from_dict(meta["config"]).run_id()
    except (TypeError, ValueError):  # a field of another type than the run's fields take
        derived = "none"
    if not derived == meta["run_id"] == directory.name:
        raise BenchError(f"{path} does not describe its run folder (its config gives run_id {derived}, it says "
                         f"{meta['run_id']}, the folder is {directory.name}): {_REWRITE}")
    if (wrong := _unhashed_wrong(meta)) is not None:
        raise BenchError(f"{path} has {wrong}: {_REWRITE}")
    return meta


def _unhashed_wrong(meta: dict) -> str | None:
    """What of config.json's fields outside the hash (the net as built, the schedule) that the report shows
    disagrees with its hashed config or is of the wrong type, or None: an edited `model.width` must not
    relabel a width-4 run."""
    config = meta["config"]
    model, schedule = meta.get("model") or {}, meta.get("schedule") or {}
    try:
        family = family_of(config["depth"])
    except Exception:  # a depth no family builds: read_config's run_id check has said more
        return f"depth {config.get('depth')!r:.40}, which no family builds"
    defaults = FAMILY_DEFAULTS[family]
    built = {"family": family, "width": config.get("width") or defaults["width"],
             "shortcut": config.get("shortcut") or defaults["shortcut"]}
    for key, value in built.items():
        if key in model and model[key] != value:
            return f"model.{key} {model[key]!r:.40}, but its config builds {value!r}"
    for key, where in (("params", model), ("epochs", schedule), ("iterations", schedule)):
        if where.get(key) is not None and not _count(where[key]):
            return f"{key} {where[key]!r:.40}, not a count"
    dataset = meta.get("dataset") or {}
    # 'auto' is what a config said before bench run pinned the dataset into it; it trained on dataset.name.
    if dataset.get("name") is not None and config.get("dataset") not in (dataset["name"], "auto"):
        return f"dataset.name {dataset['name']!r:.60}, but its config trained on {config.get('dataset')!r:.60}"
    shown = [("dataset", key, dataset.get(key)) for key in ("name", "note", "source")] + [
        ("environment", key, (meta.get("environment") or {}).get(key)) for key in _SHOWN_ENVIRONMENT]
    for section, key, value in shown:
        if value is not None and (not isinstance(value, str) or len(value) > _SHOWN_LIMIT):
            return f"{section}.{key} {str(value)[:40]!r}, not text of at most {_SHOWN_LIMIT} characters"
    return None


# The provenance the report shows that no hash covers: text, of a length a caption can hold.
_SHOWN_ENVIRONMENT = ("device_name", "git_commit", "torch")
_SHOWN_LIMIT = 4096  # PATH_MAX: the data source is a path


def check_same_data(directory: Path, fingerprint: str, source: str) -> None:
    """Refuse a run folder whose config.json, or data.json, records other data than `fingerprint`; a config.json
    that does not describe its folder is refused too (read_config).

    The run_id names the dataset, not its content, so another folder of images with the same name finds
    the same run folders; without this, their finished numbers would be reported as the new data's, and
    an unfinished run would resume on other images. data.json keeps the fingerprint when config.json is
    deleted (as an error about it advises). Folders from before fingerprints record none and pass.
    """
    directory = Path(directory)
    if not fingerprint:
        return
    recorded = [read_config(directory).get("dataset") or {}] if (directory / CONFIG).exists() else []
    if (directory / DATA).exists():
        recorded.append(read_json(directory / DATA))
    for theirs in recorded:
        if theirs.get("fingerprint") and theirs["fingerprint"] != fingerprint:
            raise BenchError(f"{directory} holds a run on other data ({theirs.get('source')}, fingerprint "
                             f"{theirs['fingerprint']}) than {source} (fingerprint {fingerprint}): pass another "
                             "--results folder for this data, or move that run folder away")


def record_data(directory: Path, fingerprint: str, source: str, name: str) -> None:
    """Write data.json (the data's name, source and fingerprint) into a run folder that has none, once
    check_same_data has passed: where deleting config.json cannot lose the fingerprint."""
    path = Path(directory) / DATA
    if fingerprint and not path.exists():
        write_json(path, {"name": name, "source": source, "fingerprint": fingerprint})


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


def write_status(directory: Path, state: RunStatus, **fields: object) -> None:
    """Record where the run stands: the one writer of status.json (read_status its one reader)."""
    write_json(Path(directory) / STATUS, {"state": RunStatus(state).value, "updated": utc_now(), **fields})


def save_checkpoint(directory: Path, state: dict) -> None:
    """Save `state` as the latest checkpoint, keeping the previous one until the new one is whole."""
    directory = Path(directory)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    latest = directory / CHECKPOINT
    write_atomic(directory / f"{CHECKPOINT}.new", lambda handle: handle.write(buffer.getbuffer()))
    if latest.exists():
        os.replace(latest, directory / PREVIOUS_CHECKPOINT)
    os.replace(directory / f"{CHECKPOINT}.new", latest)


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


# What a checkpoint may hold besides its weights (key -> type), checked when present; `epoch`, `iteration` and
# `model` it must hold (bench.run.state.RunState says what each is).
_CHECKPOINT_SHAPE: dict[str, type | tuple[type, ...]] = {
    "optimizer": dict, "rng": dict, "config": dict, "rows": list, "layer_rows": list, "warming_up": bool,
    "recent_errors": list, "partial": (dict, type(None))}


def check_checkpoint(state: object) -> None:
    """A loaded checkpoint against its contract, before anything uses it: a dict with `model` (parameter names
    to tensors), `epoch` and `iteration` (counts), the other keys of the types train writes, and epoch rows
    that pass the epochs.parquet contract, one per epoch. A ValueError says what is wrong."""
    if not isinstance(state, dict):
        raise ValueError(f"it holds a {type(state).__name__}, not a bench checkpoint")
    model = state.get("model")
    if not isinstance(model, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                 for k, v in model.items()):
        raise ValueError(f"its 'model' is a {type(model).__name__}, not the net's weights by name")
    for key in ("epoch", "iteration"):
        if key not in state:
            raise ValueError(f"it has no {key!r}")
        if not _count(state[key]):
            raise ValueError(f"its {key!r} is {state[key]!r:.40}, not a count")
    for key, kind in _CHECKPOINT_SHAPE.items():
        if key in state and not isinstance(state[key], kind):
            raise ValueError(f"its {key!r} is a {type(state[key]).__name__}")
    if "rows" in state:
        if len(state["rows"]) != state["epoch"]:
            raise ValueError(f"it holds {len(state['rows'])} epoch rows at epoch {state['epoch']}")
        try:
            frame = epochs_frame(state["rows"])
        except (KeyError, TypeError, ValueError, pa.ArrowException) as error:
            raise ValueError(f"its epoch rows are not epochs.parquet rows ({first_line(error, 80)})") from None
        check_epoch_values(frame)
    try:
        pa.Table.from_pylist(state.get("layer_rows", []), schema=LAYER_SCHEMA)
    except (KeyError, TypeError, ValueError, AttributeError, pa.ArrowException) as error:
        raise ValueError(f"its layer rows are not layers.parquet rows ({first_line(error, 80)})") from None


def load_checkpoint(directory: Path, notify: Notify = print) -> dict | None:
    """The latest readable checkpoint of a run, the previous one if the latest is torn or fails its contract
    (check_checkpoint), or None if none.

    A checkpoint that cannot be read at all is a BenchError naming the file and why, never an unpickling
    traceback; one that is not a regular file, or larger than FILE_LIMITS allows, is not opened.
    """
    directory = Path(directory)
    candidates = [directory / name for name in (CHECKPOINT, f"{CHECKPOINT}.new", PREVIOUS_CHECKPOINT)]
    found = [path for path in candidates if path.exists() or path.is_symlink()]
    reasons = []
    for index, path in enumerate(found):
        then = "; trying an older one" if index + 1 < len(found) else ""
        try:
            with open_regular(path, FILE_LIMITS[CHECKPOINT], "delete it") as handle:
                state = torch.load(handle, map_location="cpu", weights_only=True)
            check_checkpoint(state)
        except RefusedFile as error:
            reasons.append(error.reason)
        except ValueError as error:
            reasons.append(str(error))
        except Exception as error:  # torch raises several types for a torn zip or pickle
            reasons.append(f"unreadable ({type(error).__name__})")
        else:
            return state
        notify(f"checkpoint {path} is not usable ({reasons[-1]}){then}")
    if found:
        raise BenchError(f"corrupt checkpoint {found[0]} ({reasons[0]}): delete {directory} to restart this run "
                         "from scratch")
    return None


@contextmanager
def run_lock(directory: Path) -> Iterator[bool]:
    """Hold the run's lock for the block; yields False (and holds nothing) if another process has it.

    An OS file lock dies with its process, so a run killed with -9 never stays locked.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    try:  # O_NOFOLLOW: a planted .lock link would make (or lock) a file elsewhere
        descriptor = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError as error:
        if error.errno == errno.ELOOP:
            refuse_link(directory / ".lock")
        raise
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)


def drop_previous_checkpoint(directory: Path) -> None:
    """Delete checkpoint.prev.pt: a finished run's last checkpoint is whole, the one before is dead weight."""
    (Path(directory) / PREVIOUS_CHECKPOINT).unlink(missing_ok=True)


def remove_if_empty(directory: Path) -> None:
    """Remove a run folder that holds nothing but its lock (and data.json): a run that failed before training."""
    directory = Path(directory)
    if directory.is_dir() and {path.name for path in directory.iterdir()} <= {".lock", DATA}:
        try:
            (directory / DATA).unlink(missing_ok=True)
            (directory / ".lock").unlink(missing_ok=True)
            directory.rmdir()
        except OSError:  # another process got here in between: its folder now
            pass


def run_state(directory: Path) -> RunStatus | None:
    """The recorded state of a run folder, or None if it has no status yet."""
    state = read_status(directory).get("state")
    return None if state is None else RunStatus(state)


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


def _check_epochs(frame: pd.DataFrame, schema: pa.Schema, run_id: str, status: dict) -> None:
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


def read_epochs(directory: Path, notify: Notify = print, *, repair: bool = False) -> pd.DataFrame:
    """A run's epoch rows (EPOCH_SCHEMA columns): its epochs.parquet, or, when that is torn, foreign, of the
    wrong types, short of the epochs status.json records, or missing, the rows its checkpoint holds (written
    back as epochs.parquet when `repair`, with a notice).

    A BenchError only when neither can be read, or when a run that status.json says trained epochs has
    neither (a finished run without checkpoint, as committed runs are, whose epochs.parquet is lost).
    """
    directory = Path(directory)
    path = directory / EPOCHS
    status = read_status(directory)
    trained = status.get("state") in (FINISHED, DIVERGED) or bool(status.get("epoch"))
    if path.exists() or path.is_symlink():
        try:
            frame, schema = read_parquet(path, FILE_LIMITS[EPOCHS], _REWRITE)
            _check_epochs(frame, schema, directory.name, status)
            return with_added_columns(frame)
        except RefusedFile as error:
            reason = error.reason
        except Exception as error:  # pyarrow raises several types for a torn or foreign file
            reason = type(error).__name__ + (f": {first_line(error, 120)}" if str(error).strip() else "")
    elif not trained and not any((directory / name).exists()
                                 for name in (CHECKPOINT, f"{CHECKPOINT}.new", PREVIOUS_CHECKPOINT)):
        return epochs_frame([])  # a run that has not finished an epoch yet
    else:
        reason = "missing"
    try:
        checkpoint = load_checkpoint(directory, notify=lambda message: None)
        frame = epochs_frame(checkpoint["rows"] if checkpoint is not None else [])
    except (BenchError, KeyError, TypeError, ValueError, pa.ArrowException):
        checkpoint = None
    if checkpoint is None:
        raise BenchError(f"cannot read {path} ({reason}) and no checkpoint holds its rows: delete {directory} "
                         "to train that run again")
    if repair:
        write_epochs(path, checkpoint["rows"])
        notify(f"{path} was unreadable ({reason}): rewrote it from the run's checkpoint")
    else:
        notify(f"{path} is unreadable ({reason}): using the rows of the run's checkpoint (the same `bench run` "
               "command rewrites the file)")
    return frame


def _run_folders(results: Sequence[Path], name: str) -> list[tuple[Path, Path]]:
    """(root, run folder) for every folder <root>/<dataset>/<run>/ holding `name` (or a link by that name)."""
    return [(Path(root), path.parent) for root in results for path in Path(root).glob(f"*/*/{name}")]


def find_runs(results: Sequence[Path]) -> list[Path]:
    """Every run folder (one holding config.json) under the given results folders, not reached through a link
    (find_linked names those)."""
    return sorted({folder for root, folder in _run_folders(results, CONFIG) if not _linked(root, folder)})


def find_linked(results: Sequence[Path]) -> list[Path]:
    """Run folders found only through a link in place of a dataset or run folder: never read."""
    return sorted({folder for name in (CONFIG, STATUS) for root, folder in _run_folders(results, name)
                   if _linked(root, folder)})


def _linked(root: Path, folder: Path) -> bool:
    try:
        refuse_links_below(root, folder)
    except BenchError:
        return True
    return False


def find_orphans(results: Sequence[Path]) -> list[Path]:
    """Run folders that lost their config.json (status or checkpoint there, config.json not)."""
    return sorted({folder for name in (STATUS, CHECKPOINT) for root, folder in _run_folders(results, name)
                   if not (folder / CONFIG).exists() and not _linked(root, folder)})


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


# A config.json written before a RunConfig field existed lacks it; that run behaved as the field's default says
# (e.g. `augment`: every earlier run augmented), and reading it so keeps it in one experiment with newer runs.
_PREDATED = {f.name: f.default for f in dataclasses.fields(RunConfig) if f.default is not dataclasses.MISSING}


def read_results(results: Sequence[Path], notify: Notify = _stderr) -> tuple[pd.DataFrame, pd.DataFrame]:
    """All runs under the given folders: (epochs, runs).

    `epochs` has one row per epoch (EPOCH_SCHEMA columns). `runs` has one row per run: the run's config
    fields (a field the run predates at its default; width, shortcut and family as built), params, its
    state (running/finished/diverged/interrupted), diverged_epoch, epochs_done, epochs_total, the dataset
    note, device_name, git_commit, torch version and the folder it came from. A run id found in several
    folders is kept once (the one with the most epochs), so merged copies do not double count.

    A run folder that cannot be read is skipped with a one-line `notify`, never blocking the others; a torn
    epochs.parquet is read from the run's checkpoint instead.
    """
    epoch_frames, run_rows = [], []
    for directory in find_linked(results):
        notify(f"skipped {directory}: a symbolic link stands in place of its run or dataset folder, and bench never "
               "reads through one below its results folder; move the run folder itself there")
    for directory in find_orphans(results):
        notify(f"skipped {directory}: it has no {CONFIG}; run the `bench run` command that made it again to "
               "rewrite it")
    for directory in find_runs(results):
        try:
            meta = read_config(directory)
            status = read_status(directory)
            frame = read_epochs(directory, notify)
        except BenchError as error:
            notify(f"skipped {directory}: {error}")
            continue
        environment = meta.get("environment") or {}
        dataset = meta.get("dataset") or {}
        run_rows.append({
            **_PREDATED, **meta.get("config", {}),
            "run_id": meta["run_id"],
            "dataset": dataset.get("name"),
            "dataset_note": dataset.get("note", ""),
            "image_size": dataset.get("image_size"),  # as stored; the net saw input_size where that is set
            "width": (meta.get("model") or {}).get("width"),
            "shortcut": (meta.get("model") or {}).get("shortcut"),
            "family": (meta.get("model") or {}).get("family"),
            "params": (meta.get("model") or {}).get("params"),
            "state": status.get("state", RUNNING),
            "diverged_epoch": status.get("diverged_epoch"),
            "epochs_done": len(frame),
            "epochs_total": status.get("epochs_total", (meta.get("schedule") or {}).get("epochs")),
            "device_name": environment.get("device_name"),
            "git_commit": environment.get("git_commit"),
            "torch": environment.get("torch"),
            "started_at": meta.get("started_at"),
            "path": str(directory),
        })
        epoch_frames.append(frame.assign(_path=str(directory)))
    if not run_rows:
        return epochs_frame([]), pd.DataFrame()
    runs = (pd.DataFrame(run_rows).sort_values("epochs_done", ascending=False)
            .drop_duplicates("run_id").sort_values(["dataset", "arch", "depth", "seed"]).reset_index(drop=True))
    kept = set(runs["path"])
    epochs = pd.concat(epoch_frames, ignore_index=True)
    epochs = epochs[epochs["_path"].isin(kept)].drop(columns="_path").reset_index(drop=True)
    return epochs, runs


# What the numbers of a layer row may be (column -> lowest): counts, and measurements that are norms and standard
# deviations, so never negative. A measurement may be NaN or infinite only in a run that diverged.
_LAYER_LOWEST = {"epoch": 0, "iteration": 0, "layer": 1, "stage": 0, "block": 0}
_REANALYZE = "delete it; `bench analyze` on the run folder writes its response statistics again from the checkpoint"


def read_layer_file(directory: Path) -> pd.DataFrame | None:
    """A run's layers.parquet checked against its contract (a regular file under its bound, LAYER_SCHEMA's
    columns of their kinds of type, this run's rows, known kinds, counts and measurements in range), or None
    when the run has none. Anything else is a BenchError naming the file and the fix."""
    directory = Path(directory)
    path = directory / LAYERS
    if not (path.exists() or path.is_symlink()):
        return None
    try:
        frame, schema = read_parquet(path, FILE_LIMITS[LAYERS], _REANALYZE)
        _check_columns(schema, LAYER_SCHEMA)
        others = sorted(set(frame["run_id"]) - {directory.name})
        if others:
            raise ValueError(f"rows of run {others[0]}")
        kinds = sorted(set(frame["kind"]) - set(LAYER_KINDS))
        if kinds:
            raise ValueError(f"kind {kinds[0]!r}, not one of {', '.join(LAYER_KINDS)}")
        for column, low in _LAYER_LOWEST.items():
            if (value := _first_outside(frame, column, low, math.inf)) is not None:
                raise ValueError(f"column {column} holds {value!r}, below {low}")
        diverged = read_status(directory).get("state") == DIVERGED
        if (value := _first_outside(frame, "value", 0, math.inf, finite=not diverged)) is not None:
            raise ValueError(f"column value holds {value!r}, not a finite number >= 0")
    except BenchError:  # the file refused unread, or a status.json that fails its own contract
        raise
    except Exception as error:  # pyarrow raises several types for a torn or foreign file
        reason = type(error).__name__ + (f": {first_line(error, 120)}" if str(error).strip() else "")
        raise BenchError(f"{path} is unreadable ({reason}): {_REANALYZE}") from None
    return frame


def read_layers(runs: pd.DataFrame, notify: Notify = print) -> pd.DataFrame:
    """The layers.parquet rows of the given runs (the `runs` frame of `read_results`), with their arch,
    depth and seed; runs without the file (trained before it existed: see `bench analyze`) have none. A file
    that fails its contract (read_layer_file) is left out with a one-line `notify`: the run's other figures
    are drawn."""
    frames = []
    for run in runs.itertuples() if not runs.empty else ():
        try:
            frame = read_layer_file(Path(run.path))
        except BenchError as error:
            notify(f"left out the per-layer figures of {run.run_id}: {error}")
            continue
        if frame is None:
            continue
        frames.append(frame.assign(arch=run.arch, depth=run.depth, seed=run.seed))
    if not frames:
        return pd.DataFrame(columns=[*LAYER_SCHEMA.names, "arch", "depth", "seed"])
    return pd.concat(frames, ignore_index=True)
