"""`bench run`: expand a grid into runs, load the data once, train each run that is not finished yet."""

from __future__ import annotations

import dataclasses
import gc
import re
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from bench import distributed, store
from bench.allocator import keep_freed_memory
from bench.config import GridConfig, RunConfig, precision_notice, resolve_device, threads_notice, validate
from bench.data import DataSource, ImageData, load_dataset, resolve_dataset, take_subset
from bench.errors import BenchError, Notify, check_positive, first_line, is_out_of_memory, out_of_memory_on
from bench.files import check_writable
from bench.fitting import Fit, degradation_sentence, final_train_error, fit_pass, fit_text, median_pass
from bench.interrupts import stop_like_ctrl_c
from bench.modes import PRECISION_TEXT, default_channels_last
from bench.progress import GridProgress, print_whole
from bench.records import UNFINISHED
from bench.step import device_settings
from bench.train import Schedule, rewrite_config, train_run
from resnet import family_of

# Summary states of runs the grid did not train to an end of theirs.
BUSY = "busy (another process)"
OUT_OF_MEMORY = "out of memory"
DONE_EARLIER = (f"{store.FINISHED} (earlier)", f"{store.DIVERGED} (earlier)")


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a grid resolves to before anything is trained."""

    runs: list[RunConfig]
    source: DataSource  # resolved once here; the loading, and every --devices worker, take it as it is
    results: Path

    @property
    def dataset(self) -> str:
        return self.source.name

    @property
    def notice(self) -> str | None:
        return self.source.notice

    def directory(self, run: RunConfig) -> Path:
        return store.run_dir(self.results, self.dataset, run.run_id())


def plan(grid: GridConfig) -> Plan:
    """Validate every run, pin the dataset ('auto' becomes what will really be used) and each run's memory
    format (memory_format)."""
    runs = [validate(run) for run in grid.runs()]
    check_positive("--time-limit", grid.time_limit, detail=" of minutes", fix=": leave it out for no limit")
    check_positive("--threads", grid.threads, integer=True)
    source = resolve_dataset(grid.base.dataset, Path(grid.data_dir))
    results = Path(grid.results)
    # The device kind only: a GPU named but absent is refused later, where the device is set up.
    device_type = "cpu" if grid.base.device == "cpu" or not torch.cuda.is_available() else "cuda"
    runs = [dataclasses.replace(run, dataset=source.name) for run in runs]
    return Plan([memory_format(run, store.run_dir(results, source.name, run.run_id()), device_type)
                 for run in runs], source, results)


def memory_format(run: RunConfig, directory: Path, device_type: str) -> RunConfig:
    """`run` with its memory format settled where the command left it open: a run that has started keeps the
    one its config.json records, so a resume computes what an unbroken run would; a new run gets the one
    measured fastest on this machine (bench.modes.default_channels_last)."""
    if run.channels_last is not None:
        return run
    if (directory / store.CONFIG).exists():
        return dataclasses.replace(run, channels_last=bool(store.read_config(directory)["config"].get("channels_last")))
    return dataclasses.replace(run, channels_last=default_channels_last(device_type, run.precision,
                                                                        family_of(run.depth)))


def dry_run_lines(planned: Plan) -> list[str]:
    """One line per run of the grid, beginning with its run_id, and what state it is in now."""
    lines = []
    for run in planned.runs:
        directory = planned.directory(run)
        state = store.run_state(directory) if directory.exists() else None
        lines.append(f"{run.run_id()}  {run.arch:<8} depth={run.depth:<4} seed={run.seed}  "
                     f"{planned.dataset}  {state or 'new'}  -> {directory}")
    return lines


def summary_table(summary: list[dict]) -> Table:
    """The end-of-grid table: one line per run with its state, final errors and the pass at which it first
    fit its training set (bench.fitting)."""
    table = Table(title="bench run", show_lines=False)
    for column in ("run_id", "arch", "depth", "seed", "state", "epochs", "train err", "first fit", "test err",
                   "best test", "minutes"):
        table.add_column(column, justify="right" if column not in ("run_id", "arch", "state") else "left")
    for item in summary:
        rows = item["rows"]
        last = rows[-1] if rows else {}
        best = min((r["test_error"] for r in rows), default=float("nan"))
        fitted, first = _fit(rows)
        table.add_row(item["run_id"], item["arch"], str(item["depth"]), str(item["seed"]), item["state"],
                      str(len(rows)), f"{_final_train(rows):.2%}", fit_text(fitted, 1, first),
                      f"{last.get('test_error', float('nan')):.2%}", f"{best:.2%}",
                      f"{item['seconds'] / 60:.1f}")
    return table


def _final_train(rows: list[dict]) -> float:
    """A run's final training error (a fraction; bench.fitting.final_train_error) from its epoch rows."""
    return final_train_error([r["train_error"] for r in rows], [r["iteration"] for r in rows])


def _fit(rows: list[dict]) -> tuple[int, int | None]:
    """(1 if the run ended fitted else 0, the pass of its first fit) from its epoch rows."""
    at = fit_pass(r["train_error"] for r in rows)
    return int(at is not None), at


def print_summary(console: Console, summary: list[dict]) -> None:
    """The end-of-grid table, then the verdicts read at the floor."""
    print_whole(console, summary_table(summary))
    for line in verdict_lines(summary):
        console.print(line, soft_wrap=True, markup=False, highlight=False)


def verdict_lines(summary: list[dict]) -> list[str]:
    """Per arch with two depths or more, each net against the next shallower one in one sentence (18 against
    34, then 34 against 50), as `bench report` says it (bench.fitting)."""
    lines = []
    for arch in dict.fromkeys(item["arch"] for item in summary):
        of_arch = [item for item in summary if item["arch"] == arch and item["rows"]]
        depths = sorted({item["depth"] for item in of_arch})
        nets = []
        for depth in depths:
            runs = [item["rows"] for item in of_arch if item["depth"] == depth]
            fitted = [_fit(rows) for rows in runs]
            final = statistics.fmean(100 * _final_train(rows) for rows in runs)
            nets.append(Fit(arch, depth, final, len(runs), sum(f for f, _ in fitted),
                            median_pass(first for _, first in fitted)))
        provisional = any(str(item["state"]).split()[0] in UNFINISHED for item in of_arch)  # "finished (earlier)"
        for shallow, deep in zip(nets, nets[1:]):
            lines.append(degradation_sentence(shallow, deep, provisional=provisional))
    return lines


def run_grid(grid: GridConfig, *, console: Console | None = None, progress: bool = True,
             resolved: Plan | None = None) -> list[dict]:
    """Train every run of the grid that is not finished; returns one summary dict per run.

    Finished and diverged runs are skipped, unfinished ones resume from their checkpoints, and runs that
    another process is training right now are left to it. Ctrl-C propagates after the current run saved.
    Under torchrun every rank takes part in each run; with several `devices`, one worker process per
    device takes the runs one at a time.
    """
    console = console or Console()
    keep_freed_memory()  # every evaluation batch would otherwise fault its activations in afresh (bench.allocator)
    ranks = distributed.from_environment()
    # Notices (a fallback, cache trouble, a skipped run) go to stderr, one line each: stdout stays the
    # configuration, the epochs and the summary (and --dry-run's one line per run).
    notices = Console(stderr=True, soft_wrap=True, quiet=not ranks.is_main)
    notify: Notify = lambda message: notices.print(message, style="yellow", markup=False, highlight=False)
    planned = resolved or plan(grid)
    if not _ready(grid, planned, console, notices):
        return _run_on_devices(grid, planned, console, notify) if len(grid.devices) > 1 else []
    device = distributed.setup(ranks, resolve_device(grid.devices[0] if grid.devices else grid.base.device))
    console = console if ranks.is_main else Console(quiet=True)
    summary = []
    try:
        with device_settings(device):  # the current CUDA device, IEEE fp32, cudnn autotuning: as bench time
            data, schedules = _load_data(planned, device, ranks, console, notices, progress, notify)
            bars = GridProgress(console, progress and ranks.is_main)
            deadline = time.monotonic() + 60 * grid.time_limit if grid.time_limit else None
            with bars.progress:
                for config, schedule in zip(planned.runs, schedules):
                    directory = planned.directory(config)
                    item = {"run_id": config.run_id(), "arch": config.arch, "depth": config.depth,
                            "seed": config.seed, "rows": [], "seconds": 0.0}
                    with store.run_lock(directory) if ranks.is_main else nullcontext(True) as ours:
                        item["state"] = _found(config, schedule, directory, data, device, ranks, notify, ours)
                        if item["state"] is None:
                            started = time.perf_counter()
                            try:
                                item["state"] = train_run(
                                    config, data, directory, device, notify=notify, ranks=ranks, on_start=bars.start,
                                    on_step=bars.step, on_epoch=bars.epoch, deadline=deadline, schedule=schedule)
                            except RuntimeError as error:
                                item["state"] = _out_of_memory(error, config, device, ranks, notify)
                            item["seconds"] = time.perf_counter() - started
                        if item["state"] != BUSY:
                            repair = ranks.is_main and item["state"] in DONE_EARLIER
                            item["rows"] = _rows(directory, notify, repair=repair)
                    summary.append(item)
                    # The run's model, optimizer and batches, before the next run allocates its own. The cyclic
                    # collector is needed: make_graphed_callables leaves a --cuda-graph run's module in a
                    # reference cycle (its forward closes over the module), graphs and memory pools with it.
                    gc.collect()
                    if item["state"] == OUT_OF_MEMORY:
                        if device.type == "cuda":
                            torch.cuda.empty_cache()
                        store.remove_if_empty(directory)  # failed while building: nothing worth keeping
                    if deadline is not None and distributed.broadcast(time.monotonic() > deadline, ranks):
                        notify(f"--time-limit {grid.time_limit:g} min reached: progress is saved; run the same "
                               "command to continue")
                        break
            print_summary(console, summary)
    finally:
        distributed.teardown()
    return summary


def _ready(grid: GridConfig, planned: Plan, console: Console, notices: Console) -> bool:
    """Whether this process trains the plan's runs itself: the results folder checked writable, the dataset's
    notice said, the threads set; False when the runs go to --devices workers, or this shard has none."""
    check_writable(planned.results)
    folder = planned.results / store.dataset_folder(planned.dataset)
    if folder.exists():  # a file or read-only folder in the way fails now, not after the data is decoded
        check_writable(folder)
    if planned.notice:
        notices.print(planned.notice, style="bold yellow", markup=False, highlight=False)
    if len(grid.devices) > 1:
        return False
    if not planned.runs:
        console.print(f"shard {grid.shard[0]}/{grid.shard[1]} of this grid has no runs: nothing to do")
        return False
    if grid.threads is not None:
        torch.set_num_threads(grid.threads)  # once, before any data or model: config.json records it
        if notice := threads_notice(grid.threads):
            notices.print(notice, style="bold yellow", markup=False, highlight=False)
    return True


def _load_data(planned: Plan, device: torch.device, ranks: distributed.Dist, console: Console,
               notices: Console, progress: bool, notify: Notify) -> tuple[ImageData, list[Schedule]]:
    """The plan's data, its runs' subset, on `device` (rank 0 decodes and caches it first, the other ranks
    then load the cache), said on the console; and each run's schedule on it."""
    if notice := precision_notice(planned.runs[0].precision, device):
        notices.print(notice, style="bold yellow", markup=False, highlight=False)
    data = None
    for turn in (True, False):
        if ranks.is_main == turn:
            data = load_dataset(planned.source, progress=progress and ranks.is_main, notify=notify)
        distributed.barrier(ranks)
    base = planned.runs[0]
    data = take_subset(data, base.train_subset, base.test_subset).to(device)  # type: ignore[arg-type]
    console.print(f"data: {data.info.name} ({data.info.train_size} train / {data.info.test_size} test, "
                  f"{data.info.source}) on {device}" + (f" x {ranks.world_size} ranks" if ranks.enabled else "")
                  + f"; precision: {PRECISION_TEXT[planned.runs[0].precision]}", soft_wrap=True)
    if data.info.note:
        console.print(f"[yellow]note: {data.info.note}", soft_wrap=True)
    # Before any run folder is made: a batch that cannot fit leaves nothing behind.
    return data, [Schedule.of(config, len(data.train_images), ranks.world_size) for config in planned.runs]


def _found(config: RunConfig, schedule: Schedule, directory: Path, data: ImageData, device: torch.device,
           ranks: distributed.Dist, notify: Notify, ours: bool) -> str | None:
    """The summary state of a run not to train now (BUSY: another process holds it; or done earlier), or
    None. `ours`: whether this process holds the run's lock (under torchrun, rank 0 takes it for all)."""
    try:
        if ours:
            store.check_same_data(directory, data.info.fingerprint, data.info.source)
            store.record_data(directory, data.info.fingerprint, data.info.source, data.info.name)
        state, problem = (store.run_state(directory) if ours else "busy"), None
    except BenchError as error:  # every rank must stop, not only the one that read the files
        state, problem = None, str(error)
    state, problem = distributed.broadcast((state, problem), ranks)
    if problem:
        raise BenchError(problem)
    if state == "busy":
        notify(f"{config.run_id()}: another bench process is training it; skipped")
        return BUSY
    if state not in (store.FINISHED, store.DIVERGED):
        return None
    if ranks.is_main:  # tidy it: config.json back if it was deleted (else `bench report` would never see the
        if not (directory / store.CONFIG).exists():  # run again), and a finished run's previous checkpoint gone
            rewrite_config(config, data, directory, device, world_size=ranks.world_size, notify=notify,
                           schedule=schedule)
        if state == store.FINISHED:
            store.drop_previous_checkpoint(directory)
    return f"{state} (earlier)"


def _out_of_memory(error: RuntimeError, config: RunConfig, device: torch.device, ranks: distributed.Dist,
                   notify: Notify) -> str:
    """OUT_OF_MEMORY, said in one line, when `error` is a run running out of memory (the grid goes on with the
    next run); any other error, or any under torchrun (train_run has told the ranks apart), raised again."""
    if ranks.enabled or not is_out_of_memory(error):
        raise error
    # The CPU allocator's message begins with a C++ source location: keep what it asked for.
    reason = re.sub(r"^\[enforce fail[^\]]*\]\s*(err == 0\.\s*)?", "", first_line(error))
    where = out_of_memory_on(error, device)  # the model is built in host memory
    notify(f"{config.run_id()}: out of memory on {where} ({reason[:160]}): "
           "lower --width or --batch-size (or --train-subset, or use --precision bf16 on a GPU); "
           "going on with the next run")
    return OUT_OF_MEMORY


def _device_worker(index: int, grid: GridConfig, planned: Plan) -> None:
    # Several live bars from several processes would garble each other: workers print their summaries only.
    stop_like_ctrl_c()  # SIGTERM and SIGHUP stop like Ctrl-C: save, then exit
    # One thread each unless told otherwise: N workers with all cores each would fight over them. The plan is
    # the parent's: validated and its dataset resolved once, not again per worker.
    run_grid(dataclasses.replace(grid, devices=(grid.devices[index],), threads=grid.threads or 1), progress=False,
             resolved=planned)


def _run_on_devices(grid: GridConfig, planned: Plan, console: Console, notify: Notify) -> list[dict]:
    """One worker process per device; each walks the grid and takes the runs nobody holds (the run locks)."""
    console.print(f"{len(grid.devices)} workers, one per device: {', '.join(grid.devices)}")
    load_dataset(planned.source, progress=True, notify=notify)  # decode once; the workers read the cache
    try:
        torch.multiprocessing.spawn(_device_worker, args=(grid, planned), nprocs=len(grid.devices))
    except torch.multiprocessing.ProcessError as error:  # raised in a worker, or a worker killed
        raise BenchError(f"a device worker failed: {str(error).strip().splitlines()[-1]}; "
                         "run the same command again to resume") from None
    summary = [{"run_id": run.run_id(), "arch": run.arch, "depth": run.depth, "seed": run.seed,
                "state": store.run_state(planned.directory(run)) or "not started",
                "rows": _rows(planned.directory(run), notify), "seconds": 0.0} for run in planned.runs]
    print_summary(console, summary)
    return summary


def _rows(directory: Path, notify: Notify, *, repair: bool = False) -> list[dict]:
    """The run's epoch rows for the summary; a torn epochs.parquet is read from the checkpoint (and written
    again when `repair`), and an unreadable run costs a notice, never the rest of the grid."""
    try:
        return store.read_epochs(directory, notify, repair=repair).to_dict("records")
    except BenchError as error:
        notify(str(error))
        return []
