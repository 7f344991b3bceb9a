"""checkpoint.pt: a run's whole state, saved so that a torn write leaves the one before (checkpoint.prev.pt), and
loaded only after it passes its contract (bench.run.state.RunState says what it holds); torch.load with
weights_only=True, never a wider unpickling, and only of a regular file under its size bound."""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path

import pyarrow as pa
import torch

from bench.core.errors import BenchError, Notify, first_line
from bench.core.files import RefusedFile, open_regular, write_atomic
from bench.core.records import LAYER_SCHEMA
from bench.results.parquet import check_epoch_values, epochs_frame
from bench.results.store import CHECKPOINT, FILE_LIMITS, PREVIOUS_CHECKPOINT, is_count

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
        if not is_count(state[key]):
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


def drop_previous_checkpoint(directory: Path) -> None:
    """Delete checkpoint.prev.pt: a finished run's last checkpoint is whole, the one before is dead weight."""
    (Path(directory) / PREVIOUS_CHECKPOINT).unlink(missing_ok=True)
