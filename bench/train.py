"""The training loop of one run: SGD by iteration, per-epoch train/test error, checkpoints that resume exactly.

Training error is the error on the (augmented) training mini-batches of each epoch, as the paper plots it;
test error is measured on the whole test split after every epoch, in eval mode.

    train_epochs   the loop itself, top to bottom: batches, iterations, evaluation, one row per epoch
    Run            what the loop works on: data, model, optimizer, step, schedule, and RunState, the
                   part of it a checkpoint holds beside the weights
    train_run      one run from start (or checkpoint) to end: status, checkpoints, Ctrl-C, divergence
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench import store
from bench.config import RunConfig
from bench.data import ImageData
from bench.distributed import Dist, all_sum, broadcast, convert_sync_batchnorm
from bench.errors import BenchError, Notify, first_line
from bench.interrupts import ForcedStop, StopFlag, deferred_interrupts, signals_held
from bench.layers import gradient_rows, response_probe, response_rows
from bench.loader import augment, epoch_batches
from bench.provenance import environment, utc_now
from bench.records import EpochRow
from bench.modes import mode_of
from bench.step import TrainStep, accelerate, at_least_fp32, network_inputs, predict, sgd
from resnet import FAMILY_DEFAULTS, build_model, count_parameters, family_of

__all__ = ["ForcedStop", "Run", "RunState", "Schedule", "check_batch", "describe", "evaluate", "learning_rate",
           "make_model", "prepare_inputs", "rewrite_config", "train_epochs", "train_run"]

# Called after every iteration with (iteration, total, stats); stats holds the latest epoch row or running numbers.
OnStep = Callable[[int, int, dict], None]

WARMUP_WINDOW = 50  # iterations averaged to decide that training error is below warmup_until_error


def make_model(config: RunConfig, data: ImageData) -> nn.Module:
    """The run's network; ImageNet-layout nets get the CIFAR stem on small images unless told otherwise."""
    stem = config.stem
    if stem is None and family_of(config.depth) == "imagenet" and data.info.image_size < 128:
        stem = "cifar"
    return build_model(config.depth, config.arch, shortcut=config.shortcut, stem=stem, width=config.width,
                       num_classes=data.info.num_classes)


def shortcut_option(config: RunConfig, family: str) -> str:
    """The shortcut option of the residual twin: a plain net has none, but belongs with that twin."""
    return config.shortcut or FAMILY_DEFAULTS[family]["shortcut"]


def learning_rate(config: RunConfig, iteration: int, total: int, warming_up: bool) -> float:
    """The step schedule of section 4.2: divide by `lr_decay` at each fraction in `lr_decay_at` of the run."""
    if warming_up:
        return config.warmup_lr  # type: ignore[return-value]
    decays = sum(iteration >= round(fraction * total) for fraction in config.lr_decay_at)
    return config.lr * config.lr_decay**decays


def _rng_state(generator: torch.Generator, device: torch.device) -> dict:
    numpy_state = np.random.get_state()
    return {
        "python": random.getstate(),
        # As a tensor and plain numbers, so the checkpoint loads with weights_only=True.
        "numpy": (numpy_state[0], torch.from_numpy(numpy_state[1].copy()), *numpy_state[2:]),
        "torch": torch.get_rng_state(),
        # The run's GPU's, not the current one's.
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" and torch.cuda.is_initialized() else None,
        "data": generator.get_state(),
    }


def _set_rng_state(state: dict, generator: torch.Generator, device: torch.device) -> None:
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and device.type == "cuda":  # a CPU checkpoint resumed on a GPU has none
        torch.cuda.set_rng_state(state["cuda"], device)
    generator.set_state(state["data"])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, mean: torch.Tensor,
             config: RunConfig, job: Dist = Dist(), batch_size: int = 1000) -> tuple[float, float]:
    """(mean loss, error fraction) of `model` in eval mode over the whole of `images`.

    With several ranks, each evaluates its contiguous share of the images and the sums are added up.
    """
    total = len(images)
    share = -(-total // job.world_size)
    mine = slice(job.rank * share, (job.rank + 1) * share)
    images, labels = images[mine], labels[mine]
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=images.device)
    wrong = torch.zeros((), dtype=torch.int64, device=images.device)
    for start in range(0, len(images), batch_size):
        x = prepare_inputs(images[start:start + batch_size], mean, config)
        y = labels[start:start + batch_size]
        logits = predict(model, x, config.precision)
        loss_sum += F.cross_entropy(at_least_fp32(logits), y, reduction="sum")
        wrong += (logits.argmax(1) != y).sum()
    model.train()
    loss_sum, wrong = all_sum(loss_sum, job), all_sum(wrong, job)
    return loss_sum.item() / total, wrong.item() / total


def prepare_inputs(images: torch.Tensor, mean: torch.Tensor, config: RunConfig) -> torch.Tensor:
    """uint8 images -> the network's input for this run (bench.step.network_inputs)."""
    return network_inputs(images, mean, config.channels_last)


def check_batch(config: RunConfig, train_images: int, world_size: int = 1) -> None:
    """The global batch must divide over the processes and fit at least once into the training images."""
    if config.batch_size % world_size:
        raise BenchError(f"--batch-size {config.batch_size} (the global batch) must divide evenly over "
                         f"{world_size} processes")
    if train_images // config.batch_size == 0:
        raise BenchError(f"--batch-size {config.batch_size} is larger than the {train_images} training images: "
                         "use a smaller batch")


@dataclass(frozen=True)
class Schedule:
    """How long a run trains, in iterations and in epochs (the last one may be short)."""

    iterations: int
    iterations_per_epoch: int
    epochs: int

    @classmethod
    def of(cls, config: RunConfig, train_images: int, world_size: int = 1) -> Schedule:
        """The schedule of `config` on `train_images` images over `world_size` processes; a batch that does
        not fit is a BenchError (check_batch). `bench run` works out every run's before any run folder is
        created and hands each to its run."""
        check_batch(config, train_images, world_size)
        per_epoch = train_images // config.batch_size
        total = config.iterations or config.epochs * per_epoch  # type: ignore[operator]
        return cls(total, per_epoch, math.ceil(total / per_epoch))


@dataclass
class HalfEpoch:
    """The epoch in progress: its batches, drawn at its start, and the sums so far. A Ctrl-C mid-epoch
    checkpoints it, so the resume trains the same batches and the epoch's row counts every image once."""

    batches: torch.Tensor  # [iterations, global batch] image indices, on the CPU
    done: int = 0  # batches trained
    loss_sum: float = 0.0  # training loss summed over the images seen
    wrong: int = 0  # training images misclassified
    seen: int = 0
    seconds: float = 0.0  # training time so far

    def state(self) -> dict:
        """Plain fields for the checkpoint (which loads with weights_only=True: no classes of ours)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def sums(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss_sum, wrong) as tensors on `device`, to add to without a sync per iteration."""
        return (torch.tensor(self.loss_sum, dtype=torch.float64, device=device),
                torch.tensor(self.wrong, dtype=torch.int64, device=device))


@dataclass
class RunState:
    """Where a run stands and what it recorded: what its checkpoint holds beside the weights, the optimizer's
    state and the RNGs. The checkpoint keeps these fields under these names (older checkpoints resume)."""

    epoch: int = 0
    iteration: int = 0
    rows: list[dict] = field(default_factory=list)  # EpochRow dicts
    # bench.layers.LayerRow dicts, in the checkpoint like the epoch rows so a resume has no gaps (a few
    # hundred per epoch: small beside the weights even for the paper's 164-epoch 110-layer run).
    layer_rows: list[dict] = field(default_factory=list)
    warming_up: bool = False
    recent_errors: deque[float] = field(default_factory=lambda: deque(maxlen=WARMUP_WINDOW))
    partial: HalfEpoch | None = None  # the epoch in progress

    def to_checkpoint(self) -> dict:
        """Plain types only: the checkpoint loads with weights_only=True."""
        return {"epoch": self.epoch, "iteration": self.iteration, "rows": self.rows, "layer_rows": self.layer_rows,
                "warming_up": self.warming_up, "recent_errors": list(self.recent_errors),
                "partial": None if self.partial is None else self.partial.state()}

    @classmethod
    def from_checkpoint(cls, state: dict) -> RunState:
        """The inverse of `to_checkpoint`; a missing key or a foreign half-epoch raises KeyError or TypeError."""
        return cls(epoch=state["epoch"], iteration=state["iteration"], rows=list(state["rows"]),
                   layer_rows=list(state.get("layer_rows", [])),  # checkpoints from before layers.parquet have none
                   warming_up=state["warming_up"],
                   recent_errors=deque(state["recent_errors"], maxlen=WARMUP_WINDOW),
                   partial=None if state["partial"] is None else HalfEpoch(**state["partial"]))


class Run:
    """What the training loop works on: the data, the model and its optimizer and step, the data generator,
    the schedule, and the state a checkpoint saves."""

    def __init__(self, config: RunConfig, data: ImageData, directory: Path, device: torch.device,
                 notify: Notify = print, job: Dist = Dist(), diagnostics: bool = True,
                 schedule: Schedule | None = None) -> None:
        self.config, self.data, self.directory, self.device, self.notify = config, data, directory, device, notify
        self.job = job
        # layers.parquet; off only to show that measuring changes nothing (tests/test_layers.py).
        self.diagnostics = diagnostics and job.is_main
        self.schedule = schedule or Schedule.of(config, len(data.train_images), job.world_size)
        _seed_everything(config.seed)
        # Every rank draws the same permutation and augmentation from its generator and keeps its own slice,
        # so N processes see exactly the global batches that one process would. The generator lives on the
        # CPU whatever the device, so a checkpoint resumes on another device and data order never depends on it.
        self.generator = torch.Generator().manual_seed(config.seed)
        self.stop = StopFlag()
        self.model = make_model(config, data)
        if config.sync_bn:
            self.model = convert_sync_batchnorm(self.model, device)
        self.model.to(device)
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = sgd(self.model, config.lr, config.momentum, config.weight_decay)
        self.shortcut_option = shortcut_option(config, self.model.family)
        mode = mode_of(config.compile, config.cuda_graph)
        if mode == "cuda-graph" and job.enabled:
            raise BenchError("--cuda-graph runs one process per run: leave out torchrun (--devices spreads "
                             "runs over GPUs instead)")
        forward: nn.Module = self.model
        if job.enabled:
            forward = nn.parallel.DistributedDataParallel(self.model,
                                                          device_ids=[device] if device.type == "cuda" else None)
        per_rank = config.batch_size // job.world_size
        example = prepare_inputs(data.train_images[:per_rank], data.mean, config)  # the shape every step has
        self.step = TrainStep(self.model, self.optimizer, config.precision,
                              accelerate(forward, mode, example, config.precision))
        self.state = RunState(warming_up=config.warmup_lr is not None)

    @property
    def finished(self) -> bool:
        return self.state.iteration >= self.schedule.iterations and self.state.partial is None

    @property
    def warming_up(self) -> bool:
        """Whether the run still trains at warmup_lr (the paper's 110-layer rule)."""
        return self.state.warming_up

    def train_epoch(self, on_step: OnStep | None = None) -> dict:
        """Train one epoch (or what is left of it, after a Ctrl-C) and evaluate; returns its EpochRow dict."""
        return next(train_epochs(self, on_step))

    # -- checkpoints -------------------------------------------------------------------------------
    def checkpoint(self) -> dict:
        """Everything needed to continue exactly where this run is."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "rng": _rng_state(self.generator, self.device), "config": self.config.to_dict(),
                **self.state.to_checkpoint()}

    def restore(self, checkpoint: dict) -> None:
        """Continue from a checkpoint made by `checkpoint()`."""
        if RunConfig.from_dict(checkpoint.get("config", {})).identity() != self.config.identity():
            raise BenchError(f"checkpoint in {self.directory} belongs to a different configuration: "
                             "delete that folder to restart the run")
        try:  # weights of another net, an unknown half-epoch key: torch and dataclasses raise these
            self.model.load_state_dict(checkpoint["model"])
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            _set_rng_state(checkpoint["rng"], self.generator, self.device)
            self.state = RunState.from_checkpoint(checkpoint)
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            reason = first_line(error, 160)
            raise BenchError(f"checkpoint in {self.directory} does not fit this run ({reason}): delete "
                             f"{self.directory} to restart the run from scratch") from None

    def save(self) -> None:
        """Checkpoint first, then the parquet, so the rows on disk never run ahead of the checkpoint."""
        if not self.job.is_main:
            return
        store.save_checkpoint(self.directory, self.checkpoint())
        self.write_rows()

    def write_rows(self) -> None:
        """epochs.parquet and layers.parquet from the rows in memory."""
        store.write_epochs(self.directory / store.EPOCHS, self.state.rows)
        store.write_layers(self.directory / store.LAYERS, self.state.layer_rows)

    # -- what the loop calls beside training -------------------------------------------------------
    def record_gradients(self, last_of_epoch: bool) -> None:
        """Diagnostics at the first step and each epoch's last: gradients as they reach every layer, read
        between backward and the update."""
        state = self.state
        if self.diagnostics and (state.iteration == 0 or last_of_epoch):
            state.layer_rows += gradient_rows(self.config.run_id(), state.epoch, state.iteration + 1, self.model)

    def record_responses(self) -> None:
        """Diagnostics after each epoch: every layer's response on the fixed probe images (Figure 7)."""
        config, data = self.config, self.data
        if self.diagnostics:
            self.state.layer_rows += response_rows(config.run_id(), self.state.epoch, self.state.iteration,
                                                   self.model, response_probe(data.test_images),
                                                   lambda images: prepare_inputs(images, data.mean, config))

    def end_warmup_if_learning(self, batch_error: float) -> None:
        """The paper's 110-layer rule: back to lr once training error averaged over WARMUP_WINDOW iterations
        is below warmup_until_error."""
        config, state = self.config, self.state
        state.recent_errors.append(batch_error)
        if len(state.recent_errors) == WARMUP_WINDOW and np.mean(state.recent_errors) < config.warmup_until_error:
            state.warming_up = False
            self.notify(f"{config.run_id()}: training error below {config.warmup_until_error:.0%} "
                        f"at iteration {state.iteration}; lr {config.warmup_lr} -> {config.lr}")

    def epoch_row(self, epoch: HalfEpoch, lr: float, train_sums: tuple[torch.Tensor, torch.Tensor],
                  test: tuple[float, float], seconds: float) -> dict:
        """The EpochRow dict of the epoch just ended (`train_sums` summed over the ranks)."""
        config, data = self.config, self.data
        (loss_sum, wrong), (test_loss, test_error) = train_sums, test
        row = EpochRow(
            run_id=config.run_id(), dataset=data.info.name, arch=config.arch, depth=config.depth,
            width=self.model.width, shortcut=self.shortcut_option, seed=config.seed, preset=config.preset,
            epoch=self.state.epoch, iteration=self.state.iteration, lr=lr, train_loss=loss_sum.item() / epoch.seen,
            train_error=wrong.item() / epoch.seen, test_loss=test_loss, test_error=test_error,
            epoch_seconds=seconds, images_per_second=epoch.seen / epoch.seconds,
            device=self.device.type, precision=config.precision, timestamp=utc_now())
        return dataclasses.asdict(row)


def train_epochs(run: Run, on_step: OnStep | None = None) -> Iterator[dict]:
    """The training loop of one run, top to bottom: each epoch draws its batches, trains them one SGD
    iteration at a time, is evaluated on the whole test split and yields its EpochRow dict; the caller
    checkpoints (`train_run`). A Ctrl-C between iterations leaves the half-done epoch in
    `run.state.partial` with its sums, so a checkpoint of it resumes exactly."""
    config, data, job, state, total = run.config, run.data, run.job, run.state, run.schedule.iterations
    per_rank = config.batch_size // job.world_size
    mine = slice(job.rank * per_rank, (job.rank + 1) * per_rank)
    while not run.finished:
        if state.partial is None:  # drawn at the epoch's start and checkpointed with it: a resume trains the same
            batches = epoch_batches(len(data.train_images), config.batch_size, run.generator, drop_last=True)
            state.partial = HalfEpoch(torch.stack(batches[: total - state.iteration]).cpu())
        epoch = state.partial
        batches = epoch.batches.to(run.device)
        loss_sum, wrong = epoch.sums(run.device)
        started = time.perf_counter()
        lr = learning_rate(config, state.iteration, total, state.warming_up)
        run.model.train()
        try:
            for index in range(epoch.done, len(batches)):
                if run.stop.requested:  # act on Ctrl-C / SIGTERM only here, between iterations
                    raise KeyboardInterrupt
                lr = learning_rate(config, state.iteration, total, state.warming_up)
                for group in run.optimizer.param_groups:
                    group["lr"] = lr
                idx = batches[index]
                images = data.train_images[idx]
                if config.augment:
                    images = augment(images, run.generator)
                x = prepare_inputs(images[mine], data.mean, config)
                y = data.train_labels[idx][mine]
                loss, logits = run.step.forward_backward(x, y)
                run.record_gradients(last_of_epoch=index == len(batches) - 1)
                run.step.update()
                batch_wrong = (logits.argmax(1) != y).sum()
                loss_sum += loss.detach().double() * len(y)
                wrong += batch_wrong
                state.iteration += 1
                epoch.done, epoch.seen = index + 1, epoch.seen + len(idx)
                if state.warming_up:  # the paper's 110-layer rule needs the error now, so sync here only
                    run.end_warmup_if_learning(all_sum(batch_wrong, job).item() / len(idx))
                if on_step is not None:
                    on_step(state.iteration, total, {"loss": loss, "lr": lr})
        finally:  # on a Ctrl-C too: the checkpoint of a half-done epoch holds its sums
            epoch.loss_sum, epoch.wrong = loss_sum.item(), int(wrong.item())
            epoch.seconds += time.perf_counter() - started
        started = time.perf_counter()
        loss_total, wrong_total = (all_sum(value, job) for value in epoch.sums(run.device))
        test = evaluate(run.model, data.test_images, data.test_labels, data.mean, config, job)
        seconds = epoch.seconds + time.perf_counter() - started
        state.epoch += 1
        run.record_responses()  # outside the epoch's seconds: a diagnostic, not part of the training it times
        state.partial = None
        state.rows.append(run.epoch_row(epoch, lr, (loss_total, wrong_total), test, seconds))
        yield state.rows[-1]


def describe(config: RunConfig, data: ImageData, model: nn.Module, schedule: Schedule, device: torch.device,
             world_size: int = 1) -> dict:
    """The config.json of a run: the config, what the data and model resolved to, and the environment."""
    return {
        "run_id": config.run_id(),
        "config": config.to_dict(),
        "dataset": dataclasses.asdict(data.info),
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


def rewrite_config(config: RunConfig, data: ImageData, directory: Path, device: torch.device, *,
                   world_size: int = 1, notify: Notify = print, schedule: Schedule | None = None) -> None:
    """Write config.json again for a run folder that lost it (deleted by hand, as an error told), so
    `bench report` finds the run again. It describes this machine and has no start time: both are lost."""
    with torch.device("meta"):  # the net's shape and parameter count, without its weights or a compile
        model = make_model(config, data)
    schedule = schedule or Schedule.of(config, len(data.train_images), world_size)
    description = describe(config, data, model, schedule, device, world_size)
    description.update(started_at=None, rewritten_at=utc_now())
    store.write_json(directory / store.CONFIG, description)
    notify(f"{config.run_id()}: {store.CONFIG} was missing; rewrote it (environment of this machine, no start "
           "time)")


def train_run(config: RunConfig, data: ImageData, directory: Path, device: torch.device, *,
              notify: Notify = print, job: Dist = Dist(), on_epoch: Callable[[Run, dict], None] | None = None,
              on_step: OnStep | None = None, on_start: Callable[[Run], None] | None = None,
              deadline: float | None = None, diagnostics: bool = True, schedule: Schedule | None = None) -> str:
    """Train (or resume) one run in `directory` to its end; returns its final state.

    `deadline` (a time.monotonic() value) stops the run cleanly after the first epoch that ends past it,
    as 'interrupted', so a long job can run in chunks on machines lent for a fixed time. `diagnostics`
    records layers.parquet (bench.layers). `schedule` is the run's, when the caller has worked it out already.

    Finished epochs are on disk after each epoch. Ctrl-C saves the half-done epoch too and re-raises, so the
    same command resumes where it stopped. A NaN or infinite loss ends the run as 'diverged'. With several
    ranks, all of them resume from rank 0's checkpoint and only rank 0 writes.
    """
    run = Run(config, data, directory, device, notify, job, diagnostics, schedule)
    try:
        checkpoint = store.load_checkpoint(directory, notify)
        if checkpoint is not None:
            run.restore(checkpoint)
    except BenchError as error:  # a run killed with -9 says `running`: it is not, and will not be
        if job.is_main:
            store.write_status(directory, store.INTERRUPTED, error=str(error))
        raise
    if checkpoint is not None and job.is_main:  # a crash between checkpoint and parquet may have left the
        run.write_rows()  # parquet an epoch behind

    def status(state: str, **fields: object) -> None:
        if job.is_main:
            store.write_status(directory, state, epoch=run.state.epoch, epochs_total=run.schedule.epochs, **fields)

    if job.is_main and not (directory / store.CONFIG).exists():
        store.write_json(directory / store.CONFIG, describe(config, data, run.model, run.schedule, device,
                                                            job.world_size))
    if on_start is not None:
        on_start(run)
    status(store.RUNNING)
    try:
        with deferred_interrupts(run.stop):
            state = _train_to_end(run, status, on_epoch, on_step, deadline)
    except Exception as error:  # a full disk, out of memory, anything: the run is not running any more
        reason = first_line(error, 200)
        try:  # on a full disk this small file may not fit either; the error raised says what to do
            status(store.INTERRUPTED, iteration=run.state.iteration, error=reason)
        except (BenchError, OSError):
            pass
        raise
    except KeyboardInterrupt:  # a first stop, or a second one that may land anywhere (a checkpoint write too)
        with signals_held():  # so that a further one cannot cut this write short
            status(store.INTERRUPTED, iteration=run.state.iteration)
        raise
    if run.stop.requested:  # a stop that landed after the last iteration (its evaluation, the last save): the
        raise KeyboardInterrupt  # run ended whole and is recorded as it ended, but the job must stop
    return state


def _train_to_end(run: Run, status: Callable[..., None], on_epoch: Callable[[Run, dict], None] | None,
                  on_step: OnStep | None, deadline: float | None) -> str:
    """What happens between epochs of `train_epochs`: the checkpoint, the status, the divergence and
    deadline checks; a Ctrl-C mid-epoch saves the half-done epoch, a lost rank is a BenchError."""
    config, job = run.config, run.job
    epochs = train_epochs(run, on_step)
    while not run.finished:
        try:
            row = next(epochs)
        except KeyboardInterrupt as stop:  # train_run records the run interrupted
            if not job.enabled and not isinstance(stop, ForcedStop):
                run.save()
            raise
        except RuntimeError as error:
            if not job.enabled:
                raise
            # Another rank died: DDP's collectives fail here. Its last finished epoch is on disk.
            status(store.INTERRUPTED, iteration=run.state.iteration)
            raise BenchError(f"rank {job.rank}: lost the other ranks ({first_line(error, 200)}); "
                             "run the same command again to resume from the last finished epoch") from None
        if not math.isfinite(row["train_loss"]) or not math.isfinite(row["test_loss"]):
            if job.is_main:
                run.write_rows()
            status(store.DIVERGED, diverged_epoch=run.state.epoch)
            run.notify(f"{config.run_id()}: loss is {row['train_loss']} at epoch {run.state.epoch}: marked diverged")
            return store.DIVERGED
        run.save()
        status(store.RUNNING)
        if on_epoch is not None:
            on_epoch(run, row)
        if deadline is not None and not run.finished and broadcast(time.monotonic() > deadline, job):
            status(store.INTERRUPTED, iteration=run.state.iteration)
            return store.INTERRUPTED
    status(store.FINISHED)
    if job.is_main:
        store.drop_previous_checkpoint(run.directory)
    return store.FINISHED
