"""What the throughput benchmarks share: the networks, the reference clock, the machine fingerprint.

Times on a shared machine move 10-35% from run to run with the load of other jobs, far more than the
regressions worth catching. Two things make the gated figure survive that:

- On the CPU the clock is the process's CPU time, not the wall clock: time the process spends waiting
  for a core that a neighbour holds does not count. (Single-threaded, see THREADS_ENV.)
- Every benchmark is timed with `reference_clock`, which ticks in units of a fixed reference workload
  (a small convolution stack written directly against torch, so no change to this project can speed
  it up or slow it down), timed on the same device just before each round. A machine that is 30%
  slower today is 30% slower on both, and the ratio stands; a change that makes our nets slower
  moves the ratio alone.

On a 2-core machine at load 6, medians of 30 rounds moved 23-45% between repeats on the wall clock
and 6-8% in reference units of CPU time. pytest-benchmark's statistics, saved runs and
`--benchmark-compare-fail` all work on these ratios; wall-clock images/s are in each run's extra_info.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import pytest
import torch
import torch.nn.functional as F

import resnet
from bench.core.allocator import keep_freed_memory
from bench.core.provenance import cpu_id, cpu_name, device_name
from bench.timing.timing import make_phase, synchronize

# Multiply every benchmarked call by 1 + this (e.g. 0.5: 50% slower), to prove a regression is caught.
SLOWDOWN_ENV = "BENCH_INJECT_SLOWDOWN"
# Intra-op threads for CPU benchmarks. One by default: on a shared runner a parallel region waits for
# its slowest thread, and a thread that lost its core to another job makes the time jump.
THREADS_ENV = "BENCH_THREADS"
# Set to 1 to compare against a baseline saved on another machine anyway (the comparison then warns).
ACROSS_MACHINES_ENV = "BENCH_COMPARE_ACROSS_MACHINES"

# Rounds of (reference, benchmarked call): a few in the ordinary test run so the benchmarks never rot,
# many when benchmarks are being saved or compared.
QUICK = {"warmup_rounds": 1, "rounds": 3}
FULL = {"warmup_rounds": 5, "rounds": 50}
REFERENCE_WINDOW = 5  # the unit is the median of the last few reference timings: robust to one outlier

# The clock of the benchmark being run (CPU time on the CPU, wall time with synchronisation on a GPU),
# and that clock's reading for one reference run, as last calibrated.
_clock: Callable[[], float] = time.perf_counter
_unit = 1.0


def reference_clock() -> float:
    """The time in units of the reference workload (see the module docstring)."""
    return _clock() / _unit


@dataclass(frozen=True)
class Case:
    """One benchmarked network and batch."""

    depth: int
    arch: str
    width: int
    input_size: int
    batch_size: int
    device: str

    @property
    def id(self) -> str:
        return f"{self.arch}-{self.depth}-w{self.width}-{self.input_size}px-b{self.batch_size}-{self.device}"


# Basic (18) and bottleneck (50) blocks, plain and residual. On the CPU at a width and input small
# enough for a few ms per call; on a GPU at full size.
CPU_CASES = [Case(depth, arch, 8, 32, 8, "cpu") for depth in (18, 50) for arch in resnet.ARCHS]
GPU_CASES = [Case(depth, arch, 64, 224, 64, "cuda") for depth in (18, 50) for arch in resnet.ARCHS]


def threads() -> int:
    """The intra-op thread count CPU benchmarks run with."""
    value = os.environ.get(THREADS_ENV, "1")
    if not value.isdigit() or int(value) < 1:
        raise pytest.UsageError(f"{THREADS_ENV}={value!r}: set it to a positive thread count")
    return int(value)


def injected_slowdown() -> float:
    """The fraction by which benchmarked calls are stretched on purpose (0: not at all)."""
    value = os.environ.get(SLOWDOWN_ENV, "0")
    try:
        slowdown = float(value)
    except ValueError:
        slowdown = -1.0
    if slowdown < 0:
        raise pytest.UsageError(f"{SLOWDOWN_ENV}={value!r}: set it to a fraction such as 0.5 (50% slower)")
    return slowdown


def reference_workload(device: torch.device) -> Callable[[], None]:
    """A fixed stack of 3x3 convolutions on `device`: the yardstick the benchmarks are timed in."""
    generator = torch.Generator().manual_seed(0)
    shape = (8, 16, 32, 32) if device.type == "cpu" else (64, 64, 56, 56)
    x = torch.randn(shape, generator=generator).to(device)
    weights = [torch.randn(shape[1], shape[1], 3, 3, generator=generator).to(device) * 0.05 for _ in range(4)]

    def run() -> None:
        y = x
        for w in weights:
            y = F.relu(F.conv2d(y, w, padding=1))

    return run


def run_benchmark(benchmark, case: Case, phase: str, *, full: bool) -> None:
    """Time `phase` of `case`'s network with pytest-benchmark, in reference units."""
    global _clock, _unit
    # As bench run and bench time run: without it some rounds fault their activations in afresh and others do
    # not, and a median of the two modes hid a 50% slowdown (bench.core.allocator).
    keep_freed_memory()
    device = torch.device(case.device)
    torch.manual_seed(0)
    model = resnet.build_model(case.depth, case.arch, width=case.width).to(device)
    images = torch.randn(case.batch_size, 3, case.input_size, case.input_size, device=device)
    labels = torch.randint(10, (case.batch_size,), device=device)
    step = make_phase(model, phase, images, labels)
    reference = reference_workload(device)
    slowdown = injected_slowdown()
    references: list[float] = []
    seconds: list[float] = []

    def calibrate() -> None:
        # Runs before every round, outside the timed region: the unit follows the machine's load.
        global _unit
        start = _clock()
        reference()
        synchronize(device)
        references.append(_clock() - start)
        _unit = statistics.median(references[-REFERENCE_WINDOW:])

    def call() -> None:
        start, wall = _clock(), time.perf_counter()
        step()
        synchronize(device)
        if slowdown:
            # Spin rather than sleep: the CPU clock does not run while the process sleeps.
            deadline = _clock() + slowdown * (_clock() - start)
            while _clock() < deadline:
                pass
        seconds.append(time.perf_counter() - wall)

    old_threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(threads())
    _clock = time.process_time if device.type == "cpu" else time.perf_counter
    try:
        for _ in range(REFERENCE_WINDOW):
            calibrate()
        schedule = FULL if full else QUICK
        benchmark.pedantic(call, setup=calibrate, **schedule)
        median = statistics.median(seconds[schedule["warmup_rounds"]:] or seconds)
        benchmark.extra_info.update(
            asdict(case), phase=phase, images_per_second=case.batch_size / median, median_ms=median * 1e3,
            reference_ms=statistics.median(references) * 1e3, clock=_clock.__name__,
            threads=torch.get_num_threads(), device_name=device_name(device), injected_slowdown=slowdown,
        )
    finally:
        torch.set_num_threads(old_threads)
        _clock, _unit = time.perf_counter, 1.0


def fingerprint() -> dict[str, object]:
    """What makes times from two runs comparable: CPU, threads, GPU, torch."""
    return {
        "cpu": cpu_name(),
        "cpu_id": cpu_id(),
        "cpu_count": os.cpu_count(),
        "threads": threads(),
        "gpu": device_name("cuda") if torch.cuda.is_available() else None,
        "torch": torch.__version__,
    }


# The stats of a saved benchmark the gate may compare (`--benchmark-compare-fail=median:15%`): each a finite
# number >= 0, or the comparison is against nothing (NaN compares false with everything, so NaN passes any gate).
COMPARED_STATS = ("min", "max", "mean", "stddev", "median", "iqr")


def baseline_problem(saved: object) -> str | None:
    """What makes a saved benchmark run (pytest-benchmark's JSON, loaded) one the gate cannot compare against,
    in words, or None: a machine fingerprint that is not fingerprint()'s keys with plain values, a benchmark
    without its name or stats, a stat that is not a finite number >= 0."""
    if not isinstance(saved, dict) or not isinstance(saved.get("machine_info"), dict):
        return "it has no machine_info"
    theirs = saved["machine_info"].get("resnet_bench")
    if theirs is not None:  # absent: a run saved before fingerprints, refused by machine_differences
        if not isinstance(theirs, dict):
            return f"its resnet_bench machine fingerprint is a {type(theirs).__name__}, not a mapping"
        for key in fingerprint():
            if key not in theirs or not isinstance(theirs[key], (str, int, type(None))):
                return f"its resnet_bench machine fingerprint has no plain {key!r}"
    benchmarks = saved.get("benchmarks")
    if not isinstance(benchmarks, list):
        return "it has no list of benchmarks"
    for index, bench in enumerate(benchmarks):
        if not isinstance(bench, dict) or not isinstance(bench.get("fullname"), str) \
                or not isinstance(bench.get("stats"), dict):
            return f"its benchmark {index} has no fullname or stats"
        for stat in COMPARED_STATS:
            value = bench["stats"].get(stat)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0:
                return f"{bench['fullname']}'s {stat} is {value!r}, not a finite number >= 0"
    return None


def machine_differences(now: dict[str, object], saved: dict[str, object] | None) -> list[str]:
    """How the machine of a saved run differs from this one, one 'key: saved -> now' per difference."""
    if not saved:
        return ["the saved run has no resnet_bench machine fingerprint"]
    return [f"{key}: {saved.get(key)!r} -> {value!r}" for key, value in now.items() if saved.get(key) != value]
