"""`bench run`: the plan's data loaded once, then each run that is not finished yet trained, one after another
(bench.run.workers spreads them over GPUs, bench.run.summary sums them up)."""

from __future__ import annotations

import gc
import re
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from rich.console import Console

from bench.run import distributed

from bench.core.allocator import keep_freed_memory
from bench.core.config import GridConfig, RunConfig, precision_notice, resolve_device, threads_notice
from bench.core.errors import BenchError, Notify, first_line, is_out_of_memory, out_of_memory_on
from bench.core.files import check_writable
from bench.core.modes import PRECISION_TEXT
from bench.core.records import RunStatus
from bench.data.data import load_dataset, take_subset
from bench.results import checkpoints, store
from bench.run.batches import Data, StreamedData, load_streamed
from bench.run.planner import Plan, loader_workers, plan, workers_text
from bench.run.progress import GridProgress
from bench.run.step import device_settings
from bench.run.summary import BUSY, EARLIER, OUT_OF_MEMORY, RunSummary, print_summary, read_rows
from bench.run.state import Schedule
from bench.run.train import past_deadline, rewrite_config, train_run
from bench.run.workers import run_on_devices


def run_grid(grid: GridConfig, *, console: Console | None = None, progress: bool = True,
             resolved: Plan | None = None) -> list[RunSummary]:
    """Train every run of the grid that is not finished; returns the summary of each run.

    Finished and diverged runs are skipped, unfinished ones resume from their checkpoints, and runs that
    another process is training right now are left to it. Ctrl-C propagates after the current run saved.
    Under torchrun every rank takes part in each run; with several `devices`, one worker process per
    device takes the runs one at a time.
    """
    console = console or Console()
    ranks = distributed.from_environment()
    # Notices (a fallback, cache trouble, a skipped run) go to stderr, one line each: stdout stays the
    # configuration, the epochs and the summary (and --dry-run's one line per run).
    notices = Console(stderr=True, soft_wrap=True, quiet=not ranks.is_main)
    notify: Notify = lambda message: notices.print(message, style="yellow", markup=False, highlight=False)
    planned = resolved or plan(grid)
    if not _ready(grid, planned, console, notices):
        return run_on_devices(grid, planned, console, notify, run_grid) if len(grid.devices) > 1 else []
    device = distributed.setup(ranks, resolve_device(grid.devices[0] if grid.devices else grid.base.device))
    console = console if ranks.is_main else Console(quiet=True)
    summary = []
    try:
        with device_settings(device):  # the current CUDA device, IEEE fp32, cudnn autotuning: as bench time
            data, schedules = _load_data(grid, planned, device, ranks, console, notices, progress, notify)
            # Every evaluation batch would otherwise fault its activations in afresh. Only once the data is loaded:
            # the kept heap is never trimmed, and the loading's large transients (decoding, a streamed set's pixel
            # mean) would strand in it what training never reuses (bench.core.allocator).
            keep_freed_memory()
            bars = GridProgress(console, progress and ranks.is_main)
            deadline = time.monotonic() + 60 * grid.time_limit if grid.time_limit else None
            with bars.progress:
                for config, schedule in zip(planned.runs, schedules):
                    directory = planned.directory(config)
                    rows, seconds = [], 0.0
                    with store.run_lock(directory) if ranks.is_main else nullcontext(True) as ours:
                        state, note = _found(config, schedule, directory, data, device, ranks, notify, ours)
                        if not note:
                            started = time.perf_counter()
                            try:
                                state = train_run(
                                    config, data, directory, device, notify=notify, ranks=ranks, on_start=bars.start,
                                    on_step=bars.step, on_epoch=bars.epoch, deadline=deadline, schedule=schedule)
                            except RuntimeError as error:
                                note = _out_of_memory(error, config, device, ranks, notify)
                                state = store.run_state(directory)  # 'interrupted' if it began training
                            seconds = time.perf_counter() - started
                        if note != BUSY:
                            rows = read_rows(directory, notify, repair=ranks.is_main and note == EARLIER)
                    summary.append(RunSummary.of(config, state, rows, seconds, note))
                    # The run's model, optimizer and batches, before the next run allocates its own. The cyclic
                    # collector is needed: make_graphed_callables leaves a --cuda-graph run's module in a
                    # reference cycle (its forward closes over the module), graphs and memory pools with it.
                    gc.collect()
                    if note == OUT_OF_MEMORY:
                        if device.type == "cuda":
                            torch.cuda.empty_cache()
                        store.remove_if_empty(directory)  # failed while building: nothing worth keeping
                    if past_deadline(deadline, ranks):
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


def _load_data(grid: GridConfig, planned: Plan, device: torch.device, ranks: distributed.Dist, console: Console,
               notices: Console, progress: bool, notify: Notify) -> tuple[Data, list[Schedule]]:
    """The plan's data, its runs' subset, on `device` (rank 0 decodes and caches it first, the other ranks
    then load the cache), or listed to be streamed from disk (rank 0 computes the pixel mean, the other ranks
    take it), said on the console; and each run's schedule on it."""
    if notice := precision_notice(planned.runs[0].precision, device):
        notices.print(notice, style="bold yellow", markup=False, highlight=False)
    base = planned.runs[0]
    if planned.stream:
        data = _streamed(grid, planned, ranks, notify)
        how = f"streamed from disk, {workers_text(data.workers)}, views at {data.info.image_size}"
    else:
        for turn in (True, False):
            if ranks.is_main == turn:
                data = load_dataset(planned.source, progress=progress and ranks.is_main, notify=notify)
            distributed.barrier(ranks)
        data = take_subset(data, base.train_subset, base.test_subset).to(device)  # type: ignore[arg-type]
        how = "in memory"
    console.print(f"data: {data.info.name} ({data.info.train_size} train / {data.info.test_size} test, "
                  f"{data.info.source}, {how}) on {device}" + (f" x {ranks.world_size} ranks" if ranks.enabled else "")
                  + f"; precision: {PRECISION_TEXT[planned.runs[0].precision]}", soft_wrap=True)
    if data.info.note:
        console.print(f"[yellow]note: {data.info.note}", soft_wrap=True)
    # The plan checked each batch against the count known before decoding (bench.data.data.train_size); this is the
    # count loaded or listed, which only a CIFAR pickle copy that is not the release has fewer of. Still before
    # any run folder is made: a batch that cannot fit leaves nothing behind.
    return data, [Schedule.of(config, data.info.train_size, ranks.world_size) for config in planned.runs]


def _streamed(grid: GridConfig, planned: Plan, ranks: distributed.Dist, notify: Notify) -> StreamedData:
    """The plan's ImageFolder listed for streaming; the pixel mean decoded once, by rank 0, and sent to the rest."""
    base = planned.runs[0]
    data = load_streamed(planned.source.path, planned.dataset, base.input_size, workers=loader_workers(grid),
                         train_subset=base.train_subset, test_subset=base.test_subset, notify=notify,
                         mean=ranks.is_main)  # every rank lists the folder, and refuses a bad one alike
    data.mean = distributed.broadcast(data.mean, ranks)
    return data


def _found(config: RunConfig, schedule: Schedule, directory: Path, data: Data, device: torch.device,
           ranks: distributed.Dist, notify: Notify, ours: bool) -> tuple[RunStatus | None, str]:
    """The state and summary note of a run not to train now (BUSY: another process holds it; EARLIER: it
    finished or diverged before), or its state and no note: train it. `ours`: whether this process holds the
    run's lock (under torchrun, rank 0 takes it for all)."""
    try:
        if ours:
            store.check_same_data(directory, data.info.fingerprint, data.info.source)
            store.record_data(directory, data.info.fingerprint, data.info.source, data.info.name)
        state, problem = (store.run_state(directory) if ours else None), None
    except BenchError as error:  # every rank must stop, not only the one that read the files
        state, problem = None, str(error)
    ours, state, problem = distributed.broadcast((ours, state, problem), ranks)
    if problem:
        raise BenchError(problem)
    if not ours:
        notify(f"{config.run_id()}: another bench process is training it; skipped")
        return None, BUSY
    if state not in (store.FINISHED, store.DIVERGED):
        return state, ""
    if ranks.is_main:  # tidy it: config.json back if it was deleted (else `bench report` would never see the
        if not (directory / store.CONFIG).exists():  # run again), and a finished run's previous checkpoint gone
            rewrite_config(config, data, directory, device, world_size=ranks.world_size, notify=notify,
                           schedule=schedule)
        if state == store.FINISHED:
            checkpoints.drop_previous_checkpoint(directory)
    return state, EARLIER


def _out_of_memory(error: RuntimeError, config: RunConfig, device: torch.device, ranks: distributed.Dist,
                   notify: Notify) -> str:
    """The note OUT_OF_MEMORY, said in one line, when `error` is a run running out of memory (the
    grid goes on with the next run); any other error, or any under torchrun (train_run has told the ranks
    apart), raised again."""
    if ranks.enabled or not is_out_of_memory(error):
        raise error
    # The CPU allocator's message begins with a C++ source location: keep what it asked for.
    reason = re.sub(r"^\[enforce fail[^\]]*\]\s*(err == 0\.\s*)?", "", first_line(error))
    where = out_of_memory_on(error, device)  # the model is built in host memory
    notify(f"{config.run_id()}: out of memory on {where} ({reason[:160]}): "
           "lower --width or --batch-size (or --train-subset, or use --precision bf16 on a GPU); "
           "going on with the next run")
    return OUT_OF_MEMORY
