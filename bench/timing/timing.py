"""`bench time`: what a forward pass, a backward pass and a training step cost, per network and device.

    bench.timing.measure       the clock, the phases and their peak memory
    bench.timing.timing        the sweep: nets x devices x precisions x batch sizes, out-of-memory rows, this module
    bench.timing.timing_rows   the rows (TimingRow), the typed result (TimingResult), the file and the table

Every combination of depth x arch x device x precision x batch size is timed in three phases:

    forward            eval mode under no_grad: what inference costs
    forward_backward   train mode, forward + cross-entropy + backward: what the shortcuts add to autograd
    train_step         forward_backward plus an SGD step (momentum 0.9, weight decay 1e-4, as the paper)

The phases are bench.run.step's: the same TrainStep `bench run` trains with (on a fixed batch, so the data
path is left out: on the CPU it is 4% of a training iteration), run eager, compiled or as CUDA graphs
exactly as `bench run --compile` / `--cuda-graph` runs it. Each phase gets warm-up calls first
(torch.compile, graph capture and cudnn's autotuner do their work there, outside the timed region), then
torch.utils.benchmark's Timer takes the samples (means of blocks of calls, the clock read after
synchronising the device, the garbage collector off); the median and interquartile range are reported.

FLOPs are 2 x multiply-adds of the convolutions and the fc layer (`resnet.count_macs`; the paper's
"FLOPs" in Table 1 are multiply-adds, so half of ours). A backward pass costs about twice the forward,
so the two training phases are credited with 3x the forward FLOPs when achieved TFLOP/s is computed.
"""

from __future__ import annotations

import copy
import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from functools import partial
from pathlib import Path

import pandas as pd
import pyarrow as pa
import torch
import torchvision
from rich.progress import Progress
from torch import nn

import resnet
from bench.core.allocator import keep_freed_memory, release_freed_memory
from bench.core.config import parse_device, precision_notice, threads_notice, unavailable
from bench.core.errors import BenchError, Notify, check_choice, check_positive, is_out_of_memory, out_of_memory_on
from bench.core.files import check_writable, refuse_links_below
from bench.timing.measure import (TIMING_LR, Timing, make_phase, measure, memory_bytes, peak_memory, reset_peak_memory,
                                  synchronize)
from bench.core.modes import PRECISIONS, check_mode, check_net, mode_of
from bench.core.provenance import device_name, git_commit, numerics
from bench.core.records import PHASES
from bench.run.step import accelerate, device_settings
from bench.timing.timing_rows import OK, OOM, TIMING_SCHEMA, TimingResult, TimingRow, format_bytes, write_timing

__all__ = ["OK", "OOM", "PHASES", "TIMING_LR", "TIMING_SCHEMA", "TimeConfig", "Timing", "TimingResult", "TimingRow",
           "make_phase", "measure", "sweep", "synchronize"]

DEFAULT_INPUT_SIZE = {"imagenet": 224, "cifar": 32}


@dataclass(frozen=True)
class TimeConfig:
    """Everything `bench time` sweeps over, and how hard it measures.

    ``family`` None takes each depth's own family (18/34/50/101/152 imagenet, other 6n+2 cifar);
    ``input_size`` None is 224 for imagenet and 32 for cifar; ``width`` and ``stem`` None are the family's
    (64 / 16; imagenet / cifar); ``num_classes`` None is 1000 for imagenet and 10 for cifar. Each phase gets
    ``warmup`` untimed calls, then at least ``repeats`` timed calls and at least ``min_time``
    seconds of them.
    """

    depths: tuple[int, ...] = (18, 34, 50)
    archs: tuple[str, ...] = resnet.ARCHS
    family: str | None = None
    devices: tuple[str, ...] = ("cpu",)
    batch_sizes: tuple[int, ...] = (32,)
    input_size: int | None = None
    precisions: tuple[str, ...] = ("fp32",)
    channels_last: bool = False
    compile: bool = False
    cuda_graph: bool = False
    threads: int | None = None
    reference: bool = False
    results: Path | str = "results"
    width: int | None = None
    stem: str | None = None
    num_classes: int | None = None
    warmup: int = 3
    repeats: int = 10
    min_time: float = 1.0

    def __post_init__(self) -> None:
        # The CLI hands over lists; a frozen config holds tuples so it can be hashed and compared.
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))

    @property
    def mode(self) -> str:
        """eager, compile or cuda-graph (bench.core.modes.mode_of): how the phases run."""
        return mode_of(self.compile, self.cuda_graph)


@dataclass(frozen=True)
class _Net:
    """One network to time: how to build it and what to call it in the results."""

    model: str
    arch: str
    depth: int
    family: str
    width: int
    stem: str
    build: Callable[[], nn.Module]


def _family(config: TimeConfig, depth: int) -> str:
    return config.family or resnet.family_of(depth)


def _validate(config: TimeConfig) -> None:
    """Raise BenchError, naming the fix, for the first thing in `config` that cannot be run."""
    if not config.depths:
        raise BenchError("no depths given: pass --depths, e.g. --depths 18 34 50")
    if not config.archs:
        raise BenchError(f"no arch given: choose from {', '.join(resnet.ARCHS)}")
    for depth in config.depths:  # the nets' own checks: family, depth against it, arch, width, stem
        for arch in config.archs:
            check_net(depth, arch, family=config.family, width=config.width, stem=config.stem)
    if not config.precisions:
        raise BenchError(f"no precision given: choose from {', '.join(PRECISIONS)}")
    for precision in config.precisions:
        check_choice("precision", precision, PRECISIONS)
    if not config.devices:
        raise BenchError("no device given: pass --device cpu and/or --device cuda")
    for device in config.devices:
        check_mode(config.mode, parse_device(device))
    positive = [("batch size", b) for b in config.batch_sizes] + [  # the width is the nets' to check, above
        ("input size", config.input_size), ("threads", config.threads), ("num_classes", config.num_classes),
        ("repeats", config.repeats)]
    for name, value in positive:
        check_positive(name, value, integer=True, detail=" (below 2**63, as results store it)")
    if not config.batch_sizes:
        raise BenchError("no batch size given: pass --batch-size, e.g. --batch-size 32")
    _check_input_fits(config)
    if config.warmup < 0 or config.min_time < 0:
        raise BenchError("warmup and min_time must be zero or more")


def _input_bytes(batch: int, input_size: int) -> int:
    return 4 * batch * 3 * input_size * input_size  # fp32 images


def _check_input_fits(config: TimeConfig) -> None:
    """A BenchError when one fp32 input image alone is larger than a device's memory: no batch of that size
    can run, and torch would fail on it with a storage-overflow traceback."""
    for device in config.devices:
        memory = memory_bytes(torch.device(device))
        for depth in config.depths:
            size = config.input_size or DEFAULT_INPUT_SIZE[_family(config, depth)]
            if memory is not None and _input_bytes(1, size) > memory:
                raise BenchError(f"--input-size {size}: one input image alone is "
                                 f"{format_bytes(_input_bytes(1, size))}, more than the {format_bytes(memory)} of "
                                 f"memory on {device}: use a smaller --input-size")


def _refuse_unfittable(batch: int, input_size: int, device: torch.device) -> None:
    """Raise the allocator's out-of-memory error, without asking it, for a batch whose input alone is larger
    than the device's memory: asked, torch fails with a storage overflow (a traceback), or, with overcommit,
    grants it and the process is killed."""
    memory = memory_bytes(device)
    if memory is not None and _input_bytes(batch, input_size) > memory:
        raise RuntimeError(f"out of memory: the input batch alone is "
                           f"{format_bytes(_input_bytes(batch, input_size))}, more than the {format_bytes(memory)} "
                           f"of {device}")


def _nets(config: TimeConfig, notify: Notify) -> list[_Net]:
    """Our nets for every depth and arch, each depth followed by torchvision's twin when asked."""
    nets = []
    for depth in config.depths:
        family = _family(config, depth)
        width = config.width or resnet.FAMILY_DEFAULTS[family]["width"]
        stem = config.stem or resnet.FAMILY_DEFAULTS[family]["stem"]
        classes = config.num_classes or resnet.FAMILY_DEFAULTS[family]["num_classes"]
        for arch in config.archs:
            nets.append(_Net(f"{arch}-{depth}", arch, depth, family, width, stem, partial(
                resnet.build_model, depth, arch, family=family, width=width, stem=stem, num_classes=classes)))
        if not config.reference:
            continue
        if family != "imagenet":
            notify(f"--reference: torchvision has no CIFAR ResNet-{depth}; timing ours only")
        elif width != 64 or stem != "imagenet":
            notify(f"--reference: torchvision's ResNet-{depth} has width 64 and the ImageNet stem, not {width} and "
                   f"the {stem} stem; timing ours only")
        else:
            builder = getattr(torchvision.models, f"resnet{depth}")
            nets.append(_Net(f"torchvision-resnet{depth}", "torchvision", depth, family, width, stem,
                             partial(builder, weights=None, num_classes=classes)))
    return nets


@contextmanager
def _settings(device: torch.device, threads: int | None) -> Iterator[None]:
    """CPU thread count and bench run's device settings (bench.run.step.device_settings) for the sweep, put back
    afterwards."""
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        with device_settings(device):
            yield
    finally:
        torch.set_num_threads(old_threads)


def sweep(config: TimeConfig, *, progress: bool = True, notify: Notify = print, strict: bool = False) -> TimingResult:
    """Time every combination in `config` and write results/timing/<id>.parquet.

    A device that is not there is skipped with a notice (with `strict`, none there at all is a BenchError);
    a batch size that runs out of memory is recorded with status "oom" and the sweep goes on. A Ctrl-C (or
    SIGTERM, under `bench time`) ends the sweep early: the batches timed whole (a net at one batch size and
    precision, every phase) are written and returned, marked interrupted. The results folder is checked for
    writing before the sweep. What went wrong in writing the rows is in the result (TimingResult), not raised.
    """
    _validate(config)
    keep_freed_memory()  # else the first net of a sweep is timed cold (bench.core.allocator)
    if notice := threads_notice(config.threads):
        notify(notice)
    devices, reasons = [], []
    for device in config.devices:
        problem = unavailable(torch.device(device))
        if problem:
            reasons.append(f"skipping device {device}: {problem}")
        else:
            devices.append(torch.device(device))
    if strict and not devices:
        raise BenchError(f"{'; '.join(reasons)}: nothing to time; use --device cpu")
    for reason in reasons:
        notify(reason)
    for device in devices:
        for precision in config.precisions:
            if notice := precision_notice(precision, device):
                notify(notice)
    folder = refuse_links_below(config.results, Path(config.results) / "timing")
    if devices:  # before the sweep, not after it: a sweep can take hours
        check_writable(folder, tidy=True)
    nets = _nets(config, notify) if devices else []
    total = len(devices) * len(nets) * len(config.precisions) * len(config.batch_sizes)
    rows: list[dict] = []
    commit = git_commit()
    interrupted = False
    with Progress(transient=True, disable=not progress) as bar:
        task = bar.add_task("timing", total=total)
        try:
            for device in devices:
                with _settings(device, config.threads):
                    for net in nets:
                        bar.update(task, description=f"{net.model} on {device}")
                        for batch_rows in _time_net(net, device, config, commit, notify):
                            rows += batch_rows  # kept as each batch ends: Ctrl-C in the next loses only that one
                            bar.advance(task)
        except KeyboardInterrupt:  # what was measured is written below, not lost
            interrupted = True
    result = TimingResult(pa.Table.from_pylist(rows, schema=TIMING_SCHEMA).to_pandas(), interrupted=interrupted)
    if not rows:
        if not interrupted:
            notify("nothing was timed: no requested device is available")
        return result
    result.path, result.error = write_timing(rows, folder)
    return result


def _time_net(
    net: _Net, device: torch.device, config: TimeConfig, commit: str | None,
    notify: Notify,
) -> Iterator[list[dict]]:
    """The rows for one network on one device, one batch at a time: every precision x batch size, each
    with a row per phase."""
    input_size = config.input_size or DEFAULT_INPUT_SIZE[net.family]
    model = net.build()
    params = resnet.count_parameters(model)
    flops = 2 * resnet.count_macs(model, input_size)
    model = model.to(device)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    common = {
        "model": net.model, "arch": net.arch, "depth": net.depth, "family": net.family, "width": net.width,
        "stem": net.stem,
        "device": str(device), "device_name": device_name(device), "input_size": input_size,
        "channels_last": config.channels_last, "compiled": config.compile, "cuda_graph": config.cuda_graph,
        "params": params, "flops_per_image": flops, "torch_version": torch.__version__, "git_commit": commit,
    }
    for precision in config.precisions:
        for batch in config.batch_sizes:
            done, failed = _time_batch(model, net, device, config, precision, batch, memory_format)
            # Free this batch's tensors, step and graphs before the next batch allocates (and is measured):
            # kept, they would inflate its peak memory and could make it run out. make_graphed_callables
            # leaves the graphed copy in a reference cycle (its forward closes over the module), so only
            # the cyclic collector frees it. The gradients go too: the next forward phase has none.
            model.zero_grad(set_to_none=True)
            gc.collect()
            if failed:
                notify(failed)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            yield _batch_rows(common, batch, precision, done, flops)


def _time_batch(model: nn.Module, net: _Net, device: torch.device, config: TimeConfig, precision: str, batch: int,
                memory_format: torch.memory_format) -> tuple[list[tuple[str, Timing, int]], str | None]:
    """Every phase of `model` at one batch size and precision: (phase, timing, peak memory) of each phase
    measured, and a notice when the batch ran out of memory (the phases left then have no measurement)."""
    input_size = config.input_size or DEFAULT_INPUT_SIZE[net.family]
    num_classes = config.num_classes or resnet.FAMILY_DEFAULTS[net.family]["num_classes"]
    mode = config.mode
    done: list[tuple[str, Timing, int]] = []
    # Each batch size and precision is accelerated afresh, as a training run of that shape would be:
    # a static-shape compile (accelerate resets the compiler first), or a capture of its own copy
    # (a module's forward is graphed only once).
    timed = copy.deepcopy(model) if mode == "cuda-graph" else model
    try:
        _refuse_unfittable(batch, input_size, device)
        images = torch.randn(batch, 3, input_size, input_size, device=device)
        images = images.contiguous(memory_format=memory_format)
        labels = torch.randint(num_classes, (batch,), device=device)
        forward = accelerate(timed.train(), mode, images, precision)
        for phase in PHASES:
            call = None  # the last phase's step (optimizer state, a graph) is not this one's memory
            release_freed_memory()  # the peak below is this phase's; the warm-up faults its memory in
            reset_peak_memory(device)
            call = make_phase(timed, phase, images, labels, precision=precision, mode=mode, forward=forward)
            timing = measure(call, device, warmup=config.warmup, repeats=config.repeats, min_time=config.min_time)
            done.append((phase, timing, peak_memory(device)))
    except RuntimeError as error:  # torch.cuda.OutOfMemoryError is one
        if not is_out_of_memory(error):
            raise
        return done, (f"{net.model} batch {batch} {precision} ran out of memory on "
                      f"{out_of_memory_on(error, device)}; going on")
    except ValueError as error:  # train-mode BatchNorm on one value per channel
        raise BenchError(f"{net.model} at batch {batch}, input {input_size}: {error}: use a batch size "
                         "of 2 or more or a larger --input-size") from None
    return done, None


def _batch_rows(common: dict, batch: int, precision: str, done: list[tuple[str, Timing, int]],
                flops: int) -> list[dict]:
    """One TimingRow dict per phase: measured, or out of memory where `done` stops short."""
    rows = []
    for i, phase in enumerate(PHASES):
        row = {**common, **numerics(), "batch_size": batch, "precision": precision, "phase": phase,
               "threads": torch.get_num_threads(), "timestamp": pd.Timestamp.now(tz="UTC")}
        if i < len(done):
            _, timing, peak = done[i]
            work = 1 if phase == "forward" else 3
            row.update(status=OK, median_ms=timing.median * 1e3, iqr_ms=timing.iqr * 1e3,
                       images_per_second=batch / timing.median, peak_memory_bytes=peak,
                       tflops=work * flops * batch / timing.median / 1e12)
        else:
            row.update(status=OOM, median_ms=None, iqr_ms=None, images_per_second=None,
                       peak_memory_bytes=None, tflops=None)
        rows.append(asdict(TimingRow(**row)))  # a missing or unknown field fails here
    return rows
