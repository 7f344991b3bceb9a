"""`bench run --devices`: one worker process per GPU, each taking the grid's runs one at a time.

The workers share nothing but the results folder: each walks the whole plan and trains the runs that no
other holds (bench.results.store's run locks), so a run is trained once whichever worker gets to it first.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from rich.console import Console

from bench.core.config import GridConfig
from bench.core.errors import BenchError, Notify
from bench.core.interrupts import stop_like_ctrl_c
from bench.data.data import load_dataset
from bench.results import store
from bench.run.planner import Plan
from bench.run.summary import NOT_STARTED, RunSummary, print_summary, read_rows

# What a worker calls to train its device's share: bench.run.grid.run_grid, handed in so that this module does
# not import its caller.
TrainGrid = Callable[..., object]


def run_on_devices(grid: GridConfig, planned: Plan, console: Console, notify: Notify,
                   train_grid: TrainGrid) -> list[RunSummary]:
    """One worker process per device of `grid`, each calling `train_grid` on the plan for its device (the
    plan is the parent's: validated and its dataset resolved once, not again per worker); then the summary
    of every run."""
    console.print(f"{len(grid.devices)} workers, one per device: {', '.join(grid.devices)}")
    load_dataset(planned.source, progress=True, notify=notify)  # decode once; the workers read the cache
    try:
        torch.multiprocessing.spawn(_worker, args=(grid, planned, train_grid), nprocs=len(grid.devices))
    except torch.multiprocessing.ProcessError as error:  # raised in a worker, or a worker killed
        raise BenchError(f"a device worker failed: {str(error).strip().splitlines()[-1]}; "
                         "run the same command again to resume") from None
    summary = []
    for run in planned.runs:
        state = store.run_state(planned.directory(run))
        summary.append(RunSummary.of(run, state, read_rows(planned.directory(run), notify),
                                     note="" if state else NOT_STARTED))
    print_summary(console, summary)
    return summary


def _worker(index: int, grid: GridConfig, planned: Plan, train_grid: TrainGrid) -> None:
    # Several live bars from several processes would garble each other: workers print their summaries only.
    stop_like_ctrl_c()  # SIGTERM and SIGHUP stop like Ctrl-C: save, then exit
    # One thread each unless told otherwise: N workers with all cores each would fight over them.
    train_grid(dataclasses.replace(grid, devices=(grid.devices[index],), threads=grid.threads or 1),
               progress=False, resolved=planned)
