"""The training loop of one run: SGD by iteration, per-epoch train/test error, checkpoints that resume exactly.

Training error is the error on the (augmented) training mini-batches of each epoch, as the paper plots it;
test error is measured on the whole test split after every epoch, in eval mode.
"""

from __future__ import annotations

import dataclasses
import math
import random
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench import store
from bench.config import RunConfig
from bench.data import ImageData
from bench.distributed import Dist, all_sum, broadcast, convert_sync_batchnorm
from bench.errors import BenchError, first_line
from bench.layers import gradient_rows, response_probe, response_rows
from bench.loader import augment, epoch_batches
from bench.provenance import environment, utc_now
from bench.records import EpochRow
from bench.step import TrainStep, accelerate, at_least_fp32, mode_of, network_inputs, predict, sgd
from resnet import FAMILY_DEFAULTS, build_model, count_parameters, family_of

Notify = Callable[[str], None]
# Called after every iteration with (iteration, total, stats); stats holds the latest epoch row or running numbers.
OnStep = Callable[[int, int, dict], None]

WARMUP_WINDOW = 50  # iterations averaged to decide that training error is below warmup_until_error


class StopFlag:
    """Set by Ctrl-C or SIGTERM while a run trains; the loop stops at the next iteration boundary."""

    def __init__(self) -> None:
        self.requested = False


class ForcedStop(KeyboardInterrupt):
    """A second Ctrl-C or SIGTERM: it may land half-way through an iteration, so nothing is saved and the
    last whole checkpoint stays the resume point."""


@contextmanager
def deferred_interrupts(flag: StopFlag) -> Iterator[None]:
    """While training, the first Ctrl-C or SIGTERM only sets `flag`, so the run stops between iterations
    (where its state is whole and resumes exactly); a second one stops at once, as ForcedStop."""
    if threading.current_thread() is not threading.main_thread():  # signal handlers live in the main thread
        yield
        return

    def handler(signum: int, frame: object) -> None:
        if flag.requested:
            raise ForcedStop
        flag.requested = True

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def make_model(config: RunConfig, data: ImageData) -> nn.Module:
    """The run's network; ImageNet-layout nets get the CIFAR stem on small images unless told otherwise."""
    stem = config.stem
    if stem is None and family_of(config.depth) == "imagenet" and data.info.image_size < 128:
        stem = "cifar"
    return build_model(config.depth, config.arch, shortcut=config.shortcut, stem=stem, width=config.width,
                       num_classes=data.info.num_classes)


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


class Run:
    """One run's state: model, optimizer, data generator, position in the schedule and the rows so far."""

    def __init__(self, config: RunConfig, data: ImageData, directory: Path, device: torch.device,
                 notify: Notify = print, job: Dist = Dist(), diagnostics: bool = True) -> None:
        self.config, self.data, self.directory, self.device, self.notify = config, data, directory, device, notify
        self.job = job
        # layers.parquet; off only to show that measuring changes nothing (tests/test_layers.py).
        self.diagnostics = diagnostics and job.is_main
        check_batch(config, len(data.train_images), job.world_size)
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
        # The shortcut option of the residual twin: a plain net has none, but belongs with that twin.
        self.shortcut_option = config.shortcut or FAMILY_DEFAULTS[self.model.family]["shortcut"]
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
        self.iterations_per_epoch = len(data.train_images) // config.batch_size
        self.total = config.iterations or config.epochs * self.iterations_per_epoch  # type: ignore[operator]
        self.epochs_total = math.ceil(self.total / self.iterations_per_epoch)
        self.epoch = 0
        self.iteration = 0
        self.rows: list[dict] = []
        # bench.layers.LayerRow dicts, in the checkpoint like the epoch rows so a resume has no gaps (a few
        # hundred per epoch: small beside the weights even for the paper's 164-epoch 110-layer run).
        self.layer_rows: list[dict] = []
        self.warming_up = config.warmup_lr is not None
        self.recent_errors: deque[float] = deque(maxlen=WARMUP_WINDOW)
        self.partial: HalfEpoch | None = None  # the epoch in progress

    # -- checkpoints -------------------------------------------------------------------------------
    def state(self) -> dict:
        """Everything needed to continue exactly where this run is."""
        return {
            "epoch": self.epoch,
            "iteration": self.iteration,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": _rng_state(self.generator, self.device),
            "rows": self.rows,
            "layer_rows": self.layer_rows,
            "warming_up": self.warming_up,
            "recent_errors": list(self.recent_errors),
            "partial": None if self.partial is None else self.partial.state(),
            "config": self.config.to_dict(),
        }

    def restore(self, state: dict) -> None:
        """Continue from a checkpoint made by `state()`."""
        if RunConfig.from_dict(state.get("config", {})).identity() != self.config.identity():
            raise BenchError(f"checkpoint in {self.directory} belongs to a different configuration: "
                             "delete that folder to restart the run")
        try:  # weights of another net, an unknown half-epoch key: torch and dataclasses raise these
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            _set_rng_state(state["rng"], self.generator, self.device)
            self.epoch, self.iteration, self.rows = state["epoch"], state["iteration"], list(state["rows"])
            self.layer_rows = list(state.get("layer_rows", []))  # checkpoints from before layers.parquet have none
            self.warming_up = state["warming_up"]
            self.recent_errors.extend(state["recent_errors"])
            self.partial = None if state["partial"] is None else HalfEpoch(**state["partial"])
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            reason = first_line(error, 160)
            raise BenchError(f"checkpoint in {self.directory} does not fit this run ({reason}): delete "
                             f"{self.directory} to restart the run from scratch") from None

    def save(self) -> None:
        """Checkpoint first, then the parquet, so the rows on disk never run ahead of the checkpoint."""
        if not self.job.is_main:
            return
        store.save_checkpoint(self.directory, self.state())
        self.write_rows()

    def write_rows(self) -> None:
        """epochs.parquet and layers.parquet from the rows in memory."""
        store.write_epochs(self.directory / store.EPOCHS, self.rows)
        store.write_layers(self.directory / store.LAYERS, self.layer_rows)

    # -- training ----------------------------------------------------------------------------------
    def train_epoch(self, on_step: OnStep | None = None) -> dict:
        """Train one epoch (or what is left of it, after a Ctrl-C) and evaluate; returns its EpochRow dict."""
        if self.partial is None:
            batches = epoch_batches(len(self.data.train_images), self.config.batch_size, self.generator,
                                    drop_last=True)
            self.partial = HalfEpoch(torch.stack(batches[: self.total - self.iteration]).cpu())
        lr = self._train_batches(self.partial, on_step)
        return self._end_epoch(self.partial, lr)

    def _train_batches(self, partial: HalfEpoch, on_step: OnStep | None) -> float:
        """The epoch's remaining iterations; returns the last learning rate. Sums go into `partial` even when
        a Ctrl-C stops it half-way, so a checkpoint holds them."""
        config, data = self.config, self.data
        batches = partial.batches.to(self.device)
        per_rank = config.batch_size // self.job.world_size
        mine = slice(self.job.rank * per_rank, (self.job.rank + 1) * per_rank)
        loss_sum = torch.tensor(partial.loss_sum, dtype=torch.float64, device=self.device)
        wrong = torch.tensor(partial.wrong, dtype=torch.int64, device=self.device)
        started = time.perf_counter()
        lr = learning_rate(config, self.iteration, self.total, self.warming_up)
        self.model.train()
        try:
            for index in range(partial.done, len(batches)):
                if self.stop.requested:  # act on Ctrl-C / SIGTERM only here, between iterations
                    raise KeyboardInterrupt
                lr = learning_rate(config, self.iteration, self.total, self.warming_up)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                idx = batches[index]
                images = data.train_images[idx]
                if config.augment:
                    images = augment(images, self.generator)
                x = prepare_inputs(images[mine], data.mean, config)
                y = data.train_labels[idx][mine]
                loss, logits = self.step.forward_backward(x, y)
                if self.diagnostics and (self.iteration == 0 or index == len(batches) - 1):
                    # The first step and each epoch's last: gradients as they reach every layer, before the step.
                    self.layer_rows += gradient_rows(config.run_id(), self.epoch, self.iteration + 1, self.model)
                self.step.update()
                batch_wrong = (logits.argmax(1) != y).sum()
                loss_sum += loss.detach().double() * len(y)
                wrong += batch_wrong
                self.iteration += 1
                partial.done, partial.seen = index + 1, partial.seen + len(idx)
                if self.warming_up:  # the paper's 110-layer rule needs the error now, so sync here only
                    self._end_warmup_if_learning(all_sum(batch_wrong, self.job).item() / len(idx))
                if on_step is not None:
                    on_step(self.iteration, self.total, {"loss": loss, "lr": lr})
        finally:
            partial.loss_sum, partial.wrong = loss_sum.item(), int(wrong.item())
            partial.seconds += time.perf_counter() - started
        return lr

    def _end_warmup_if_learning(self, batch_error: float) -> None:
        config = self.config
        self.recent_errors.append(batch_error)
        if len(self.recent_errors) == WARMUP_WINDOW and np.mean(self.recent_errors) < config.warmup_until_error:
            self.warming_up = False
            self.notify(f"{config.run_id()}: training error below {config.warmup_until_error:.0%} "
                        f"at iteration {self.iteration}; lr {config.warmup_lr} -> {config.lr}")

    def _end_epoch(self, partial: HalfEpoch, lr: float) -> dict:
        """Evaluate, take the diagnostics, and record the finished epoch's row."""
        config, data = self.config, self.data
        started = time.perf_counter()
        loss_sum = all_sum(torch.tensor(partial.loss_sum, dtype=torch.float64, device=self.device), self.job)
        wrong = all_sum(torch.tensor(partial.wrong, dtype=torch.int64, device=self.device), self.job)
        test_loss, test_error = evaluate(self.model, data.test_images, data.test_labels, data.mean, config,
                                         self.job)
        epoch_seconds = partial.seconds + time.perf_counter() - started
        self.epoch += 1
        if self.diagnostics:  # outside epoch_seconds: a diagnostic, not part of the training it times
            self.layer_rows += response_rows(config.run_id(), self.epoch, self.iteration, self.model,
                                             response_probe(data.test_images),
                                             lambda images: prepare_inputs(images, data.mean, config))
        self.partial = None
        row = EpochRow(
            run_id=config.run_id(), dataset=data.info.name, arch=config.arch, depth=config.depth,
            width=self.model.width, shortcut=self.shortcut_option, seed=config.seed, preset=config.preset,
            epoch=self.epoch, iteration=self.iteration, lr=lr, train_loss=loss_sum.item() / partial.seen,
            train_error=wrong.item() / partial.seen, test_loss=test_loss, test_error=test_error,
            epoch_seconds=epoch_seconds, images_per_second=partial.seen / partial.seconds,
            device=self.device.type, precision=config.precision, timestamp=utc_now())
        self.rows.append(dataclasses.asdict(row))
        return self.rows[-1]

    @property
    def finished(self) -> bool:
        return self.iteration >= self.total and self.partial is None


def check_batch(config: RunConfig, train_images: int, world_size: int = 1) -> None:
    """The batch checks `Run` makes, also made before any run folder is created: the global batch must divide over
    the processes and fit at least once into the training images."""
    if config.batch_size % world_size:
        raise BenchError(f"--batch-size {config.batch_size} (the global batch) must divide evenly over "
                         f"{world_size} processes")
    if train_images // config.batch_size == 0:
        raise BenchError(f"--batch-size {config.batch_size} is larger than the {train_images} training images: "
                         "use a smaller batch")


def describe(run: Run) -> dict:
    """The config.json of a run: the config, what the data and model resolved to, and the environment."""
    model = run.model
    return {
        "run_id": run.config.run_id(),
        "config": run.config.to_dict(),
        "dataset": dataclasses.asdict(run.data.info),
        "model": {"family": model.family, "width": model.width, "shortcut": run.shortcut_option,
                  "has_shortcuts": model.arch == "residual", "stem": model.stem,
                  "params": count_parameters(model)},
        "schedule": {"iterations": run.total, "iterations_per_epoch": run.iterations_per_epoch,
                     "epochs": run.epochs_total},
        "environment": environment(run.device),
        "distributed": {"world_size": run.job.world_size,
                        "batch_per_rank": run.config.batch_size // run.job.world_size},
        "started_at": utc_now(),
    }


def rewrite_config(config: RunConfig, data: ImageData, directory: Path, device: torch.device, *,
                   world_size: int = 1, notify: Notify = print) -> None:
    """Write config.json again for a run folder that lost it (deleted by hand, as an error told), so
    `bench report` finds the run again. It describes this machine and has no start time: both are lost."""
    run = Run(config, data, directory, device, notify)  # one process's view: building it runs no collective
    description = describe(run)
    description["distributed"] = {"world_size": world_size, "batch_per_rank": config.batch_size // world_size}
    description.update(started_at=None, rewritten_at=utc_now())
    store.write_json(directory / store.CONFIG, description)
    notify(f"{config.run_id()}: {store.CONFIG} was missing; rewrote it (environment of this machine, no start "
           "time)")


def train_run(config: RunConfig, data: ImageData, directory: Path, device: torch.device, *,
              notify: Notify = print, job: Dist = Dist(), on_epoch: Callable[[Run, dict], None] | None = None,
              on_step: OnStep | None = None, on_start: Callable[[Run], None] | None = None,
              deadline: float | None = None, diagnostics: bool = True) -> str:
    """Train (or resume) one run in `directory` to its end; returns its final state.

    `deadline` (a time.monotonic() value) stops the run cleanly after the first epoch that ends past it,
    as 'interrupted', so a long job can run in chunks on machines lent for a fixed time. `diagnostics`
    records layers.parquet (bench.layers).

    Finished epochs are on disk after each epoch. Ctrl-C saves the half-done epoch too and re-raises, so the
    same command resumes where it stopped. A NaN or infinite loss ends the run as 'diverged'. With several
    ranks, all of them resume from rank 0's checkpoint and only rank 0 writes.
    """
    run = Run(config, data, directory, device, notify, job, diagnostics)
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
            store.write_status(directory, state, epoch=run.epoch, epochs_total=run.epochs_total, **fields)

    if job.is_main and not (directory / store.CONFIG).exists():
        store.write_json(directory / store.CONFIG, describe(run))
    if on_start is not None:
        on_start(run)
    status(store.RUNNING)
    try:
        with deferred_interrupts(run.stop):
            state = _train_to_end(run, status, notify, on_epoch, on_step, deadline)
    except Exception as error:  # a full disk, out of memory, anything: the run is not running any more
        reason = first_line(error, 200)
        try:  # on a full disk this small file may not fit either; the error raised says what to do
            status(store.INTERRUPTED, iteration=run.iteration, error=reason)
        except (BenchError, OSError):
            pass
        raise
    except KeyboardInterrupt:  # a first stop, or a second one that may land anywhere (a checkpoint write too)
        with _signals_held():  # so that a further one cannot cut this write short
            status(store.INTERRUPTED, iteration=run.iteration)
        raise
    if run.stop.requested:  # a stop that landed after the last iteration (its evaluation, the last save): the
        raise KeyboardInterrupt  # run ended whole and is recorded as it ended, but the job must stop
    return state


@contextmanager
def _signals_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait (pending) for the block to end, then are delivered."""
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _train_to_end(run: Run, status: Callable[..., None], notify: Notify, on_epoch: Callable[[Run, dict], None] | None,
                  on_step: OnStep | None, deadline: float | None) -> str:
    config, directory, job = run.config, run.directory, run.job
    while not run.finished:
        try:
            row = run.train_epoch(on_step)
        except KeyboardInterrupt as stop:  # train_run records the run interrupted
            if not job.enabled and not isinstance(stop, ForcedStop):
                run.save()
            raise
        except RuntimeError as error:
            if not job.enabled:
                raise
            # Another rank died: DDP's collectives fail here. Its last finished epoch is on disk.
            status(store.INTERRUPTED, iteration=run.iteration)
            raise BenchError(f"rank {job.rank}: lost the other ranks ({str(error).splitlines()[0][:200]}); "
                             "run the same command again to resume from the last finished epoch") from None
        if not math.isfinite(row["train_loss"]) or not math.isfinite(row["test_loss"]):
            if job.is_main:
                run.write_rows()
            status(store.DIVERGED, diverged_epoch=run.epoch)
            notify(f"{config.run_id()}: loss is {row['train_loss']} at epoch {run.epoch}: marked diverged")
            return store.DIVERGED
        run.save()
        status(store.RUNNING)
        if on_epoch is not None:
            on_epoch(run, row)
        if deadline is not None and not run.finished and broadcast(time.monotonic() > deadline, job):
            status(store.INTERRUPTED, iteration=run.iteration)
            return store.INTERRUPTED
    status(store.FINISHED)
    if job.is_main:
        store.drop_previous_checkpoint(directory)
    return store.FINISHED
