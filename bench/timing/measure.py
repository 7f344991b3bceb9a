"""Measuring one phase of one net: the clock, the phases themselves and their peak memory (`bench time`).

A phase is a callable made by `make_phase` from bench.run.step's TrainStep and predict, the ones `bench run`
trains and evaluates with; `measure` times it with torch.utils.benchmark's Timer, the device synchronised
around every block of calls. bench.timing.timing sweeps these over nets, devices, precisions and batch sizes.
"""

from __future__ import annotations

import logging
import os
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

# torch.utils.benchmark imports torch.utils.cpp_extension, which warns on every start on a machine without a
# CUDA toolkit; nothing here compiles C++, so that warning would only be noise above every `bench time`.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
from torch.utils import benchmark  # noqa: E402

from bench.core.errors import check_choice  # noqa: E402
from bench.core.records import PHASES  # noqa: E402
from bench.run.step import TrainStep, graphed_predict, predict, sgd  # noqa: E402


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

    `forward` is what `bench.run.step.accelerate(model, mode, ...)` made of `model` (default: `model`, eager).
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


def memory_bytes(device: torch.device) -> int | None:
    """The memory of `device`: a GPU's, or the machine's RAM; None when it cannot be told."""
    if device.type == "cuda":
        available = torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()
        return torch.cuda.get_device_properties(device.index or 0).total_memory if available else None
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return None
