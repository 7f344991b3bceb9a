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

This module holds the folder's layout (file names, size bounds, run folders), its JSON files (config.json and its
checks, data.json, status.json: `write_status` its one writer, `read_status` its one reader) and the run's lock.
The rest of the folder has a module of its own in bench.results: `parquet` (epochs.parquet and layers.parquet
written, and checked against their contract), `checkpoints` (checkpoint.pt saved, checked and loaded), `reading`
(a run's epochs and layers read back, the run folders found, `read_results`) and `chunks` (chunks.json).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from bench.core.config import RunConfig
from bench.core.errors import BenchError, first_line
from bench.core.files import check_nesting, read_regular, refuse_link, refuse_links_below, safe_name, write_atomic
from bench.core.provenance import utc_now
# The run states are store.RUNNING, store.FINISHED... to callers of the results folder too, as they have always
# been (bench.core.records.RunStatus defines them).
from bench.core.records import DIVERGED, FINISHED, INTERRUPTED, RUNNING, STATES, RunStatus  # noqa: F401
from resnet import FAMILY_DEFAULTS, family_of

CONFIG, EPOCHS, LAYERS, STATUS = "config.json", "epochs.parquet", "layers.parquet", "status.json"
DATA = "data.json"
CHECKPOINT, PREVIOUS_CHECKPOINT = "checkpoint.pt", "checkpoint.prev.pt"

# What the JSON files of a run folder must hold (key -> type), checked whenever one is read back.
CONFIG_SHAPE: dict[str, type | tuple[type, ...]] = {
    "run_id": str, "config": dict, "dataset": (dict, type(None)), "model": (dict, type(None)),
    "schedule": (dict, type(None)), "environment": (dict, type(None))}
STATUS_SHAPE: dict[str, type | tuple[type, ...]] = {"state": str}
# The fix for any damaged file of a run folder: `bench run` rewrites config.json, status.json and
# epochs.parquet of a run it finds again (from its configuration and checkpoint).
REWRITE = "delete it and run the same `bench run` command again, which rewrites it"

# The most bytes each run file may hold before it is opened, far above what bench writes (a config.json is
# about 2 KiB, status.json 0.2 KiB; epochs.parquet grows by some 200 bytes an epoch, layers.parquet by some
# 40 bytes a measured layer, a checkpoint is about twice the weights). A larger one is not read: a sparse
# 1 GiB status.json would cost seconds and gigabytes before it could be refused.
FILE_LIMITS = {STATUS: 64 * 2**10, CONFIG: 2**20, DATA: 2**20, EPOCHS: 64 * 2**20, LAYERS: 2**30,
               CHECKPOINT: 4 * 2**30}


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
    raw = read_regular(path, FILE_LIMITS.get(path.name, FILE_LIMITS[CONFIG]), REWRITE)
    check_nesting(raw, path, REWRITE)
    try:
        data = json.loads(raw)
    except ValueError as error:
        reason = first_line(error)
        raise BenchError(f"cannot read {path} ({reason}): {REWRITE}") from None
    if not isinstance(data, dict):
        raise BenchError(f"{path} holds a JSON {type(data).__name__}, not an object: {REWRITE}")
    for key, kind in (shape or {}).items():
        if not isinstance(data.get(key), kind):
            raise BenchError(f"{path} has no valid {key!r}: {REWRITE}")
    return data


def read_status(directory: Path) -> dict:
    """A run's status.json, checked ({} when it has none yet): the one reader of status.json."""
    path = Path(directory) / STATUS
    if not path.exists():
        return {}
    status = read_json(path, STATUS_SHAPE)
    if status["state"] not in STATES:
        raise BenchError(f"{path} has an unknown state {status['state']!r}: {REWRITE}")
    for key in _STATUS_COUNTS:
        if status.get(key) is not None and not is_count(status[key]):
            raise BenchError(f"{path} has {key} {status[key]!r:.40}, not a count: {REWRITE}")
    return status


_STATUS_COUNTS = ("epoch", "epochs_total", "diverged_epoch")  # what status.json counts, where it has them


def is_count(value: object) -> bool:
    """A count as status.json, config.json and a checkpoint record it: an int (not a bool) a signed 64-bit
    integer holds."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


def write_status(directory: Path, state: RunStatus, **fields: object) -> None:
    """Record where the run stands: the one writer of status.json (read_status its one reader)."""
    write_json(Path(directory) / STATUS, {"state": RunStatus(state).value, "updated": utc_now(), **fields})


def run_state(directory: Path) -> RunStatus | None:
    """The recorded state of a run folder, or None if it has no status yet."""
    state = read_status(directory).get("state")
    return None if state is None else RunStatus(state)


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
                         f"{meta['run_id']}, the folder is {directory.name}): {REWRITE}")
    if (wrong := _unhashed_wrong(meta)) is not None:
        raise BenchError(f"{path} has {wrong}: {REWRITE}")
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
        if where.get(key) is not None and not is_count(where[key]):
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


@contextmanager
def run_lock(directory: Path) -> Iterator[bool]:
    """Hold the run's lock for the block; yields False (and holds nothing) if another process has it.

    A POSIX record lock (lockf) dies with its process, so a run killed with -9 never stays locked; a flock would
    be shared with the process's forked loader workers, which outlive it by seconds, and a rerun meanwhile would
    skip the run as busy.
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
            fcntl.lockf(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (BlockingIOError, PermissionError):  # EAGAIN or EACCES: held by another process
            yield False
            return
        try:
            yield True
        finally:
            fcntl.lockf(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)


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
