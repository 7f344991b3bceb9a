"""Which machine and code trained which epochs of a run: chunks.json, one entry per start of `bench run` on it.

A long run trains in chunks (`--time-limit`), each possibly on another machine and under a newer commit; a
resumed run is valid when its run_id and checkpoint are unchanged, and this record says which CPU (or GPU),
thread count and commit carried it from which epoch. config.json keeps the environment of the first start only.

    chunks.json   {"chunks": [Chunk, ...]}: in order of start; epoch e (from 1) was trained, wholly or in
                  part, by the chunks with first_epoch < e whose successor starts at e-1 or later
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.core.errors import BenchError
from bench.core.provenance import environment, utc_now
from bench.results import store

CHUNKS = "chunks.json"
_FIX = f"delete {CHUNKS} (it only records where the run trained) and run the same `bench run` command again"


@dataclass(frozen=True)
class Chunk:
    """One start of a run: the epoch and iteration it began from, and where and under what code."""

    first_epoch: int  # epochs finished before this chunk began
    first_iteration: int  # iterations finished before it (past first_epoch's end after a mid-epoch stop)
    started_at: str | None  # ISO 8601 UTC; None where it is not known
    git_commit: str | None
    device_name: str | None  # the CPU model, or the GPU's name
    cpu_id: str | None  # vendor, family, model and the CPU flags torch's kernels choose by (provenance.cpu_id)
    threads: int | None
    # True for the first chunk of a run that started before chunks were recorded: read back from config.json.
    from_config: bool = False


_FIELDS = {f.name: f for f in dataclasses.fields(Chunk)}
_TYPES = {"first_epoch": int, "first_iteration": int, "started_at": str, "git_commit": str, "device_name": str,
          "cpu_id": str, "threads": int, "from_config": bool}


def starting(epoch: int, iteration: int, device: torch.device) -> Chunk:
    """The chunk that starts now, on this machine, from `epoch` and `iteration`."""
    env = environment(device)
    return Chunk(first_epoch=epoch, first_iteration=iteration, started_at=utc_now(), git_commit=env["git_commit"],
                 device_name=env["device_name"], cpu_id=env["cpu_id"], threads=env["threads"])


def _from_config(meta: dict) -> Chunk:
    env = meta.get("environment") or {}
    return Chunk(first_epoch=0, first_iteration=0, started_at=meta.get("started_at"),
                 git_commit=env.get("git_commit"), device_name=env.get("device_name"), cpu_id=env.get("cpu_id"),
                 threads=env.get("threads"), from_config=True)


def read_chunks(directory: Path, epochs_done: int | None = None) -> list[Chunk]:
    """A run's chunks, checked: known fields of their types, starts in order and, given `epochs_done` (the rows
    of its epochs.parquet), none after the last epoch. A run without chunks.json (it predates the record)
    has one chunk, its config.json's environment; [] where it has neither file."""
    directory = Path(directory)
    path = directory / CHUNKS
    if not (path.exists() or path.is_symlink()):
        config = directory / store.CONFIG
        return [_from_config(store.read_json(config, store.CONFIG_SHAPE))] if config.exists() else []
    raw = store.read_json(path, {"chunks": list})["chunks"]
    chunks = []
    for entry in raw:
        if not isinstance(entry, dict) or set(entry) - set(_FIELDS) or set(_FIELDS) - {"from_config"} - set(entry):
            raise BenchError(f"{path} holds an entry that is not a chunk ({str(entry):.80}): {_FIX}")
        for key, value in entry.items():
            kind = _TYPES[key]
            if value is not None and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
                raise BenchError(f"{path} has {key} {value!r:.40}, not a {kind.__name__}: {_FIX}")
        chunks.append(Chunk(**entry))
    starts = [(c.first_epoch, c.first_iteration) for c in chunks]
    if any(e is None or i is None or e < 0 or i < 0 for e, i in starts) or starts != sorted(starts):
        raise BenchError(f"{path} has chunk starts out of order or negative ({starts[:6]}): {_FIX}")
    if epochs_done is not None and starts and starts[-1][0] > epochs_done:
        raise BenchError(f"{path} has a chunk starting after epoch {starts[-1][0]}, but the run has "
                         f"{epochs_done} epochs: {_FIX}")
    return chunks


def record_start(directory: Path, chunk: Chunk) -> None:
    """Append `chunk` to the run's chunks.json. A run resumed from a checkpoint made before chunks were
    recorded gets its config.json's environment as its first chunk, so the record starts at epoch 0."""
    chunks = read_chunks(directory) if chunk.first_iteration > 0 else []
    store.write_json(Path(directory) / CHUNKS, {"chunks": [dataclasses.asdict(c) for c in [*chunks, chunk]]})
