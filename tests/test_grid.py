"""bench.run.grid: how `bench run` reaches a run, and what one run of a grid leaves to the next."""

from __future__ import annotations

import dataclasses
import gc
import inspect
import json
import weakref
from pathlib import Path

import pytest

from bench.core import modes

from bench.run import progress, train

from bench.core.config import QUICK, GridConfig, RunConfig
from bench.results import store
from bench.run.grid import run_grid
from bench.run.planner import configuration, plan
from tests.conftest import TINY_GRID, bench, one_line_exit_2


@pytest.mark.slow
def test_a_run_is_freed_before_the_next_is_built_also_in_a_reference_cycle(tmp_path, data_dir, monkeypatch):
    # torch.cuda.make_graphed_callables leaves a --cuda-graph run's module in a reference
    # cycle (torch/cuda/graphs.py: `func.forward = make_graphed_forward(func, ..., func.forward)`, a closure
    # over the module), so its graphs and memory pools outlive the run until the cyclic collector runs, and
    # a later, deeper net can run out of memory. The same cycle on the CPU, the automatic collector off.
    built: list[weakref.ref] = []

    def make_model(config, data):
        assert all(ref() is None for ref in built), "the last run's model is alive as the next one is built"
        model = real_make_model(config, data)
        original = model.forward
        model.forward = lambda x: original(x)
        built.append(weakref.ref(model))
        return model

    real_make_model = train.make_model
    monkeypatch.setattr(train, "make_model", make_model)
    base = RunConfig(preset="test", dataset="synthetic", width=2, epochs=1, iterations=None, batch_size=32,
                     train_subset=64, test_subset=32, device="cpu")
    gc.disable()
    try:
        summary = run_grid(GridConfig(base=base, depths=(8,), seeds=(0, 1), data_dir=str(data_dir),
                                      results=str(tmp_path)), progress=False)
    finally:
        gc.enable()
    assert [item.state for item in summary] == ["finished"] * 4 and len(built) == 4


@pytest.mark.slow
def test_bench_run_reaches_a_runs_life_in_three_frames(tmp_path, data_dir, monkeypatch):
    # A reader follows `bench run` down to one run's life (train_run, per epoch: train, evaluate, divergence,
    # save, status, deadline) through the command, the grid, and that function: no layer between.
    seen = []
    real_start = progress.GridProgress.start

    def start(self, run):
        frames = [(Path(f.filename).name, f.function) for f in inspect.stack()[1:]]
        seen.append(frames[:frames.index(("cli.py", "run")) + 1])
        real_start(self, run)

    monkeypatch.setattr(progress.GridProgress, "start", start)
    result = bench("run", "--depths", "8", "--arch", "plain", "--epochs", "1", "--device", "cpu", "--dataset",
                   "synthetic", "--width", "2", "--batch-size", "32", "--train-subset", "64", "--test-subset", "32",
                   "--data-dir", str(data_dir), "--results", str(tmp_path), "--no-progress")
    assert result.exit_code == 0, result.output
    assert seen == [[("train.py", "train_run"), ("grid.py", "run_grid"), ("cli.py", "run")]]


ZEN3, UNMEASURED = ("AuthenticAMD", "25", "1"), ("GenuineIntel", "6", "0")


def _tiny_grid(data_dir, results, **options) -> GridConfig:
    """The conftest's TINY_GRID as a GridConfig (the same run_ids), the memory format left to `plan`."""
    base = dataclasses.replace(QUICK, dataset="synthetic", device="cpu", width=2, batch_size=32, train_subset=128,
                               test_subset=32, epochs=2, iterations=None, **options)
    return GridConfig(base=base, depths=(8,), archs=("plain", "residual"), data_dir=str(data_dir),
                      results=str(results))


@pytest.mark.parametrize("cpu, precision, expected", [(ZEN3, "fp32", True), (UNMEASURED, "fp32", False),
                                                      (ZEN3, "bf16", False)])
def test_a_new_run_gets_the_memory_format_measured_fastest_for_its_net_on_its_cpu(tmp_path, data_dir, monkeypatch,
                                                                                  cpu, precision, expected):
    monkeypatch.setattr(modes, "CHANNELS_LAST_WINS", {(ZEN3, "fp32"): frozenset({(8, 2)})})
    monkeypatch.setattr(modes, "cpu_model", lambda: cpu)
    planned = plan(_tiny_grid(data_dir, tmp_path, precision=precision))
    assert [run.channels_last for run in planned.runs] == [expected, expected]
    told = plan(_tiny_grid(data_dir, tmp_path, precision=precision, channels_last=not expected))
    assert [run.channels_last for run in told.runs] == [not expected, not expected]


def test_the_measured_defaults_name_the_nets_they_were_measured_for(monkeypatch):
    monkeypatch.setattr(modes, "cpu_model", lambda: ZEN3)
    assert modes.default_channels_last("cpu", "fp32", 56, 16) and modes.default_channels_last("cpu", "fp32", 50, 16)
    assert not modes.default_channels_last("cpu", "fp32", 20, 16)  # measured, and no faster
    assert not modes.default_channels_last("cpu", "fp32", 50, 64)  # not measured at that width
    assert not modes.default_channels_last("cpu", "fp32", 50, 16, 224)  # nor at that input size
    assert not modes.default_channels_last("cuda", "fp32", 56, 16)


@pytest.mark.slow
def test_a_started_run_keeps_the_memory_format_its_config_records(tmp_path, data_dir, monkeypatch):
    # A resume computes what an unbroken run would only in the format the run started in, whatever this
    # machine would pick for a new run; a format the command names still wins.
    results = tmp_path / "results"
    result = bench("run", *TINY_GRID, "--channels-last", "--data-dir", str(data_dir), "--results", str(results))
    assert result.exit_code == 0, result.output
    monkeypatch.setattr(modes, "cpu_model", lambda: UNMEASURED)  # where a new run would train contiguous
    planned = plan(_tiny_grid(data_dir, results))
    assert [json.loads((planned.directory(run) / store.CONFIG).read_text())["config"]["channels_last"]
            for run in planned.runs] == [True, True]
    assert [run.channels_last for run in planned.runs] == [True, True]
    assert configuration(_tiny_grid(data_dir, results), planned)["channels_last"] is True  # what bench run prints
    assert [run.channels_last for run in plan(_tiny_grid(data_dir, results, channels_last=False)).runs] == [False] * 2
    # A grid of a started run and a new one: the configuration line names each run's format.
    grid = dataclasses.replace(_tiny_grid(data_dir, results), seeds=(0, 1))
    mixed = plan(grid)
    assert configuration(grid, mixed)["channels_last"] == {run.run_id(): run.seed == 0 for run in mixed.runs}


def test_cuda_graph_under_torchrun_is_refused_before_any_data_is_loaded_or_model_built(tmp_path, monkeypatch):
    # The plan refuses it (on a machine without a GPU too: a named device is refused only when the grid trains).
    monkeypatch.setattr(train, "make_model", lambda *args: pytest.fail("a model was built"))
    monkeypatch.setattr("bench.run.grid.load_dataset", lambda *args, **kwargs: pytest.fail("data was loaded"))
    results = tmp_path / "results"
    torchrun = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}
    result = bench("run", "--depths", "8", "--arch", "plain", "--device", "cuda", "--cuda-graph", "--dataset",
                   "synthetic", "--epochs", "1", "--no-progress", "--results", str(results), env=torchrun)
    one_line_exit_2(result, "--cuda-graph runs one process per run", "leave out torchrun")
    assert not results.exists()
    # Without torchrun the same run plans.
    base = RunConfig(preset="test", dataset="synthetic", width=2, epochs=1, iterations=None, device="cuda",
                     cuda_graph=True)
    assert plan(GridConfig(base=base, depths=(8,), archs=("plain",), results=str(results))).runs


@pytest.mark.timeout(120)
def test_a_batch_the_training_images_cannot_hold_is_refused_before_any_data_is_loaded(tmp_path, monkeypatch):
    # The plan knows the training split's size before decoding: an option for the synthetic set (capped by
    # --train-subset), a listing for an ImageFolder (whose files here are not even images), a release's for CIFAR.
    monkeypatch.setattr("bench.run.grid.load_dataset", lambda *args, **kwargs: pytest.fail("data was loaded"))
    folder = tmp_path / "images"
    for split in ("train", "test"):
        for cls in ("a", "b"):
            (folder / split / cls).mkdir(parents=True)
            (folder / split / cls / "0.jpg").write_text("not an image")
    results, data = tmp_path / "results", tmp_path / "data"
    args = ["run", "--depths", "8", "--arch", "plain", "--device", "cpu", "--epochs", "1", "--no-progress",
            "--data-dir", str(data), "--results", str(results)]
    for given, said in [(["--dataset", "synthetic", "--batch-size", "512", "--train-subset", "256"], "256"),
                        (["--dataset", "synthetic", "--batch-size", "512", "--train-subset", "256", "--dry-run"],
                         "256"),
                        (["--dataset", f"imagefolder:{folder}", "--batch-size", "4"], "2")]:
        one_line_exit_2(bench(*args, *given), f"--batch-size {given[3]} is larger than the {said} training images",
                        "use a smaller batch")
    # Under torchrun the global batch must divide over the processes; said before any rank sets its device up.
    torchrun = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}
    one_line_exit_2(bench(*args, "--dataset", "synthetic", "--batch-size", "33", env=torchrun),
                    "--batch-size 33 (the global batch) must divide evenly over 2 processes")
    assert not results.exists() and not data.exists()
    # The whole set and a subset larger than it: a batch that fits plans.
    base = RunConfig(preset="test", dataset=f"imagefolder:{folder}", width=2, epochs=1, iterations=None,
                     batch_size=2, train_subset=100)
    assert plan(GridConfig(base=base, depths=(8,), archs=("plain",), data_dir=str(data), results=str(results))).runs
