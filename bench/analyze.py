"""`bench analyze`: Figure 7's response statistics recomputed from a run's checkpoint, on the whole test split.

For runs trained before `layers.parquet` existed (their checkpoint holds the weights), and for anyone who
wants the statistic over every test image rather than the 1,000 that training measures each epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from bench import store
from bench.config import RunConfig
from bench.data import load_dataset
from bench.errors import BenchError
from bench.layers import RESPONSE_STD, response_rows
from bench.train import make_model, prepare_inputs, resolve_device

Notify = Callable[[str], None]
BATCH = 500


def run_folders(paths: Sequence[Path]) -> list[Path]:
    """Each path as given if it is a run folder (holds config.json), else every run folder under it."""
    folders = []
    for path in map(Path, paths):
        if (path / store.CONFIG).exists():
            folders.append(path)
        elif path.is_dir() and (found := store.find_runs([path])):
            folders += found
        else:
            raise BenchError(f"{path} is neither a run folder (with {store.CONFIG}) nor a results folder holding "
                             "runs: pass e.g. results/cifar10/<run_id>")
    return folders


def analyze_run(directory: Path, data_dir: Path | None = None, *, device: str = "auto",
                notify: Notify = print) -> int:
    """Write the response std of every 3x3 layer, over the whole test split, at the checkpoint's position into
    the run's layers.parquet (replacing the response rows of that epoch, keeping every other row);
    returns the number of rows written. A run resumed later rewrites layers.parquet from its checkpoint."""
    directory = Path(directory)
    meta = store.read_json(directory / store.CONFIG)
    config = RunConfig.from_dict(meta.get("config", {}) if isinstance(meta, dict) else {})
    with store.run_lock(directory) as mine:
        if not mine:
            raise BenchError(f"{directory} is being trained right now: analyze it once that process stops")
        checkpoint = store.load_checkpoint(directory, notify)
        if checkpoint is None:
            raise BenchError(f"{directory} has no checkpoint: `bench analyze` needs the trained weights "
                             "(checkpoints are not committed with reference runs; retrain with `bench run`)")
        data = load_dataset(config.dataset, data_dir, progress=False, notify=notify)
        model = make_model(config, data)
        model.load_state_dict(checkpoint["model"])
        target = resolve_device(device)
        model.to(target)
        images = data.test_images
        batches = (prepare_inputs(images[i:i + BATCH].to(target), data.mean.to(target), config)
                   for i in range(0, len(images), BATCH))
        epoch, iteration = int(checkpoint["epoch"]), int(checkpoint["iteration"])
        rows = response_rows(config.run_id(), epoch, iteration, model, batches)
        layers = directory / store.LAYERS
        # The checkpoint holds every row training measured (none for runs from before layers.parquet).
        kept = [r for r in checkpoint.get("layer_rows", [])
                if not (r["kind"] == RESPONSE_STD and r["epoch"] == epoch)]
        store.write_layers(layers, kept + rows)
    notify(f"{directory.name}: response std of {len(rows)} layers over {len(images):,} test images "
           f"at epoch {epoch} (iteration {iteration:,}) -> {layers}")
    return len(rows)
