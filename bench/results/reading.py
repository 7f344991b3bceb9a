"""A results folder read back: one run's epoch rows (`read_epochs`, from its checkpoint where epochs.parquet is
lost or fails its contract) and layer rows (`read_layer_file`), the run folders below results folders
(`find_runs`, and those `find_linked` and `find_orphans` name to skip), and every run at once (`read_results`,
`read_layers`): the one reader `bench run`'s summary, `bench report` and `bench analyze` share."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pyarrow as pa

from bench.core.config import RunConfig
from bench.core.errors import BenchError, Notify, first_line
from bench.core.files import RefusedFile, refuse_links_below
from bench.core.records import DIVERGED, FINISHED, LAYER_SCHEMA, RUNNING
from bench.results.checkpoints import load_checkpoint
from bench.results.parquet import (check_epochs, check_layers, epochs_frame, read_parquet, with_added_columns,
                                   write_epochs)
from bench.results.store import (CHECKPOINT, CONFIG, EPOCHS, FILE_LIMITS, LAYERS, PREVIOUS_CHECKPOINT, REWRITE, STATUS,
                                 read_config, read_status)


def _reason(error: Exception) -> str:
    """Why pyarrow could not read a file, in a few words: it raises several types for a torn or foreign one."""
    return type(error).__name__ + (f": {first_line(error, 120)}" if str(error).strip() else "")


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
            frame, schema = read_parquet(path, FILE_LIMITS[EPOCHS], REWRITE)
            check_epochs(frame, schema, directory.name, status)
            return with_added_columns(frame)
        except RefusedFile as error:
            reason = error.reason
        except Exception as error:  # pyarrow raises several types for a torn or foreign file
            reason = _reason(error)
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
        diverged = read_status(directory).get("state") == DIVERGED
        check_layers(frame, schema, directory.name, diverged)
    except BenchError:  # the file refused unread, or a status.json that fails its own contract
        raise
    except Exception as error:  # pyarrow raises several types for a torn or foreign file
        reason = _reason(error)
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
