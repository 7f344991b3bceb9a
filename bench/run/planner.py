"""`bench run`'s plan: the grid validated in one pass (validate_grid), the dataset resolved and each run's
memory format settled, before anything is loaded, built or trained."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from bench.core.config import GridConfig, RunConfig, parse_gpus, usable_cpus, validate
from bench.core.errors import BenchError, check_positive
from bench.core.modes import default_channels_last
from bench.data.data import DataSource, resolve_dataset, train_size
from bench.data.streaming import list_folder
from bench.data.views import PAPER_SIZE
from bench.results import store
from bench.run.distributed import from_environment
from bench.run.state import check_batch
from resnet import FAMILY_DEFAULTS, family_of


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a grid resolves to before anything is trained."""

    runs: list[RunConfig]
    source: DataSource  # resolved once here; the loading, and every --devices worker, take it as it is
    results: Path
    stream: bool = False  # the ImageFolder streamed from disk (bench.run.batches), not held in memory

    @property
    def dataset(self) -> str:
        return self.source.name

    @property
    def notice(self) -> str | None:
        return self.source.notice

    def directory(self, run: RunConfig) -> Path:
        return store.run_dir(self.results, self.dataset, run.run_id())


def plan(grid: GridConfig) -> Plan:
    """Validate the grid (validate_grid), pin the dataset ('auto' becomes what will really be used), decide
    whether it streams (streams) and settle each run's memory format (memory_format), before any data is
    loaded or any model built."""
    runs, source = validate_grid(grid)
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
    """Whether the dataset is streamed from disk: --stream or --in-memory as given; else always under the imagenet
    preset, whose section 3.4 views crop full-size images (the in-memory path stores an ImageFolder at 32x32 and
    would hand the net those pixels upscaled); else when its decoded copy at the input size would fill half this
    machine's memory (FolderListing.streams). Only an ImageFolder streams."""
    if not source.name.startswith("imagefolder"):
        if grid.stream:
            raise BenchError(f"--stream reads an ImageFolder from disk, and {source.name} is held in memory: use "
                             "--dataset imagefolder:<folder>, or leave --stream out")
        return False
    if grid.stream is not None:
        return grid.stream
    if grid.base.preset == "imagenet":
        return True
    try:
        listing = list_folder(source.path)
    except BenchError:  # a folder neither path can read: bench.data.data's loading says what is wrong
        return False
    return listing.streams(grid.base.input_size or 32)


def validate_grid(grid: GridConfig) -> tuple[list[RunConfig], DataSource]:
    """Every check of a `bench run` grid, in one pass, before any data is loaded or model built: --shard and
    --devices (the CLI only parsed them), each run (config.validate), --cuda-graph under torchrun, --time-limit,
    --threads and --loader-workers, the dataset (found or refused), and each run's batch against the training images it will
    have (bench.data.data.train_size, capped by --train-subset; bench.run.state.check_batch). Returns the runs, and the
    dataset as resolved."""
    index, count = grid.shard
    if not 1 <= index <= count:
        raise BenchError(f"--shard '{index}/{count}': I must be between 1 and N")
    _check_devices(grid.devices, grid.base.device)
    runs = [validate(run) for run in grid.runs()]
    ranks = from_environment()
    if ranks.enabled and any(run.mode == "cuda-graph" for run in runs):
        raise BenchError("--cuda-graph runs one process per run: leave out torchrun (--devices spreads runs over "
                         "GPUs instead)")
    check_positive("--time-limit", grid.time_limit, detail=" of minutes", fix=": leave it out for no limit")
    check_positive("--threads", grid.threads, integer=True)
    if grid.loader_workers is not None and (not isinstance(grid.loader_workers, int) or grid.loader_workers < 0):
        raise BenchError(f"--loader-workers {grid.loader_workers}: give 0 (decode in the training process) or more")
    source = resolve_dataset(grid.base.dataset, Path(grid.data_dir))
    images = train_size(source) if runs else 0
    for run in runs:
        check_batch(run, min(images, run.train_subset or images), ranks.world_size)
    return runs, source


def gpus(given: str | None, device: str) -> tuple[str, ...]:
    """The GPUs `bench run` spreads runs over: `--devices 0,1` -> ('cuda:0', 'cuda:1') (parse_gpus), by default
    every visible GPU when it trains on GPUs and there are several; none under torchrun, where each rank already
    has its GPU (and --devices is not read). Whether the GPUs named are here, and --device agrees, is
    validate_grid's to say."""
    if from_environment().enabled:
        return ()
    if given is None:
        count = torch.cuda.device_count() if device in ("auto", "cuda") else 0
        return tuple(f"cuda:{i}" for i in range(count)) if count > 1 else ()
    return parse_gpus(given)


def _check_devices(devices: tuple[str, ...], device: str) -> None:
    """The GPUs --devices named ('cuda:<index>' each, as the CLI parsed them), against --device and the GPUs
    this machine has. A GridConfig built in code may spread runs over CPU devices too (tests stand them in for
    GPUs): those are not checked."""
    indices = [int(name.partition(":")[2] or 0) for name in devices if name.startswith("cuda")]
    if not indices:
        return
    if device == "cpu":
        raise BenchError("--devices names GPUs, but --device is cpu: drop one of them")
    visible = torch.cuda.device_count()
    if visible == 0:
        raise BenchError("--devices needs CUDA GPUs and none is visible: leave --devices out")
    if any(not 0 <= i < visible for i in indices):
        given = ",".join(map(str, indices))
        raise BenchError(f"--devices {given!r}: {visible} GPU(s) visible, so indices run 0..{visible - 1}")


def memory_format(run: RunConfig, directory: Path, device_type: str) -> RunConfig:
    """`run` with its memory format settled where the command left it open: a run that has started keeps the
    one its config.json records, so a resume computes what an unbroken run would; a new run gets the one
    measured fastest on this machine (bench.core.modes.default_channels_last)."""
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
    """The schedule, the optimizer and its settings in one short phrase, as --dry-run shows them (milestones as
    fractions of the run, and as epochs where the run is given in whole epochs), and the input size and stem
    where the command or preset gave them."""
    milestones = ",".join(f"{f:g}" for f in run.lr_decay_at) or "none"
    epochs = [f * run.epochs for f in run.lr_decay_at] if run.epochs else []
    if epochs and all(abs(e - round(e)) < 1e-9 for e in epochs):
        milestones += f" (epochs {','.join(str(round(e)) for e in epochs)})"
    length = f"epochs={run.epochs}" if run.epochs else f"iterations={run.iterations}"
    momentum = f" momentum={run.momentum:g}" if run.optimizer == "sgd" else ""
    size = f" input={run.input_size}" if run.input_size else ""
    stem = f" stem={run.stem}" if run.stem else ""
    return (f"{length} batch={run.batch_size} {run.optimizer} lr={run.lr:g}{momentum} wd={run.weight_decay:g} "
            f"milestones={milestones}{size}{stem}")
