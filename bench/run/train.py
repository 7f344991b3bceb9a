"""The training loop of one run: the optimizer's steps by iteration, per-epoch train/test error, checkpoints that resume exactly.

What a checkpoint holds beside the weights is bench.run.state's (`RunState`, `Schedule`, the RNGs); what an
epoch measures beside training (test error, its row, Figure 7's responses) is bench.run.measures'.

    train_run        one run's life from start (or checkpoint) to end, and the one place its ending (finished,
                     diverged, interrupted by the deadline, a stop or an error) is written to status.json; where
                     a Ctrl-C, SIGTERM or SIGHUP during a run is acted on (bench.core.interrupts defers it to an
                     iteration boundary; cli.handles_errors turns it into the exit code)
    _train           the epochs, per epoch: train, evaluate, divergence check, save, status, deadline
    train_one_epoch  one epoch's SGD iterations (or the rest of a half-done one)
    Run              what the loop works on: data, model, optimizer, step, schedule, and RunState, the
                     part of it a checkpoint holds beside the weights (bench.run.state)
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from bench.core.config import RunConfig
from bench.core.errors import BenchError, Notify, first_line
from bench.core.interrupts import ForcedStop, StopFlag, deferred_interrupts, signals_held
from bench.core.provenance import environment, utc_now
from bench.core.records import RunStatus
from bench.data.streaming import worker_failure
from bench.results import checkpoints, chunks, parquet, store
from bench.run.batches import Data, MemoryBatches, StreamBatches, batch_source, loading
from bench.run.distributed import Dist, all_sum, broadcast, convert_sync_batchnorm
from bench.run.layers import gradient_rows
from bench.run.measures import EVAL_BATCH, epoch_row, evaluate, input_size, responses, scaled_batch, shortcut_option
from bench.run.state import EpochInProgress, RunState, Schedule, rng_state, seed_everything, set_rng_state
from bench.run.step import TrainStep, accelerate, make_optimizer, prepare_inputs
from resnet import build_model, count_parameters

__all__ = ["Ending", "Run", "describe", "learning_rate", "make_model", "make_net", "past_deadline",
           "rewrite_config", "train_one_epoch", "train_run"]

# Called after every iteration with (iteration, total, stats); stats holds the latest epoch row or running numbers.
OnStep = Callable[[int, int, dict], None]


def make_model(config: RunConfig, data: Data) -> nn.Module:
    """The run's network; ImageNet-layout nets get the CIFAR stem on small inputs unless told otherwise
    (RunConfig.stem_at)."""
    stem = config.stem_at(input_size(config, data))
    return build_model(config.depth, config.arch, shortcut=config.shortcut, stem=stem, width=config.width,
                       num_classes=data.info.num_classes)


def learning_rate(config: RunConfig, iteration: int, total: int, warming_up: bool) -> float:
    """The step schedule of section 4.2: divide by `lr_decay` at each fraction in `lr_decay_at` of the run."""
    if warming_up:
        return config.warmup_lr  # type: ignore[return-value]
    decays = sum(iteration >= round(fraction * total) for fraction in config.lr_decay_at)
    return config.lr * config.lr_decay**decays


def make_net(config: RunConfig, data: Data, device: torch.device, ranks: Dist,
             batches: MemoryBatches | StreamBatches) -> tuple[nn.Module, torch.optim.Optimizer, TrainStep]:
    """The run's network on its device in its memory format, its optimizer, and the step that trains it (under
    DDP with several ranks; eager, compiled or graphed for the shape of every step's batch)."""
    model = make_model(config, data)
    if config.sync_bn:
        model = convert_sync_batchnorm(model, device)
    model.to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, config.optimizer, config.lr, config.momentum, config.weight_decay)
    forward: nn.Module = model
    if ranks.enabled:
        forward = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    example = prepare_inputs(batches.example(config.batch_size // ranks.world_size), batches.mean, config)
    return model, optimizer, TrainStep(model, optimizer, config.precision,
                                       accelerate(forward, config.mode, example, config.precision))


@dataclass(frozen=True)
class Ending:
    """How a run's training ended, as its status.json records it: the state and what goes with it."""

    state: RunStatus
    fields: dict = field(default_factory=dict)


class Run:
    """What the training loop works on: the data, the model and its optimizer and step, the data generator,
    the schedule, and the state a checkpoint saves."""

    def __init__(self, config: RunConfig, data: Data, directory: Path, device: torch.device,
                 notify: Notify = print, ranks: Dist = Dist(), diagnostics: bool = True,
                 schedule: Schedule | None = None) -> None:
        self.config, self.data, self.directory, self.device, self.notify = config, data, directory, device, notify
        self.ranks = ranks
        # layers.parquet; off only to show that measuring changes nothing (tests/test_layers.py).
        self.diagnostics = diagnostics and ranks.is_main
        self.schedule = schedule or Schedule.of(config, data.info.train_size, ranks.world_size)
        seed_everything(config.seed)
        # Every rank draws the same permutation and augmentation from its generator and keeps its own slice,
        # so N processes see exactly the global batches that one process would. The generator lives on the
        # CPU whatever the device, so a checkpoint resumes on another device and data order never depends on it.
        self.generator = torch.Generator().manual_seed(config.seed)
        self.batches = batch_source(data, config, ranks, device, self.generator, notify)
        self.stop = StopFlag()
        self.model, self.optimizer, self.step = make_net(config, data, device, ranks, self.batches)
        self.state = RunState(warming_up=config.warmup_lr is not None)

    @property
    def finished(self) -> bool:
        return self.state.iteration >= self.schedule.iterations and self.state.partial is None

    # -- checkpoints and status ----------------------------------------------------------------------
    def resume(self) -> None:
        """Continue from the run folder's checkpoint, if it has one, and write config.json if it has none. A
        checkpoint that does not fit leaves the run 'interrupted' (a run killed with -9 says `running`: it is
        not, and will not be)."""
        try:
            checkpoint = checkpoints.load_checkpoint(self.directory, self.notify)
            if checkpoint is not None:
                self.restore(checkpoint)
        except BenchError as error:
            self.status(store.INTERRUPTED, counted=False, error=str(error))  # where it got to is not known
            raise
        if not self.ranks.is_main:
            return
        if checkpoint is not None:  # a crash between checkpoint and parquet may have left the parquet an epoch behind
            self.write_rows()
        if not (self.directory / store.CONFIG).exists():
            store.write_json(self.directory / store.CONFIG, describe(self.config, self.data, self.model, self.schedule,
                                                                     self.device, self.ranks.world_size))
        if not self.finished:
            chunks.record_start(self.directory, chunks.starting(self.state.epoch, self.state.iteration, self.device))

    def status(self, state: RunStatus, *, counted: bool = True, **fields: object) -> None:
        """status.json (through store.write_status, its one writer): the run's state and, when `counted`, its
        epoch and epochs in all; only rank 0 writes. Every status this run records goes through here."""
        if self.ranks.is_main:
            counts = {"epoch": self.state.epoch, "epochs_total": self.schedule.epochs} if counted else {}
            store.write_status(self.directory, state, **counts, **fields)

    def checkpoint(self) -> dict:
        """Everything needed to continue exactly where this run is."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "rng": rng_state(self.generator, self.device), "config": self.config.to_dict(),
                **self.batches.state(), **self.state.to_checkpoint()}

    def restore(self, checkpoint: dict) -> None:
        """Continue from a checkpoint made by `checkpoint()`."""
        if RunConfig.from_dict(checkpoint.get("config", {})).identity() != self.config.identity():
            raise BenchError(f"checkpoint in {self.directory} belongs to a different configuration: "
                             "delete that folder to restart the run")
        try:  # weights of another net, an unknown half-epoch key: torch and dataclasses raise these
            self.model.load_state_dict(checkpoint["model"])
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            set_rng_state(checkpoint["rng"], self.generator, self.device)
            self.batches.restore(checkpoint)
            self.state = RunState.from_checkpoint(checkpoint)
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            reason = first_line(error, 160)
            raise BenchError(f"checkpoint in {self.directory} does not fit this run ({reason}): delete "
                             f"{self.directory} to restart the run from scratch") from None

    def save(self) -> None:
        """Checkpoint first, then the parquet, so the rows on disk never run ahead of the checkpoint."""
        if not self.ranks.is_main:
            return
        checkpoints.save_checkpoint(self.directory, self.checkpoint())
        self.write_rows()

    def write_rows(self) -> None:
        """epochs.parquet and layers.parquet from the rows in memory."""
        parquet.write_epochs(self.directory / store.EPOCHS, self.state.rows)
        parquet.write_layers(self.directory / store.LAYERS, self.state.layer_rows)

    # -- what the loop calls beside training -------------------------------------------------------
    def evaluate(self, epoch: EpochInProgress, lr: float) -> dict:
        """End the epoch just trained: test error over the whole test split, the layer diagnostics, its
        EpochRow dict (appended to the state's rows and returned)."""
        config, data, ranks, state = self.config, self.data, self.ranks, self.state
        started = time.perf_counter()
        loss_total, wrong_total = (all_sum(value, ranks) for value in epoch.sums(self.device))
        seen = int(all_sum(torch.tensor(epoch.seen, device=self.device), ranks).item())
        test = evaluate(self.model, self.batches.test(scaled_batch(EVAL_BATCH, config, data)), self.batches.mean,
                        config, ranks)
        seconds = epoch.seconds + time.perf_counter() - started
        state.epoch += 1
        if self.diagnostics:  # outside the epoch's seconds: a diagnostic, not part of the training it times
            state.layer_rows += responses(config, data, self.model, self.batches, state)
        state.partial = None
        state.rows.append(epoch_row(config, data, self.model, self.device, state, epoch, lr,
                                    (loss_total, wrong_total, seen), test, seconds))
        return state.rows[-1]

    def diverged(self, row: dict) -> Ending:
        """A run whose loss went NaN or infinite: the rows up to that epoch written, its ending 'diverged'."""
        if self.ranks.is_main:
            self.write_rows()
        self.notify(f"{self.config.run_id()}: loss is {row['train_loss']} at epoch {self.state.epoch}: marked diverged")
        return Ending(store.DIVERGED, {"diverged_epoch": self.state.epoch})

    def stopped(self, stop: KeyboardInterrupt) -> None:
        """Record the run stopped by Ctrl-C or SIGTERM as 'interrupted'. A first stop comes between iterations:
        the half-done epoch is saved, so the same command resumes it exactly. A second one (ForcedStop) may
        land anywhere, mid-step or mid-save: nothing is saved and the last whole checkpoint stays. Under
        torchrun the ranks may have stopped at different iterations: nothing is saved either. The status comes
        first, so a second stop that cuts the save short leaves the run 'interrupted' too."""
        with signals_held():  # so that a further stop cannot cut this write short
            self.status(store.INTERRUPTED, iteration=self.state.iteration)
        if self.ranks.enabled or isinstance(stop, ForcedStop):
            return
        try:
            self.save()
        except Exception as error:  # a full disk: recorded as any failure is
            self.failed(error)
            raise

    def failed(self, error: Exception) -> BenchError | None:
        """Record the run 'interrupted' by `error`; returns the BenchError to raise instead when `error` is
        DDP's on losing another rank, or when a loader worker's death is raised while the status is written."""
        lost = None
        if self.ranks.enabled and isinstance(error, RuntimeError):  # another rank died: the collectives fail
            lost = BenchError(f"rank {self.ranks.rank}: lost the other ranks ({first_line(error, 200)}); "
                              "run the same command again to resume from the last finished epoch")
        for _ in range(2):
            try:  # on a full disk this small file may not fit either; the error raised says what to do
                self.status(store.INTERRUPTED, iteration=self.state.iteration, error=first_line(lost or error, 200))
                break
            except (BenchError, OSError):
                break
            except RuntimeError as late:  # torch's SIGCHLD handler: a loader worker's death, raised mid-write
                if (lost := lost or worker_failure(late)) is None:
                    raise
        return lost


def train_one_epoch(run: Run, on_step: OnStep | None = None) -> tuple[EpochInProgress, float]:
    """Train one epoch (or the rest of a half-done one) one SGD iteration at a time; returns it, with its sums,
    and the last learning rate. A stop (run.stop) is acted on only between iterations, as a KeyboardInterrupt
    that leaves the half-done epoch in `run.state.partial` with its sums, so a checkpoint of it resumes exactly."""
    config, ranks, state, total = run.config, run.ranks, run.state, run.schedule.iterations
    if state.partial is None:  # drawn at the epoch's start and checkpointed with it: a resume trains the same
        state.partial = EpochInProgress(run.batches.draw(total - state.iteration))
    epoch = state.partial
    batches = run.batches.train(epoch.batches, epoch.done, state.epoch)
    loss_sum, wrong = epoch.sums(run.device)
    started = time.perf_counter()
    lr = learning_rate(config, state.iteration, total, state.warming_up)
    run.model.train()
    try:
        for index in range(epoch.done, len(epoch.batches)):
            if run.stop.requested:  # a Ctrl-C or SIGTERM, acted on only here, between iterations
                raise KeyboardInterrupt
            lr = learning_rate(config, state.iteration, total, state.warming_up)
            for group in run.optimizer.param_groups:
                group["lr"] = lr
            images, y = next(batches)  # after the stop check: a batch is drawn only to be trained
            x = prepare_inputs(images, run.batches.mean, config)
            loss, logits = run.step.forward_backward(x, y)
            # Between backward and the update: the gradients as they reach every layer (layers.parquet), at the
            # first step and each epoch's last.
            if run.diagnostics and (state.iteration == 0 or index == len(epoch.batches) - 1):
                state.layer_rows += gradient_rows(config.run_id(), state.epoch, state.iteration + 1, run.model)
            run.step.update()
            batch_wrong = (logits.argmax(1) != y).sum()
            loss_sum += loss.detach().double() * len(y)
            wrong += batch_wrong
            state.iteration += 1
            epoch.done, epoch.seen = index + 1, epoch.seen + len(y)
            if state.warming_up:  # the paper's 110-layer rule needs the error now, so sync here only
                state.end_warmup_if_learning(all_sum(batch_wrong, ranks).item() / config.batch_size, config,
                                             run.notify)
            if on_step is not None:
                on_step(state.iteration, total, {"loss": loss, "lr": lr})
    finally:  # on a stop too: the checkpoint of a half-done epoch holds its sums
        batches.close()  # a stream's loader workers end here
        epoch.loss_sum, epoch.wrong = loss_sum.item(), int(wrong.item())
        epoch.seconds += time.perf_counter() - started
    return epoch, lr


def describe(config: RunConfig, data: Data, model: nn.Module, schedule: Schedule, device: torch.device,
             world_size: int = 1) -> dict:
    """The config.json of a run: the config, what the data and model resolved to, and the environment."""
    return {
        "run_id": config.run_id(),
        "config": config.to_dict(),
        "dataset": dataclasses.asdict(data.info),
        "loading": loading(data, config),
        "model": {"family": model.family, "width": model.width,
                  "shortcut": shortcut_option(config, model.family),
                  "has_shortcuts": model.shortcut is not None, "stem": model.stem,
                  "params": count_parameters(model)},
        "schedule": {"iterations": schedule.iterations, "iterations_per_epoch": schedule.iterations_per_epoch,
                     "epochs": schedule.epochs},
        "environment": environment(device),
        "distributed": {"world_size": world_size, "batch_per_rank": config.batch_size // world_size},
        "started_at": utc_now(),
    }


def rewrite_config(config: RunConfig, data: Data, directory: Path, device: torch.device, *,
                   world_size: int = 1, notify: Notify = print, schedule: Schedule | None = None) -> None:
    """Write config.json again for a run folder that lost it (deleted by hand, as an error told), so
    `bench report` finds the run again. It describes this machine and has no start time: both are lost."""
    with torch.device("meta"):  # the net's shape and parameter count, without its weights or a compile
        model = make_model(config, data)
    schedule = schedule or Schedule.of(config, data.info.train_size, world_size)
    description = describe(config, data, model, schedule, device, world_size)
    description.update(started_at=None, rewritten_at=utc_now())
    store.write_json(directory / store.CONFIG, description)
    notify(f"{config.run_id()}: {store.CONFIG} was missing; rewrote it (environment of this machine, no start "
           "time)")


def train_run(config: RunConfig, data: Data, directory: Path, device: torch.device, *,
              notify: Notify = print, ranks: Dist = Dist(), on_epoch: Callable[[Run, dict], None] | None = None,
              on_step: OnStep | None = None, on_start: Callable[[Run], None] | None = None,
              deadline: float | None = None, diagnostics: bool = True, schedule: Schedule | None = None) -> RunStatus:
    """Train (or resume) one run in `directory` to its end; returns its final state.

    `deadline` (a time.monotonic() value) stops the run cleanly after the first epoch that ends past it,
    as 'interrupted', so a long job can run in chunks on machines lent for a fixed time. `diagnostics`
    records layers.parquet (bench.run.layers). `schedule` is the run's, when the caller has worked it out already.

    Finished epochs are on disk after each epoch. Ctrl-C saves the half-done epoch too and re-raises, so the
    same command resumes where it stopped. A NaN or infinite loss ends the run as 'diverged'. With several
    ranks, all of them resume from rank 0's checkpoint and only rank 0 writes.
    """
    run = Run(config, data, directory, device, notify, ranks, diagnostics, schedule)
    run.resume()
    if on_start is not None:
        on_start(run)
    with deferred_interrupts(run.stop):  # a stop after the last iteration: the run ends whole, then it is raised
        try:
            ending = _train(run, on_step, on_epoch, deadline)
            run.status(ending.state, **ending.fields)
            if ending.state == store.FINISHED and ranks.is_main:
                checkpoints.drop_previous_checkpoint(directory)
            return ending.state
        except KeyboardInterrupt as stop:  # where a stop during a run is acted on (cli catches one outside a run)
            run.stopped(stop)
            raise
        except Exception as error:  # a full disk, out of memory, a lost rank or loader worker: the run is not
            if lost := run.failed(error) or worker_failure(error):  # running any more
                raise lost from None
            raise


def _train(run: Run, on_step: OnStep | None, on_epoch: Callable[[Run, dict], None] | None,
           deadline: float | None) -> Ending:
    """Epochs until the run ends: finished, diverged, or stopped by the deadline; 'running' recorded as it goes."""
    run.status(store.RUNNING)
    while not run.finished:
        epoch, lr = train_one_epoch(run, on_step)
        row = run.evaluate(epoch, lr)
        if not math.isfinite(row["train_loss"]) or not math.isfinite(row["test_loss"]):
            return run.diverged(row)
        run.save()
        run.status(store.RUNNING)
        if on_epoch is not None:
            on_epoch(run, row)
        if not run.finished and past_deadline(deadline, run.ranks):
            return Ending(store.INTERRUPTED, {"iteration": run.state.iteration})
    return Ending(store.FINISHED)


def past_deadline(deadline: float | None, ranks: Dist) -> bool:
    """Whether `deadline` (a time.monotonic() value; None: no limit) has passed, as rank 0 sees it, so that all
    ranks stop together: the one check of --time-limit, after each epoch here and after each run in the grid."""
    return deadline is not None and broadcast(time.monotonic() > deadline, ranks)
