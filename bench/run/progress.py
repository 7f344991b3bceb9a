"""What a run shows while it trains: a live bar per run on a terminal, one line per epoch in a log; and tables
printed whole in a log file."""

from __future__ import annotations

from rich.console import Console, RenderableType
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from bench.run.train import Run


class GridProgress:
    """A live bar per run (epoch, loss, errors, images/s, time left) under one console."""

    def __init__(self, console: Console, enabled: bool) -> None:
        # A live bar only on a terminal: a log file (Slurm) would get nothing until the end, so it gets the
        # one line per epoch that --no-progress prints.
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(),
            TextColumn("ep {task.fields[epoch]}/{task.fields[epochs]}"),
            TextColumn("loss {task.fields[loss]}"), TextColumn("train {task.fields[train]}"),
            TextColumn("test {task.fields[test]}"), TextColumn("{task.fields[speed]}"),
            TimeRemainingColumn(), console=console, disable=not (enabled and console.is_terminal),
            refresh_per_second=4,
        )
        self.task = None

    def start(self, run: Run) -> None:
        state = run.state
        last = state.rows[-1] if state.rows else None
        self.task = self.progress.add_task(
            f"{run.config.arch}-{run.config.depth} s{run.config.seed}", total=run.schedule.iterations,
            completed=state.iteration, epoch=state.epoch, epochs=run.schedule.epochs, loss="-", speed="",
            train=f"{last['train_error']:.1%}" if last else "-", test=f"{last['test_error']:.1%}" if last else "-",
        )

    def step(self, iteration: int, total: int, stats: dict) -> None:
        fields = {"loss": f"{stats['loss'].item():.3f}"} if iteration % 20 == 0 else {}
        self.progress.update(self.task, completed=iteration, **fields)

    def epoch(self, run: Run, row: dict) -> None:
        if self.progress.disable:  # logs without a live display still get one line per epoch
            self.progress.console.print(
                f"{row['run_id']} epoch {run.state.epoch}/{run.schedule.epochs}: loss {row['train_loss']:.3f} "
                f"train {row['train_error']:.2%} test {row['test_error']:.2%} (loss {row['test_loss']:.3f}) "
                f"{row['images_per_second']:.0f} img/s", highlight=False, soft_wrap=True)
        self.progress.update(self.task, epoch=run.state.epoch, loss=f"{row['train_loss']:.3f}",
                             train=f"{row['train_error']:.1%}", test=f"{row['test_error']:.1%}",
                             speed=f"{row['images_per_second']:.0f} img/s")


def print_whole(console: Console, renderable: RenderableType) -> None:
    """Print a table with every column whole: a terminal wraps it to its width, but a log file (not a
    terminal, where rich assumes 80 columns) would get its columns cut to a few letters."""
    if console.is_terminal:
        console.print(renderable)
        return
    width = console.measure(renderable, options=console.options.update_width(10_000)).maximum
    Console(file=console.file, width=max(width, console.width), quiet=console.quiet,
            color_system=None).print(renderable)
