"""The training loop of one run: the optimizer's steps by iteration, per-epoch train/test error, checkpoints that resume exactly.

Training error is the error on the (augmented) training mini-batches of each epoch, as the paper plots it;
test error is measured on the whole test split after every epoch, in eval mode.

    train_run        one run's life from start (or checkpoint) to end, and the one place its ending (finished,
                     diverged, interrupted by the deadline, a stop or an error) is written to status.json; where
                     a Ctrl-C, SIGTERM or SIGHUP during a run is acted on (bench.core.interrupts defers it to an
                     iteration boundary; cli.handles_errors turns it into the exit code)
    _train           the epochs, per epoch: train, evaluate, divergence check, save, status, deadline
    train_one_epoch  one epoch's SGD iterations (or the rest of a half-done one)
    Run              what the loop works on: data, model, optimizer, step, schedule, and RunState, the
                     part of it a checkpoint holds beside the weights
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.core.config import RunConfig
from bench.core.errors import BenchError, Notify, first_line
from bench.core.interrupts import ForcedStop, StopFlag, deferred_interrupts, signals_held
from bench.core.provenance import environment, utc_now
from bench.core.records import TOP_K, EpochRow, RunStatus
from bench.data.data import ImageData
from bench.data.streaming import worker_failure
from bench.results import checkpoints, chunks, parquet, store
from bench.run.batches import Batches, StreamedData, batch_source, loading
from bench.run.distributed import Dist, all_sum, broadcast, convert_sync_batchnorm
from bench.run.layers import RESPONSE_BATCH, gradient_rows, response_rows
from bench.run.step import TrainStep, accelerate, at_least_fp32, make_optimizer, network_inputs, predict
from resnet import FAMILY_DEFAULTS, build_model, count_parameters

__all__ = ["Ending", "Run", "RunState", "Schedule", "check_batch", "describe", "evaluate", "learning_rate",
           "make_model", "past_deadline", "prepare_inputs", "rewrite_config", "train_one_epoch", "train_run"]

# Called after every iteration with (iteration, total, stats); stats holds the latest epoch row or running numbers.
OnStep = Callable[[int, int, dict], None]

WARMUP_WINDOW = 50  # iterations averaged to decide that training error is below warmup_until_error
EVAL_BATCH = 1000  # test images per forward at the stored size (scaled_batch: fewer at a larger input size)


Data = ImageData | StreamedData  # a set held in memory, or one streamed from disk (bench.run.batches)


def make_model(config: RunConfig, data: Data) -> nn.Module:
    """The run's network; ImageNet-layout nets get the CIFAR stem on small inputs unless told otherwise
    (RunConfig.stem_at)."""
    stem = config.stem_at(input_size(config, data))
    return build_model(config.depth, config.arch, shortcut=config.shortcut, stem=stem, width=config.width,
                       num_classes=data.info.num_classes)


def input_size(config: RunConfig, data: Data) -> int:
    """The height and width the net sees: --input-size, else the images as stored (a stream's: its views')."""
    return config.input_size or data.info.image_size


def scaled_batch(batch: int, config: RunConfig, data: Data) -> int:
    """`batch`, a number of stored-size images, shrunk to hold as many pixels at the run's input size, so that
    evaluation and the diagnostics take no more memory at 224 than at 32."""
    stored, size = data.info.image_size, input_size(config, data)
    return batch if size <= stored else max(1, batch * stored * stored // (size * size))


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
def evaluate(model: nn.Module, batches: Batches, mean: torch.Tensor, config: RunConfig,
             ranks: Dist = Dist()) -> tuple[float, float, float]:
    """(mean loss, top-1 error, top-5 error) of `model` in eval mode over the test split, in one pass: `batches`
    are this rank's share of it (bench.run.batches), and the sums are added up over the ranks."""
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=mean.device)
    wrong = torch.zeros(2, dtype=torch.int64, device=mean.device)  # top-1, top-5
    total = torch.zeros((), dtype=torch.int64, device=mean.device)
    for images, y in batches:
        x = prepare_inputs(images, mean, config)
        logits = predict(model, x, config.precision)
        loss_sum += F.cross_entropy(at_least_fp32(logits), y, reduction="sum")
        wrong += wrong_predictions(logits, y)
        total += len(y)
    model.train()
    loss_sum, wrong, total = all_sum(loss_sum, ranks), all_sum(wrong, ranks), all_sum(total, ranks)
    top1, top5 = wrong.tolist()
    return loss_sum.item() / total.item(), top1 / total.item(), top5 / total.item()


def wrong_predictions(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """How many `labels` are not the highest logit of their row (top-1, argmax as always), and how many are not
    among the TOP_K highest (top-5; with TOP_K classes or fewer, every label is among them: 0), as one tensor."""
    top = logits.topk(min(TOP_K, logits.shape[1]), dim=1).indices
    return torch.stack([(logits.argmax(1) != labels).sum(), (top != labels[:, None]).all(1).sum()])


def prepare_inputs(images: torch.Tensor, mean: torch.Tensor, config: RunConfig) -> torch.Tensor:
    """uint8 images -> the network's input for this run (bench.run.step.network_inputs), at its input size."""
    return network_inputs(images, mean, config.channels_last, config.input_size)


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
class EpochInProgress:
    """The epoch in progress: its batches, drawn at its start, and the sums so far. A Ctrl-C mid-epoch
    checkpoints it, so the resume trains the same batches and the epoch's row counts every image once."""

    # [iterations, global batch] image indices, on the CPU; [iterations, 0] for a streamed set, whose order
    # is the run's seed's and the epoch's (bench.run.batches)
    batches: torch.Tensor
    done: int = 0  # batches trained
    loss_sum: float = 0.0  # training loss summed over the images seen
    wrong: int = 0  # training images misclassified
    seen: int = 0  # images this rank trained on (one process: all of them)
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
    # bench.run.layers.LayerRow dicts, in the checkpoint like the epoch rows so a resume has no gaps (a few
    # hundred per epoch: small beside the weights even for the paper's 164-epoch 110-layer run).
    layer_rows: list[dict] = field(default_factory=list)
    warming_up: bool = False
    recent_errors: deque[float] = field(default_factory=lambda: deque(maxlen=WARMUP_WINDOW))
    partial: EpochInProgress | None = None  # the epoch in progress

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
                   partial=None if state["partial"] is None else EpochInProgress(**state["partial"]))


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
        _seed_everything(config.seed)
        # Every rank draws the same permutation and augmentation from its generator and keeps its own slice,
        # so N processes see exactly the global batches that one process would. The generator lives on the
        # CPU whatever the device, so a checkpoint resumes on another device and data order never depends on it.
        self.generator = torch.Generator().manual_seed(config.seed)
        self.batches = batch_source(data, config, ranks, device, self.generator, notify)
        self.stop = StopFlag()
        self.model = make_model(config, data)
        if config.sync_bn:
            self.model = convert_sync_batchnorm(self.model, device)
        self.model.to(device)
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = make_optimizer(self.model, config.optimizer, config.lr, config.momentum, config.weight_decay)
        self.shortcut_option = shortcut_option(config, self.model.family)
        forward: nn.Module = self.model
        if ranks.enabled:
            forward = nn.parallel.DistributedDataParallel(self.model,
                                                          device_ids=[device] if device.type == "cuda" else None)
        per_rank = config.batch_size // ranks.world_size
        example = prepare_inputs(self.batches.example(per_rank), self.batches.mean, config)  # every step's shape
        self.step = TrainStep(self.model, self.optimizer, config.precision,
                              accelerate(forward, config.mode, example, config.precision))
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
                "rng": _rng_state(self.generator, self.device), "config": self.config.to_dict(),
                **self.batches.state(), **self.state.to_checkpoint()}

    def restore(self, checkpoint: dict) -> None:
        """Continue from a checkpoint made by `checkpoint()`."""
        if RunConfig.from_dict(checkpoint.get("config", {})).identity() != self.config.identity():
            raise BenchError(f"checkpoint in {self.directory} belongs to a different configuration: "
                             "delete that folder to restart the run")
        try:  # weights of another net, an unknown half-epoch key: torch and dataclasses raise these
            self.model.load_state_dict(checkpoint["model"])
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            _set_rng_state(checkpoint["rng"], self.generator, self.device)
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
        self.record_responses()  # outside the epoch's seconds: a diagnostic, not part of the training it times
        state.partial = None
        state.rows.append(self.epoch_row(epoch, lr, (loss_total, wrong_total, seen), test, seconds))
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
        DDP's on losing another rank."""
        lost = None
        if self.ranks.enabled and isinstance(error, RuntimeError):  # another rank died: the collectives fail
            lost = BenchError(f"rank {self.ranks.rank}: lost the other ranks ({first_line(error, 200)}); "
                              "run the same command again to resume from the last finished epoch")
        try:  # on a full disk this small file may not fit either; the error raised says what to do
            self.status(store.INTERRUPTED, iteration=self.state.iteration, error=first_line(lost or error, 200))
        except (BenchError, OSError):
            pass
        return lost

    def record_gradients(self, last_of_epoch: bool) -> None:
        """Diagnostics at the first step and each epoch's last: gradients as they reach every layer, read
        between backward and the update."""
        state = self.state
        if self.diagnostics and (state.iteration == 0 or last_of_epoch):
            state.layer_rows += gradient_rows(self.config.run_id(), state.epoch, state.iteration + 1, self.model)

    def record_responses(self) -> None:
        """Diagnostics after each epoch: every layer's response on the fixed probe images (Figure 7)."""
        config, data, mean = self.config, self.data, self.batches.mean
        if self.diagnostics:
            self.state.layer_rows += response_rows(config.run_id(), self.state.epoch, self.state.iteration,
                                                   self.model, self.batches.probe(),
                                                   lambda images: prepare_inputs(images, mean, config),
                                                   batch_size=scaled_batch(RESPONSE_BATCH, config, data))

    def end_warmup_if_learning(self, batch_error: float) -> None:
        """The paper's 110-layer rule: back to lr once training error averaged over WARMUP_WINDOW iterations
        is below warmup_until_error."""
        config, state = self.config, self.state
        state.recent_errors.append(batch_error)
        if len(state.recent_errors) == WARMUP_WINDOW and np.mean(state.recent_errors) < config.warmup_until_error:
            state.warming_up = False
            self.notify(f"{config.run_id()}: training error below {config.warmup_until_error:.0%} "
                        f"at iteration {state.iteration}; lr {config.warmup_lr} -> {config.lr}")

    def epoch_row(self, epoch: EpochInProgress, lr: float, train_sums: tuple[torch.Tensor, torch.Tensor, int],
                  test: tuple[float, float, float], seconds: float) -> dict:
        """The EpochRow dict of the epoch just ended (`train_sums`: loss, errors and images, summed over the
        ranks)."""
        config, data = self.config, self.data
        (loss_sum, wrong, seen), (test_loss, test_error, test_top5_error) = train_sums, test
        row = EpochRow(
            run_id=config.run_id(), dataset=data.info.name, arch=config.arch, depth=config.depth,
            width=self.model.width, shortcut=self.shortcut_option, seed=config.seed, preset=config.preset,
            epoch=self.state.epoch, iteration=self.state.iteration, lr=lr, train_loss=loss_sum.item() / seen,
            train_error=wrong.item() / seen, test_loss=test_loss, test_error=test_error,
            test_top5_error=test_top5_error,
            epoch_seconds=seconds, images_per_second=seen / epoch.seconds,
            device=self.device.type, precision=config.precision, timestamp=utc_now())
        return dataclasses.asdict(row)


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
            run.record_gradients(last_of_epoch=index == len(epoch.batches) - 1)
            run.step.update()
            batch_wrong = (logits.argmax(1) != y).sum()
            loss_sum += loss.detach().double() * len(y)
            wrong += batch_wrong
            state.iteration += 1
            epoch.done, epoch.seen = index + 1, epoch.seen + len(y)
            if state.warming_up:  # the paper's 110-layer rule needs the error now, so sync here only
                run.end_warmup_if_learning(all_sum(batch_wrong, ranks).item() / config.batch_size)
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
