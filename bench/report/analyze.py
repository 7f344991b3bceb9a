"""`bench analyze`: Figure 7's response statistics recomputed from a run's checkpoint, on the whole test split.

For runs trained before `layers.parquet` existed (their checkpoint holds the weights), and for anyone who
wants the statistic over every test image rather than the 1,000 that training measures each epoch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bench.core.config import RunConfig, resolve_device
from bench.core.errors import BenchError, Notify, first_line
from bench.data.data import load_dataset
from bench.results import checkpoints, parquet, reading, store
from bench.run.layers import RESPONSE_BATCH, RESPONSE_STD, response_rows
from bench.run.measures import scaled_batch
from bench.run.step import prepare_inputs
from bench.run.train import make_model



def run_folders(paths: Sequence[Path]) -> list[Path]:
    """Each path as given if it is a run folder (holds config.json), else every run folder under it (a
    results folder or one of its dataset folders)."""
    folders = []
    for path in map(Path, paths):
        if (path / store.CONFIG).exists():
            folders.append(path)
        elif path.is_dir() and (found := reading.find_runs([path]) or reading.find_runs([path.parent])):
            folders += [f for f in found if path in f.parents]
        else:
            raise BenchError(f"{path} is neither a run folder (with {store.CONFIG}) nor a results folder holding "
                             "runs: pass e.g. results/cifar10/<run_id>")
    return folders


def analyze_runs(paths: Sequence[Path], data_dir: Path | None = None, *, device: str = "auto",
                 notify: Notify = print, skipped: Notify = print) -> None:
    """`bench analyze`: analyze_run for every run folder of `paths` (run_folders). Of several, one without a
    checkpoint (a committed run: weights are not in git) is passed over, and `skipped` says so."""
    folders = run_folders(paths)
    for folder in folders:
        if len(folders) > 1 and not (folder / store.CHECKPOINT).exists():
            skipped(f"skipped {folder}: no checkpoint")
            continue
        analyze_run(folder, data_dir, device=device, notify=notify)


def analyze_run(directory: Path, data_dir: Path | None = None, *, device: str = "auto",
                notify: Notify = print) -> int:
    """Write the response std of every 3x3 layer, over the whole test split, at the checkpoint's epoch into
    the run's layers.parquet (replacing the response rows of that epoch, keeping every other row);
    returns the number of rows written.

    Refused for a checkpoint taken in the middle of an epoch (its weights belong to no epoch end). A run
    that goes on training later rewrites layers.parquet from its checkpoint, without these rows.
    """
    directory = Path(directory)
    meta = store.read_config(directory)
    config = RunConfig.from_dict(meta["config"])
    with store.run_lock(directory) as mine:
        if not mine:
            raise BenchError(f"{directory} is being trained right now: analyze it once that process stops")
        checkpoint = checkpoints.load_checkpoint(directory, notify)
        if checkpoint is None:
            raise BenchError(f"{directory} has no checkpoint: `bench analyze` needs the trained weights "
                             "(checkpoints are not committed with reference runs; retrain with `bench run`)")
        if checkpoint.get("partial") is not None:
            raise BenchError(f"{directory} stopped in the middle of an epoch: run its `bench run` command to "
                             "finish that epoch, then analyze it")
        written = reading.read_layer_file(directory)  # the file holds every row; a checkpoint those up to its epoch
        kept = checkpoint.get("layer_rows", []) if written is None else written.to_dict("records")
        data = load_dataset(config.dataset, data_dir, progress=False, notify=notify)
        store.check_same_data(directory, data.info.fingerprint, data.info.source)
        model = make_model(config, data)
        try:
            model.load_state_dict(checkpoint["model"])
        except RuntimeError as error:
            raise BenchError(f"{directory}: its checkpoint does not fit the network built for {data.info.source} "
                             f"({first_line(error, 120)}): pass the --data-dir it was trained on") from None
        target = resolve_device(device)
        model.to(target)
        mean = data.mean.to(target)
        epoch, iteration = int(checkpoint["epoch"]), int(checkpoint["iteration"])
        rows = response_rows(meta["run_id"], epoch, iteration, model, data.test_images,
                             lambda images: prepare_inputs(images.to(target), mean, config),
                             batch_size=scaled_batch(RESPONSE_BATCH, config, data))
        layers = directory / store.LAYERS
        kept = [r for r in kept if not (r["kind"] == RESPONSE_STD and r["epoch"] == epoch)]
        parquet.write_layers(layers, kept + rows)
    notify(f"{directory.name}: response std of {len(rows)} layers over {len(data.test_images):,} test images "
           f"at epoch {epoch} (iteration {iteration:,}) -> {layers}")
    return len(rows)
