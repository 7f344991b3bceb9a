"""`bench time`: what a forward pass, a backward pass and a training step cost, per network and device.

Every combination of depth x arch x device x precision x batch size is timed in three phases:

    forward            eval mode under no_grad: what inference costs
    forward_backward   train mode, forward + cross-entropy + backward: what the shortcuts add to autograd
    train_step         forward_backward plus an SGD step (momentum 0.9, weight decay 1e-4, as the paper)

The phases are bench.step's: the same TrainStep `bench run` trains with (on a fixed batch, so the data
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
import datetime as dt
import gc
import logging
import os
import resource
import secrets
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
import torchvision
from rich.progress import Progress
from rich.table import Table
from torch import nn

# torch.utils.benchmark imports torch.utils.cpp_extension, which warns on every start on a machine without a
# CUDA toolkit; nothing here compiles C++, so that warning would only be noise above every `bench time`.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
from torch.utils import benchmark  # noqa: E402

import resnet
from bench import store
from bench.allocator import keep_freed_memory, release_freed_memory
from bench.config import parse_device, threads_notice, unavailable
from bench.errors import BenchError, Notify, check_choice, check_positive, is_out_of_memory, out_of_memory_on
from bench.files import check_writable
from bench.modes import PRECISIONS, check_mode, check_net, mode_of
from bench.provenance import device_name, git_commit
from bench.records import PHASES, record_schema
from bench.step import TrainStep, accelerate, device_settings, graphed_predict, numerics, predict, sgd

DEFAULT_INPUT_SIZE = {"imagenet": 224, "cifar": 32}
OK, OOM = "ok", "oom"

@dataclass(frozen=True)
class TimingRow:
    """One measurement: a row of results/timing/<id>.parquet. The first 22 fields are the documented contract;
    status tells an out-of-memory row (its figures are None) from a measured one; width, git_commit,
    cuda_graph, stem and the math settings (bench.step.numerics: cudnn autotuning; TF32 allowed or, both False,
    IEEE fp32) say what was timed."""

    model: str
    arch: str
    depth: int
    family: str
    device: str
    device_name: str
    batch_size: int
    input_size: int
    precision: str
    channels_last: bool
    compiled: bool
    phase: str
    median_ms: float | None
    iqr_ms: float | None
    images_per_second: float | None
    peak_memory_bytes: int | None
    params: int
    flops_per_image: int
    tflops: float | None
    threads: int
    torch_version: str
    timestamp: dt.datetime
    status: str
    width: int
    git_commit: str | None
    cuda_graph: bool
    stem: str
    cudnn_benchmark: bool | None  # these three: absent from files written before they were recorded
    allow_tf32_matmul: bool | None
    allow_tf32_cudnn: bool | None


TIMING_SCHEMA = record_schema(TimingRow)


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


@dataclass(frozen=True)
class Timing:
    """Seconds per call of a timed function: median and interquartile range of the samples."""

    median: float
    iqr: float
    samples: tuple[float, ...] = field(repr=False)


def synchronize(device: torch.device | str) -> None:
    """Wait for all queued work on `device` (a no-op on the CPU, where work is synchronous)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    fn: Callable[[], object],
    device: torch.device | str = "cpu",
    *,
    warmup: int = 3,
    repeats: int = 10,
    min_time: float = 0.0,
) -> Timing:
    """Time `fn` on `device` with torch.utils.benchmark: `warmup` untimed calls, then samples for at least
    `min_time` seconds and at least `repeats` of them.

    A sample is the mean of a block of calls (the Timer sizes it so its own overhead is below 1e-4 of the
    block) timed by the wall clock read after synchronising the device, so queued GPU work is counted; the
    Timer runs with the thread count set now (its own default is one thread) and the garbage collector off.
    """
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    synchronize(device)
    timer = benchmark.Timer("fn()", globals={"fn": fn}, timer=partial(_synchronized_clock, device),
                            num_threads=torch.get_num_threads())
    samples = list(timer.blocked_autorange(min_run_time=min_time).times) if min_time > 0 else []
    while len(samples) < repeats:
        samples += timer.timeit(1).times
    q1, q3 = np.percentile(samples, [25, 75])
    return Timing(median=float(np.median(samples)), iqr=float(q3 - q1), samples=tuple(samples))


def _synchronized_clock(device: torch.device) -> float:
    synchronize(device)
    return time.perf_counter()


# A learning rate for timing, not learning: it keeps the weights near their initialisation over thousands
# of steps on one random batch; a diverging net would be timed on denormals and NaNs, which run at another speed.
TIMING_LR = 1e-4


def make_phase(
    model: nn.Module, phase: str, images: torch.Tensor, labels: torch.Tensor, *, precision: str = "fp32",
    mode: str = "eager", forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Callable[[], object]:
    """A callable that runs one `phase` (see PHASES) of `model` on the fixed batch `images`, `labels`.

    `forward` is what `bench.step.accelerate(model, mode, ...)` made of `model` (default: `model`, eager).
    Puts the model in eval or train mode now, so the mode switch stays outside the timed region:
    build the callable right before timing it.
    """
    check_choice("phase", phase, PHASES)
    forward = model if forward is None else forward  # not `or`: a compiled module has no truth value
    if phase == "forward":
        model.eval()
        if mode == "cuda-graph":  # graphed modules replay their train-mode capture only
            replay = graphed_predict(model, images, precision)
            return partial(replay, images)
        return partial(predict, forward, images, precision)
    model.train()
    step = TrainStep(model, sgd(model, TIMING_LR), precision, forward)
    if phase == "forward_backward":
        return partial(step.forward_backward, images, labels)
    return partial(step, images, labels)


def reset_peak_memory(device: torch.device | str) -> None:
    """Start a new peak-memory window: the CUDA allocator's peak, or the process's peak resident set."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        # Linux: writing 5 to clear_refs resets VmHWM, the peak resident set, to the current one.
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # elsewhere the peak covers the whole process lifetime


def peak_memory(device: torch.device | str) -> int:
    """Bytes at the peak since `reset_peak_memory`: GPU allocator peak, or the process's resident set."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS says bytes, Linux kilobytes


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
    mode = mode_of(config.compile, config.cuda_graph)
    for device in config.devices:
        check_mode(mode, parse_device(device))
    positive = [("batch size", b) for b in config.batch_sizes] + [
        ("input size", config.input_size), ("threads", config.threads), ("width", config.width),
        ("num_classes", config.num_classes), ("repeats", config.repeats)]
    for name, value in positive:
        check_positive(name, value, integer=True, detail=" (below 2**63, as results store it)")
    if not config.batch_sizes:
        raise BenchError("no batch size given: pass --batch-size, e.g. --batch-size 32")
    _check_input_fits(config)
    if config.warmup < 0 or config.min_time < 0:
        raise BenchError("warmup and min_time must be zero or more")


def _memory_bytes(device: torch.device) -> int | None:
    """The memory of `device`: a GPU's, or the machine's RAM; None when it cannot be told."""
    if device.type == "cuda":
        available = torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()
        return torch.cuda.get_device_properties(device.index or 0).total_memory if available else None
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return None


def _input_bytes(batch: int, input_size: int) -> int:
    return 4 * batch * 3 * input_size * input_size  # fp32 images


def _check_input_fits(config: TimeConfig) -> None:
    """A BenchError when one fp32 input image alone is larger than a device's memory: no batch of that size
    can run, and torch would fail on it with a storage-overflow traceback."""
    for device in config.devices:
        memory = _memory_bytes(torch.device(device))
        for depth in config.depths:
            size = config.input_size or DEFAULT_INPUT_SIZE[_family(config, depth)]
            if memory is not None and _input_bytes(1, size) > memory:
                raise BenchError(f"--input-size {size}: one input image alone is {_bytes(_input_bytes(1, size))}, "
                                 f"more than the {_bytes(memory)} of memory on {device}: use a smaller --input-size")


def _refuse_unfittable(batch: int, input_size: int, device: torch.device) -> None:
    """Raise the allocator's out-of-memory error, without asking it, for a batch whose input alone is larger
    than the device's memory: asked, torch fails with a storage overflow (a traceback), or, with overcommit,
    grants it and the process is killed."""
    memory = _memory_bytes(device)
    if memory is not None and _input_bytes(batch, input_size) > memory:
        raise RuntimeError(f"out of memory: the input batch alone is {_bytes(_input_bytes(batch, input_size))}, "
                           f"more than the {_bytes(memory)} of {device}")


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
    """CPU thread count and bench run's device settings (bench.step.device_settings) for the sweep, put back
    afterwards."""
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        with device_settings(device):
            yield
    finally:
        torch.set_num_threads(old_threads)


def run_timing(
    config: TimeConfig, *, progress: bool = True, notify: Notify = print, strict: bool = False
) -> pd.DataFrame:
    """Time every combination in `config`, write results/timing/<id>.parquet, return its rows.

    A device that is not there is skipped with a notice (with `strict`, none there at all is a BenchError);
    a batch size that runs out of memory is recorded with status "oom" and the sweep goes on. A Ctrl-C (or
    SIGTERM, under `bench time`) ends the sweep early: the networks timed whole are written and returned,
    with ``attrs["interrupted"]`` True. The results folder is checked for writing before the sweep. The
    parquet path is in ``frame.attrs["path"]`` (None when nothing was timed, in which case nothing is
    written). Should the write fail all the same (a disk filled during the sweep), the rows go to the
    temporary folder instead, ``attrs["path"]`` names that file and ``attrs["error"]`` says what happened.
    """
    _validate(config)
    keep_freed_memory()  # else the first net of a sweep is timed cold (bench.allocator)
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
    folder = Path(config.results) / "timing"
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
                        rows += _time_net(net, device, config, commit, notify, lambda: bar.advance(task))
        except KeyboardInterrupt:  # what was measured is written below, not lost
            interrupted = True
    frame = pa.Table.from_pylist(rows, schema=TIMING_SCHEMA).to_pandas()
    frame.attrs.update(path=None, interrupted=interrupted)
    if not rows:
        if not interrupted:
            notify("nothing was timed: no requested device is available")
        return frame
    run_id = f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(3)}"
    path = folder / f"{run_id}.parquet"
    table = pa.Table.from_pylist(rows, schema=TIMING_SCHEMA)
    try:
        store.write_parquet(path, table)
    except BenchError as error:
        kept = Path(tempfile.gettempdir()) / f"bench-timing-{run_id}.parquet"
        try:
            store.write_parquet(kept, table)
        except BenchError:
            frame.attrs["error"] = f"{error}; the measurements could not be kept anywhere (the table above has them)"
            return frame
        frame.attrs["path"] = str(kept)
        frame.attrs["error"] = f"{error}; the measurements are kept in {kept}: move it into {folder}/"
        return frame
    frame.attrs["path"] = str(path)
    return frame


def _time_net(
    net: _Net, device: torch.device, config: TimeConfig, commit: str | None,
    notify: Notify, advance: Callable[[], None],
) -> list[dict]:
    """All rows for one network on one device: every precision x batch size x phase."""
    input_size = config.input_size or DEFAULT_INPUT_SIZE[net.family]
    num_classes = config.num_classes or resnet.FAMILY_DEFAULTS[net.family]["num_classes"]
    model = net.build()
    params = resnet.count_parameters(model)
    flops = 2 * resnet.count_macs(model, input_size)
    model = model.to(device)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    mode = mode_of(config.compile, config.cuda_graph)
    common = {
        "model": net.model, "arch": net.arch, "depth": net.depth, "family": net.family, "width": net.width,
        "stem": net.stem,
        "device": str(device), "device_name": device_name(device), "input_size": input_size,
        "channels_last": config.channels_last, "compiled": config.compile, "cuda_graph": config.cuda_graph,
        "params": params, "flops_per_image": flops, "torch_version": torch.__version__, "git_commit": commit,
    }
    rows = []
    for precision in config.precisions:
        for batch in config.batch_sizes:
            done, failed = [], None
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
                    timing = measure(call, device, warmup=config.warmup, repeats=config.repeats,
                                     min_time=config.min_time)
                    done.append((phase, timing, peak_memory(device)))
            except RuntimeError as error:  # torch.cuda.OutOfMemoryError is one
                if not is_out_of_memory(error):
                    raise
                failed = (f"{net.model} batch {batch} {precision} ran out of memory on "
                          f"{out_of_memory_on(error, device)}; going on")
            except ValueError as error:  # train-mode BatchNorm on one value per channel
                raise BenchError(f"{net.model} at batch {batch}, input {input_size}: {error}: use a batch size "
                                 "of 2 or more or a larger --input-size") from None
            # Free this batch's tensors, step and graphs before the next batch allocates (and is measured):
            # kept, they would inflate its peak memory and could make it run out. make_graphed_callables
            # leaves the graphed copy in a reference cycle (its forward closes over the module), so only
            # the cyclic collector frees it. The gradients go too: the next forward phase has none.
            images = labels = forward = timed = call = None
            model.zero_grad(set_to_none=True)
            gc.collect()
            if failed:
                notify(failed)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
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
            advance()
    return rows


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def render_table(df: pd.DataFrame) -> Table:
    """The rows of `run_timing` as a rich table, one line per measurement, nets of a depth together."""
    table = Table(title="bench time", title_justify="left")
    for name in ("model", "device", "batch", "size", "precision", "phase"):
        table.add_column(name)
    for name in ("median ms", "IQR ms", "images/s", "peak memory", "TFLOP/s", "params", "GFLOP/img"):
        table.add_column(name, justify="right")
    for row in df.itertuples(index=False):
        shown = row.model + (" (compiled)" if row.compiled else "") + (" CL" if row.channels_last else "")
        if row.status == OOM:
            figures = ["out of memory", "", "", "", ""]
        else:
            figures = [f"{row.median_ms:.2f}", f"{row.iqr_ms:.2f}", f"{row.images_per_second:,.0f}",
                       _bytes(row.peak_memory_bytes), f"{row.tflops:.3f}"]
        table.add_row(shown, row.device, str(row.batch_size), str(row.input_size), row.precision, row.phase,
                      *figures, f"{row.params / 1e6:.2f}M", f"{row.flops_per_image / 1e9:.3f}")
    if len(df):
        names = ", ".join(sorted(set(df["device_name"])))
        table.caption = f"{names}; {int(df['threads'].iloc[0])} CPU threads; torch {df['torch_version'].iloc[0]}"
    return table
