"""Forward and training-step throughput of plain and residual nets, basic and bottleneck blocks.

Times are in units of a reference workload (see harness.py); images/s are in each benchmark's extra_info.
"""

from __future__ import annotations

import pytest
import torch

from .harness import CPU_CASES, GPU_CASES, Case, reference_clock, run_benchmark

# The garbage collector is off while a call is timed: a full collection of a heap holding torch takes
# longer than the calls themselves.
pytestmark = pytest.mark.benchmark(timer=reference_clock, disable_gc=True)

PHASES = ("forward", "train_step")


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("case", CPU_CASES, ids=lambda case: case.id)
def test_cpu_throughput(benchmark, full_run: bool, case: Case, phase: str) -> None:
    benchmark.group = f"cpu {phase}"
    run_benchmark(benchmark, case, phase, full=full_run)
    _check_recorded(benchmark, case)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda case: case.id)
def test_gpu_throughput(benchmark, full_run: bool, case: Case, phase: str) -> None:
    benchmark.group = f"gpu {phase}"
    run_benchmark(benchmark, case, phase, full=full_run)
    _check_recorded(benchmark, case)


def _check_recorded(benchmark, case: Case) -> None:
    """What a benchmark records beside its time: images/s is the batch over the wall-clock median of the timed
    calls, and the reference workload that the time is in units of took time. Whether the time itself got
    worse is the compare workflow's to say (docs/benchmarks.md), never a bound on wall time here."""
    info = benchmark.extra_info
    assert info["median_ms"] > 0 and info["reference_ms"] > 0
    assert info["images_per_second"] == pytest.approx(case.batch_size / (info["median_ms"] / 1e3))
