"""bench.timing.timing: the three phases, the parquet contract, honest numbers, missing devices, references, errors."""

from __future__ import annotations

import gc
import importlib
import time
import weakref
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

import resnet
from bench.core.errors import BenchError
from bench.run.step import TrainStep
from bench.timing import timing as timing_module
from bench.timing.timing import OOM, OK, PHASES, TIMING_SCHEMA, TimeConfig, measure
from bench.timing.timing_rows import timing_rich_table
from tests.conftest import run_timing

# The columns the issue promises, in order; status, width, git_commit, cuda_graph, stem and the math flags follow
# them.
CONTRACT = ["model", "arch", "depth", "family", "device", "device_name", "batch_size", "input_size", "precision",
            "channels_last", "compiled", "phase", "median_ms", "iqr_ms", "images_per_second", "peak_memory_bytes",
            "params", "flops_per_image", "tflops", "threads", "torch_version", "timestamp"]

# One intra-op thread: the 2-core test machine is shared, and a parallel region stalls on a busy core.
TINY = dict(width=4, input_size=16, batch_sizes=(2,), warmup=1, repeats=2, min_time=0.0, threads=1)


@pytest.mark.slow
def test_three_phases_and_exact_schema(tmp_path: Path) -> None:
    config = TimeConfig(depths=(8,), results=tmp_path, **TINY)
    frame = run_timing(config, progress=False, notify=lambda message: pytest.fail(message))

    path = Path(frame.attrs["path"])
    assert path.parent == tmp_path / "timing" and path.suffix == ".parquet"
    assert not [p for p in path.parent.iterdir() if p != path], "the temporary file was left behind"
    schema = pq.read_schema(path).remove_metadata()
    assert schema.equals(TIMING_SCHEMA)
    assert schema.names[:len(CONTRACT)] == CONTRACT
    assert schema.names[len(CONTRACT):] == ["status", "width", "git_commit", "cuda_graph", "stem", "cudnn_benchmark",
                                            "allow_tf32_matmul", "allow_tf32_cudnn"]
    assert pq.read_table(path).to_pandas().equals(frame)

    assert sorted(frame["model"].unique()) == ["plain-8", "residual-8"]
    for _, rows in frame.groupby("model"):
        assert tuple(rows["phase"]) == PHASES
    assert (frame["status"] == OK).all()
    assert (frame["median_ms"] > 0).all() and (frame["iqr_ms"] >= 0).all()
    assert frame["images_per_second"].tolist() == pytest.approx((2e3 / frame["median_ms"]).tolist())
    residual = resnet.build_model(8, "residual", width=4)
    row = frame[frame["model"] == "residual-8"].iloc[0]
    assert row["params"] == resnet.count_parameters(residual)
    assert row["flops_per_image"] == 2 * resnet.count_macs(residual, 16)
    assert (row["family"], row["input_size"], row["device"], row["width"]) == ("cifar", 16, "cpu", 4)
    assert row["threads"] == 1
    # bench run's settings (bench.run.step.device_settings), read back: fp32 is IEEE fp32, cudnn autotunes.
    assert frame["cudnn_benchmark"].all()
    assert not frame["allow_tf32_matmul"].any() and not frame["allow_tf32_cudnn"].any()
    assert row["peak_memory_bytes"] > 10 * 2**20  # a resident set: at least the Python interpreter and torch
    train = frame[frame["phase"] == "train_step"].iloc[0]
    assert train["tflops"] == pytest.approx(3 * train["flops_per_image"] * 2 / (train["median_ms"] / 1e3) / 1e12)
    assert timing_rich_table(frame).row_count == len(frame)


def test_measure_is_torch_utils_benchmark_with_this_process_threads() -> None:
    seen: list[int] = []

    def nap() -> None:  # 5 ms of wall time, whatever the machine's load; records the threads it ran with
        seen.append(torch.get_num_threads())
        time.sleep(0.005)

    old = torch.get_num_threads()
    torch.set_num_threads(2)  # torch.utils.benchmark.Timer would run on one thread unless told
    try:
        started = time.perf_counter()
        timing = measure(nap, warmup=1, repeats=4, min_time=0.1)
        elapsed = time.perf_counter() - started
    finally:
        torch.set_num_threads(old)
    assert set(seen) == {2}
    # Samples are the Timer's blocks (10 calls of 5 ms here), at least 4 of them and 0.1 s of calls.
    assert len(timing.samples) >= 4 and len(seen) * 0.005 >= 0.1
    # A sample is the time of one call of its block, not the block's total: every call sleeps 5 ms at least,
    # and the calls made, at the median's time each, fit in the time measuring took (a block's total, 10
    # calls, would not), however slow a loaded machine makes each call. Speed itself is the benchmark
    # suite's to gate (tests/benchmarks, the compare workflow), never wall time here.
    assert timing.median >= 0.005 and timing.iqr >= 0
    assert timing.median * len(seen) <= 2 * elapsed, (timing.median, len(seen), elapsed)
    assert len(measure(nap, warmup=0, repeats=3).samples) == 3


class _Cyclic(nn.Module):
    """A forward in the reference cycle torch.cuda.make_graphed_callables leaves a graphed module in: the
    module's forward is an instance attribute closing over the module (torch/cuda/graphs.py,
    `func.forward = make_graphed_forward(func, ...)`), so only the cyclic garbage collector frees it."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.forward = lambda x: self.inner(x)


@pytest.mark.slow
def test_a_batch_is_measured_without_the_last_batchs_tensors_steps_and_graphs(tmp_path: Path, monkeypatch) -> None:
    # What one batch size allocated (inputs, TrainStep with its optimizer state, the
    # accelerated forward) must be gone before the next one allocates its own and opens its peak-memory
    # window, also when it sits in a reference cycle. The automatic collector is off, so only an explicit
    # collection frees a cycle.
    made: list[tuple[int, str, weakref.ref]] = []  # (batch size, what, weak reference)
    batch = {"now": 0}

    def stale() -> list[tuple[int, str]]:
        return [(b, what) for b, what, ref in made if ref() is not None and (what == "step" or b != batch["now"])]

    def accelerate(model, mode, images, precision):
        assert not stale(), "the last batch's objects are alive while this batch allocates"
        batch["now"] = len(images)
        made.append((len(images), "images", weakref.ref(images)))
        forward = _Cyclic(model)
        made.append((len(images), "forward", weakref.ref(forward)))
        return forward

    def make_phase(model, phase, images, labels, **kwargs):
        call = real_make_phase(model, phase, images, labels, **kwargs)
        step = getattr(call.func, "__self__", call.func)
        if isinstance(step, TrainStep):
            made.append((len(images), "step", weakref.ref(step)))
        return call

    def reset_peak_memory(device):
        assert not stale(), "the last phase's or batch's objects are alive as this phase's peak window opens"
        real_reset(device)

    real_reset, real_make_phase = timing_module.reset_peak_memory, timing_module.make_phase
    monkeypatch.setattr(timing_module, "accelerate", accelerate)
    monkeypatch.setattr(timing_module, "make_phase", make_phase)
    monkeypatch.setattr(timing_module, "reset_peak_memory", reset_peak_memory)
    gc.disable()
    try:
        config = TimeConfig(depths=(8,), archs=("plain",), results=tmp_path, **{**TINY, "batch_sizes": (2, 3, 4)})
        frame = run_timing(config, progress=False, notify=pytest.fail)
    finally:
        gc.enable()
    assert (frame["status"] == OK).all() and len(frame) == 9
    assert {b for b, what, _ in made if what == "step"} == {2, 3, 4}


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_missing_cuda_is_skipped_with_one_notice(tmp_path: Path) -> None:
    notices: list[str] = []
    frame = run_timing(TimeConfig(depths=(8,), archs=("plain",), devices=("cuda", "cpu"), results=tmp_path, **TINY),
                       progress=False, notify=notices.append)
    assert len(notices) == 1 and "cuda" in notices[0] and "\n" not in notices[0]
    assert set(frame["device"]) == {"cpu"} and len(frame) == len(PHASES)

    notices.clear()
    frame = run_timing(TimeConfig(depths=(8,), devices=("cuda",), results=tmp_path / "none", **TINY),
                       progress=False, notify=notices.append)
    assert frame.empty and frame.attrs["path"] is None and not (tmp_path / "none").exists()
    assert any("cuda" in n for n in notices)


@pytest.mark.slow
def test_reference_is_torchvision_beside_ours(tmp_path: Path) -> None:
    config = TimeConfig(depths=(18,), archs=("residual",), reference=True, input_size=32, batch_sizes=(2,),
                        warmup=0, repeats=1, min_time=0.0, threads=1, results=tmp_path)
    frame = run_timing(config, progress=False)
    assert list(frame["model"].unique()) == ["residual-18", "torchvision-resnet18"]
    ours, theirs = (frame[frame["model"] == m].iloc[0] for m in ("residual-18", "torchvision-resnet18"))
    # Same network layer for layer: same parameters (11.7M with 1000 classes) and FLOPs.
    assert ours["params"] == theirs["params"] == 11_689_512
    assert ours["flops_per_image"] == theirs["flops_per_image"]
    assert len(frame[frame["model"] == "torchvision-resnet18"]) == len(PHASES)


@pytest.mark.slow
def test_out_of_memory_batch_is_recorded_and_the_sweep_goes_on(tmp_path: Path) -> None:
    if Path("/proc/sys/vm/overcommit_memory").read_text().strip() == "1":
        pytest.skip("with overcommit always on, a 1 TB batch would be granted and then OOM-kill the test run")
    huge = 400_000_000  # 1.2 TB of 16x16 images: the allocator refuses it at once
    notices: list[str] = []
    config = TimeConfig(depths=(8,), results=tmp_path, **{**TINY, "batch_sizes": (2, huge)})
    frame = run_timing(config, progress=False, notify=notices.append)
    assert len(notices) == 2 and all("out of memory" in n for n in notices)
    for model in ("plain-8", "residual-8"):
        rows = frame[frame["model"] == model]
        assert (rows[rows["batch_size"] == 2]["status"] == OK).all()
        oom = rows[rows["batch_size"] == huge]
        assert (oom["status"] == OOM).all() and len(oom) == len(PHASES) and oom["median_ms"].isna().all()
    assert "out of memory" in str([c._cells for c in timing_rich_table(frame).columns])


@pytest.mark.parametrize(("change", "message"), [
    ({"depths": (19,)}, "unknown depth 19"),
    ({"depths": (20,), "family": "imagenet"}, "not an imagenet depth"),
    ({"depths": (18,), "input_size": 32, "batch_sizes": (1,)}, "use a batch size of 2 or more"),
    ({"archs": ("dense",)}, "unknown arch 'dense'"),
    ({"devices": ("tpu",)}, "unknown device 'tpu'"),
    ({"precisions": ("fp8",)}, "unknown precision 'fp8'"),
    ({"batch_sizes": (0,)}, "batch size must be a positive integer"),
    ({"cuda_graph": True}, "--cuda-graph needs a CUDA device"),
    ({"cuda_graph": True, "compile": True}, "choose one"),
])
def test_bad_input_is_a_bench_error(tmp_path: Path, change: dict, message: str) -> None:
    with pytest.raises(BenchError, match=message):
        run_timing(TimeConfig(**{**TINY, "results": tmp_path, **change}), progress=False)
    assert not (tmp_path / "timing").exists()


# A fresh process: this one is warm already. Forward of a CIFAR net whose activations (4 MiB at batch 64, width
# 16) are above glibc's first mmap threshold, so that without bench.core.allocator every call faults them in afresh.
_COLD_WARM = """
import json, sys, torch
from bench.timing.timing import TimeConfig, sweep
if sys.argv[2] == "off":
    import bench.timing.timing
    bench.timing.timing.keep_freed_memory = lambda: False
config = TimeConfig(depths=(8,), archs=("residual",), family="cifar", width=16, batch_sizes=(64,), warmup=3,
                    repeats=15, min_time=0.0, threads=1, results=sys.argv[1])
times = [sweep(config, progress=False, notify=lambda _: None).rows.set_index("phase")["median_ms"]["forward"]
         for _ in range(2)]
print(json.dumps(times))
"""


def _cold_and_warm(tmp_path: Path, allocator: str = "on") -> list[float]:
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _COLD_WARM, str(tmp_path), allocator], capture_output=True,
                         text=True, check=True, cwd=Path(__file__).parents[1]).stdout
    return json.loads(out.splitlines()[-1])


@pytest.mark.slow
@pytest.mark.timeout(1200)  # three tries when all fail
def test_the_first_net_of_a_process_is_timed_warm(tmp_path: Path) -> None:
    # In a fresh process the first net's forward ran 2x slower than the same net timed again.
    # Without bench.core.allocator the cold median was 1.7x to 2x the warm one in every try; a busy machine can make
    # one try of the same code disagree too, so a regression is three tries out of three (and one try that
    # agrees is enough: the next two are not made).
    tries: list[list[float]] = []
    while len(tries) < 3 and not any(cold < 1.4 * warm for cold, warm in tries):
        tries.append(_cold_and_warm(tmp_path))
    assert any(cold < 1.4 * warm for cold, warm in tries), tries


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_freed_memory_is_kept_so_a_loop_stops_faulting() -> None:
    # The cause behind the test above, counted rather than timed: minor page faults per forward call.
    import subprocess
    import sys

    script = """
import sys, torch, resnet
from bench.core.allocator import keep_freed_memory
from bench.run.step import predict
if sys.argv[1] == "on":
    assert keep_freed_memory()
torch.set_num_threads(1)
model, x = resnet.build_model(8, "residual", width=16).eval(), torch.randn(64, 3, 32, 32)
def faults(): return int(open("/proc/self/stat").read().split()[9])
counts = []
for _ in range(16):
    before = faults(); predict(model, x, "fp32"); counts.append(faults() - before)
print(counts)
"""
    if not Path("/proc/self/stat").exists() or not importlib.import_module("bench.core.allocator").keep_freed_memory():
        pytest.skip("needs Linux with glibc")
    counts = {mode: eval(subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True,
                                        check=True, cwd=Path(__file__).parents[1]).stdout)
              for mode in ("off", "on")}
    # Past the warm-up: each call faults its activations in again, against a rare stray block once kept.
    assert sum(counts["on"][8:]) < 0.1 * sum(counts["off"][8:]), counts
