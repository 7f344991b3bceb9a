"""`bench run`'s plan: every run of a grid validated and the dataset resolved, before anything is trained."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from bench import store
from bench.config import GridConfig, RunConfig, validate
from bench.data import DataSource, resolve_dataset
from bench.errors import check_positive


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
    """Validate every run and pin the dataset ('auto' becomes what will really be used)."""
    runs = [validate(run) for run in grid.runs()]
    check_positive("--time-limit", grid.time_limit, detail=" of minutes", fix=": leave it out for no limit")
    check_positive("--threads", grid.threads, integer=True)
    source = resolve_dataset(grid.base.dataset, Path(grid.data_dir))
    return Plan([dataclasses.replace(run, dataset=source.name) for run in runs], source, Path(grid.results))


def dry_run_lines(planned: Plan) -> list[str]:
    """One line per run of the grid, beginning with its run_id, and what state it is in now."""
    lines = []
    for run in planned.runs:
        directory = planned.directory(run)
        state = store.run_state(directory) if directory.exists() else None
        lines.append(f"{run.run_id()}  {run.arch:<8} depth={run.depth:<4} seed={run.seed}  "
                     f"{planned.dataset}  {state or 'new'}  -> {directory}")
    return lines
