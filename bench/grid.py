"""`bench run`: expand a grid into runs, load the data once, train each run that is not finished yet."""

from __future__ import annotations

import dataclasses
import signal
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import pandas as pd
import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from bench import distributed, store
from bench.config import GridConfig, RunConfig, validate
from bench.data import load_dataset, resolve_dataset, take_subset
from bench.errors import BenchError
from bench.train import Run, resolve_device, train_run

Notify = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a grid resolves to before anything is trained."""

    runs: list[RunConfig]
    dataset: str
    data_path: Path | None
    notice: str | None
    results: Path

    def directory(self, run: RunConfig) -> Path:
        return store.run_dir(self.results, self.dataset, run.run_id())


def plan(grid: GridConfig) -> Plan:
    """Validate every run and pin the dataset ('auto' becomes what will really be used)."""
    runs = [validate(run) for run in grid.runs()]
    dataset, path, notice = resolve_dataset(grid.base.dataset, Path(grid.data_dir))
    return Plan([dataclasses.replace(run, dataset=dataset) for run in runs], dataset, path, notice,
                Path(grid.results))


def dry_run_lines(p: Plan) -> list[str]:
    """One line per run of the grid, beginning with its run_id, and what state it is in now."""
    lines = []
    for run in p.runs:
        directory = p.directory(run)
        state = store.run_state(directory) if directory.exists() else None
        lines.append(f"{run.run_id()}  {run.arch:<8} depth={run.depth:<4} seed={run.seed}  "
                     f"{p.dataset}  {state or 'new'}  -> {directory}")
    return lines


class GridProgress:
    """A live bar per run (epoch, loss, errors, images/s, time left) under one console."""

    def __init__(self, console: Console, enabled: bool) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(),
            TextColumn("ep {task.fields[epoch]}/{task.fields[epochs]}"),
            TextColumn("loss {task.fields[loss]}"), TextColumn("train {task.fields[train]}"),
            TextColumn("test {task.fields[test]}"), TextColumn("{task.fields[speed]}"),
            TimeRemainingColumn(), console=console, disable=not enabled, refresh_per_second=4,
        )
        self.task = None

    def start(self, run: Run) -> None:
        last = run.rows[-1] if run.rows else None
        self.task = self.progress.add_task(
            f"{run.config.arch}-{run.config.depth} s{run.config.seed}", total=run.total, completed=run.iteration,
            epoch=run.epoch, epochs=run.epochs_total, loss="-", speed="",
            train=f"{last['train_error']:.1%}" if last else "-", test=f"{last['test_error']:.1%}" if last else "-",
        )

    def step(self, iteration: int, total: int, stats: dict) -> None:
        fields = {"loss": f"{stats['loss'].item():.3f}"} if iteration % 20 == 0 else {}
        self.progress.update(self.task, completed=iteration, **fields)

    def epoch(self, run: Run, row: dict) -> None:
        if self.progress.disable:  # logs without a live display still get one line per epoch
            self.progress.console.print(
                f"{row['run_id']} epoch {run.epoch}/{run.epochs_total}: loss {row['train_loss']:.3f} "
                f"train {row['train_error']:.2%} test {row['test_error']:.2%} "
                f"{row['images_per_second']:.0f} img/s", highlight=False)
        self.progress.update(self.task, epoch=run.epoch, loss=f"{row['train_loss']:.3f}",
                             train=f"{row['train_error']:.1%}", test=f"{row['test_error']:.1%}",
                             speed=f"{row['images_per_second']:.0f} img/s")


def summary_table(summary: list[dict]) -> Table:
    """The end-of-grid table: one line per run with its state and final errors."""
    table = Table(title="bench run", show_lines=False)
    for column in ("run_id", "arch", "depth", "seed", "state", "epochs", "train err", "test err",
                   "best test", "minutes"):
        table.add_column(column, justify="right" if column not in ("run_id", "arch", "state") else "left")
    for item in summary:
        rows = item["rows"]
        last = rows[-1] if rows else {}
        best = min((r["test_error"] for r in rows), default=float("nan"))
        table.add_row(item["run_id"], item["arch"], str(item["depth"]), str(item["seed"]), item["state"],
                      str(len(rows)), f"{last.get('train_error', float('nan')):.2%}",
                      f"{last.get('test_error', float('nan')):.2%}", f"{best:.2%}",
                      f"{item['seconds'] / 60:.1f}")
    return table


def run_grid(grid: GridConfig, *, console: Console | None = None, progress: bool = True,
             resolved: Plan | None = None) -> list[dict]:
    """Train every run of the grid that is not finished; returns one summary dict per run.

    Finished and diverged runs are skipped, unfinished ones resume from their checkpoints, and runs that
    another process is training right now are left to it. Ctrl-C propagates after the current run saved.
    Under torchrun every rank takes part in each run; with several `devices`, one worker process per
    device takes the runs one at a time.
    """
    console = console or Console()
    p = resolved or plan(grid)
    store.check_writable(p.results)
    if p.notice:
        console.print(f"[bold yellow]{p.notice}")
    if len(grid.devices) > 1:
        return _run_on_devices(grid, p, console)
    if not p.runs:
        console.print(f"shard {grid.shard[0]}/{grid.shard[1]} of this grid has no runs: nothing to do")
        return []
    job = distributed.from_environment()
    device = distributed.setup(job, resolve_device(grid.devices[0] if grid.devices else grid.base.device))
    try:
        return _run_plan(p, device, job, console if job.is_main else Console(quiet=True), progress,
                         grid.time_limit)
    finally:
        distributed.teardown()


def _run_plan(p: Plan, device: torch.device, job: distributed.Dist, console: Console, progress: bool,
              time_limit: float | None) -> list[dict]:
    notify: Notify = lambda message: console.print(f"[yellow]{message}")
    base = p.runs[0]
    data = None
    for turn in (True, False):  # rank 0 decodes and caches the data first, the other ranks then load the cache
        if job.is_main == turn:
            data = load_dataset(p.dataset, p.data_path, progress=progress and job.is_main, notify=notify)
        distributed.barrier(job)
    data = take_subset(data, base.train_subset, base.test_subset).to(device)
    console.print(f"data: {data.info.name} ({data.info.train_size} train / {data.info.test_size} test, "
                  f"{data.info.source}) on {device}" + (f" x {job.world_size} ranks" if job.enabled else ""))
    if data.info.note:
        console.print(f"[yellow]note: {data.info.note}")
    bars = GridProgress(console, progress and job.is_main)
    deadline = time.monotonic() + 60 * time_limit if time_limit else None
    summary = []
    with bars.progress:
        for config in p.runs:
            directory = p.directory(config)
            item = {"run_id": config.run_id(), "arch": config.arch, "depth": config.depth, "seed": config.seed,
                    "rows": [], "seconds": 0.0}
            summary.append(item)
            with store.run_lock(directory) if job.is_main else nullcontext(True) as mine:
                state = store.run_state(directory) if mine else "busy"
                state = distributed.broadcast(state, job)
                if state == "busy":
                    item["state"] = "busy (another process)"
                    notify(f"{config.run_id()}: another bench process is training it; skipped")
                    continue
                if state in (store.FINISHED, store.DIVERGED):
                    item["state"] = f"{state} (earlier)"
                    item["rows"] = _rows(directory)
                    continue
                started = time.perf_counter()
                try:
                    item["state"] = train_run(config, data, directory, device, notify=notify, job=job,
                                              on_start=bars.start, on_step=bars.step, on_epoch=bars.epoch,
                                              deadline=deadline)
                finally:
                    item["seconds"] = time.perf_counter() - started
                    item["rows"] = _rows(directory)
            if deadline is not None and distributed.broadcast(time.monotonic() > deadline, job):  # ranks agree
                notify(f"--time-limit {time_limit:g} min reached: progress is saved; run the same command "
                       "to continue")
                break
    console.print(summary_table(summary))
    return summary


def _device_worker(index: int, grid: GridConfig) -> None:
    # Several live bars from several processes would garble each other: workers print their summaries only.
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop like Ctrl-C: save, then exit
    run_grid(dataclasses.replace(grid, devices=(grid.devices[index],)), progress=False)


def _run_on_devices(grid: GridConfig, p: Plan, console: Console) -> list[dict]:
    """One worker process per device; each walks the grid and takes the runs nobody holds (the run locks)."""
    console.print(f"{len(grid.devices)} workers, one per device: {', '.join(grid.devices)}")
    load_dataset(p.dataset, p.data_path, progress=True)  # decode or download once; the workers read the cache
    try:
        torch.multiprocessing.spawn(_device_worker, args=(grid,), nprocs=len(grid.devices))
    except torch.multiprocessing.ProcessException as error:  # raised in a worker, or a worker killed
        raise BenchError(f"a device worker failed: {str(error).strip().splitlines()[-1]}; "
                         "run the same command again to resume") from None
    summary = [{"run_id": run.run_id(), "arch": run.arch, "depth": run.depth, "seed": run.seed,
                "state": store.run_state(p.directory(run)) or "not started",
                "rows": _rows(p.directory(run)), "seconds": 0.0} for run in p.runs]
    console.print(summary_table(summary))
    return summary


def _rows(directory: Path) -> list[dict]:
    path = directory / store.EPOCHS
    return pd.read_parquet(path).to_dict("records") if path.exists() else []
