"""`bench run`'s plan: every run of a grid validated, the dataset resolved and each run's memory format
settled, before anything is trained."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from bench import store
from bench.config import GridConfig, RunConfig, usable_cpus, validate
from bench.data import DataSource, resolve_dataset
from bench.distributed import from_environment
from bench.errors import BenchError, check_positive
from bench.modes import default_channels_last
from bench.streaming import list_folder
from bench.views import PAPER_SIZE
from resnet import FAMILY_DEFAULTS, family_of


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a grid resolves to before anything is trained."""

    runs: list[RunConfig]
    source: DataSource  # resolved once here; the loading, and every --devices worker, take it as it is
    results: Path
    stream: bool = False  # the ImageFolder streamed from disk (bench.batches), not held in memory

    @property
    def dataset(self) -> str:
        return self.source.name

    @property
    def notice(self) -> str | None:
        return self.source.notice

    def directory(self, run: RunConfig) -> Path:
        return store.run_dir(self.results, self.dataset, run.run_id())


def plan(grid: GridConfig) -> Plan:
    """Validate every run, pin the dataset ('auto' becomes what will really be used) and settle each run's
    memory format (memory_format): every check of a run, before any data is loaded or any model built."""
    runs = [validate(run) for run in grid.runs()]
    if from_environment().enabled and any(run.mode == "cuda-graph" for run in runs):
        raise BenchError("--cuda-graph runs one process per run: leave out torchrun (--devices spreads runs over "
                         "GPUs instead)")
    check_positive("--time-limit", grid.time_limit, detail=" of minutes", fix=": leave it out for no limit")
    check_positive("--threads", grid.threads, integer=True)
    if grid.loader_workers is not None and (not isinstance(grid.loader_workers, int) or grid.loader_workers < 0):
        raise BenchError(f"--loader-workers {grid.loader_workers}: give 0 (decode in the training process) or more")
    source = resolve_dataset(grid.base.dataset, Path(grid.data_dir))
    results = Path(grid.results)
    # The kind of device only: a GPU named but absent is refused where the device is set up.
    device_type = "cpu" if grid.base.device == "cpu" or not torch.cuda.is_available() else "cuda"
    runs = [dataclasses.replace(run, dataset=source.name) for run in runs]
    stream = streams(grid, source)
    if stream and any(run.mode == "cuda-graph" for run in runs):
        raise BenchError("--cuda-graph replays one batch shape, and a streamed batch is smaller where an image "
                         "could not be decoded: leave out --cuda-graph (or use --in-memory)")
    if stream:  # a streamed set's views are 224 unless told: said in the run, so its run_id tells it apart
        runs = [validate(dataclasses.replace(run, input_size=run.input_size or PAPER_SIZE)) for run in runs]
    return Plan([memory_format(run, store.run_dir(results, source.name, run.run_id()), device_type)
                 for run in runs], source, results, stream)


def streams(grid: GridConfig, source: DataSource) -> bool:
    """Whether the dataset is streamed from disk: --stream or --in-memory as given, else when its decoded copy at
    the input size would fill half this machine's memory (FolderListing.streams). Only an ImageFolder streams."""
    if not source.name.startswith("imagefolder"):
        if grid.stream:
            raise BenchError(f"--stream reads an ImageFolder from disk, and {source.name} is held in memory: use "
                             "--dataset imagefolder:<folder>, or leave --stream out")
        return False
    if grid.stream is not None:
        return grid.stream
    try:
        listing = list_folder(source.path)
    except BenchError:  # a folder neither path can read: bench.data's loading says what is wrong, as it always has
        return False
    return listing.streams(grid.base.input_size or 32)


def memory_format(run: RunConfig, directory: Path, device_type: str) -> RunConfig:
    """`run` with its memory format settled where the command left it open: a run that has started keeps the
    one its config.json records, so a resume computes what an unbroken run would; a new run gets the one
    measured fastest on this machine (bench.modes.default_channels_last)."""
    if run.channels_last is not None:
        return run
    if (directory / store.CONFIG).exists():
        recorded = store.read_config(directory)["config"].get("channels_last")
        return dataclasses.replace(run, channels_last=bool(recorded))
    width = run.width or FAMILY_DEFAULTS[family_of(run.depth)]["width"]
    return dataclasses.replace(run, channels_last=default_channels_last(device_type, run.precision, run.depth,
                                                                        width, run.input_size or 32))


def configuration(grid: GridConfig, planned: Plan) -> dict[str, object]:
    """What `bench run` prints before it trains: the base config (the grid's depths, archs and seeds stand for
    its single arch, depth and seed) as the plan settled it: the dataset, the memory format, one value, or
    one per run_id where runs differ, and how the data is read (streamed, with the input size, or in memory)."""
    shared = {k: v for k, v in grid.base.to_dict().items() if k not in ("arch", "depth", "seed")}
    formats = {run.run_id(): run.channels_last for run in planned.runs}
    shared["channels_last"] = formats if len(set(formats.values())) > 1 else next(iter(formats.values()), None)
    if planned.stream and planned.runs:  # a streamed set's views: 224 unless the command said
        shared["input_size"] = planned.runs[0].input_size
    index, count = grid.shard
    return {**shared, "dataset": planned.dataset, "depths": grid.depths, "archs": grid.archs, "seeds": grid.seeds,
            "data_dir": grid.data_dir, "results": grid.results, "shard": f"{index}/{count}",
            "data": f"streamed, {workers_text(loader_workers(grid))}" if planned.stream else "in memory"}


def workers_text(count: int) -> str:
    """'1 loader worker', '4 loader workers'."""
    return f"{count} loader worker{'s' if count != 1 else ''}"


def loader_workers(grid: GridConfig) -> int:
    """The processes decoding a streamed set's batches: --loader-workers, else one per CPU this process may
    use, up to 8."""
    return grid.loader_workers if grid.loader_workers is not None else min(usable_cpus(), 8)


def dry_run_lines(planned: Plan) -> list[str]:
    """One line per run of the grid, beginning with its run_id, and what state it is in now."""
    lines = []
    for run in planned.runs:
        directory = planned.directory(run)
        state = store.run_state(directory) if directory.exists() else None
        lines.append(f"{run.run_id()}  {run.arch:<8} depth={run.depth:<4} seed={run.seed}  "
                     f"{planned.dataset}  {state or 'new'}  {recipe(run)}  -> {directory}")
    return lines


def recipe(run: RunConfig) -> str:
    """The optimizer and its settings in one short phrase, as --dry-run shows them, and the input size and
    stem where the command gave them."""
    milestones = ",".join(f"{f:g}" for f in run.lr_decay_at) or "none"
    momentum = f" momentum={run.momentum:g}" if run.optimizer == "sgd" else ""
    size = f" input={run.input_size}" if run.input_size else ""
    stem = f" stem={run.stem}" if run.stem else ""
    return f"{run.optimizer} lr={run.lr:g}{momentum} wd={run.weight_decay:g} milestones={milestones}{size}{stem}"
