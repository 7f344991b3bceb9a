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
    assert benchmark.extra_info["images_per_second"] > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda case: case.id)
def test_gpu_throughput(benchmark, full_run: bool, case: Case, phase: str) -> None:
    benchmark.group = f"gpu {phase}"
    run_benchmark(benchmark, case, phase, full=full_run)
    assert benchmark.extra_info["images_per_second"] > 0
