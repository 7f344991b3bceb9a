import datetime as dt
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from bench.cli import app, expand_lists
from bench.core.config import RunConfig
from bench.results import store
from bench.timing.timing import sweep
from resnet import Arch, register, unregister


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny nets gain nothing from a second thread, and OpenMP threads that spin on a busy 2-core machine
    # make them 30x slower. One fixed thread count also keeps CPU numerics reproducible.
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _cpu_unless_marked_gpu(request, monkeypatch):
    # A test not marked gpu that leaves --device auto would train on the GPU where there is one, and fail
    # there: bitwise resumes are not promised on GPUs, messages say "on cuda", gloo becomes NCCL.
    # Here it fails on every machine, naming the fix. Tests that start `bench` as a process pass --device cpu.
    if request.node.get_closest_marker("gpu"):
        return
    import bench.report.analyze
    import bench.run.grid
    from bench.core.config import resolve_device

    def cpu_unless_told(name: str) -> torch.device:
        if name == "auto":
            raise AssertionError("this test leaves --device auto, which is the GPU where there is one: pass "
                                 "--device cpu (RunConfig(device='cpu')), or mark the test gpu")
        return resolve_device(name)

    for module in (bench.run.grid, bench.report.analyze):
        monkeypatch.setattr(module, "resolve_device", cpu_unless_told)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """A data folder shared by the tests of one session, so the offline set is generated once."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def tiny_data(data_dir):
    """A small slice of the offline set: enough for a few iterations of a narrow net."""
    from bench.data.data import load_dataset, take_subset

    data = load_dataset("synthetic", data_dir, synthetic_train=1024, synthetic_test=256, progress=False)
    return take_subset(data, 512, 128)


# --- helpers the test modules share -------------------------------------------------------------------------------

CPU = torch.device("cpu")
# The training tests' run: a narrow plain-8 for 3 epochs of `tiny_data` (8 iterations each).
TINY_RUN = RunConfig(arch="plain", depth=8, width=4, preset="test", dataset="synthetic", iterations=None, epochs=3,
                     batch_size=64, lr=0.05)
# The epoch columns that are measurements, not numbers a run computes: they differ between two equal runs.
MEASURED_COLUMNS = ["epoch_seconds", "images_per_second", "timestamp"]


def epoch_numbers(directory: Path) -> pd.DataFrame:
    """A run folder's epoch rows without the measured columns: equal for runs that computed the same."""
    return pd.read_parquet(directory / store.EPOCHS).drop(columns=MEASURED_COLUMNS)


def epoch_row(epoch: int, **over) -> dict:
    """An epochs.parquet row of a plain-20 at `epoch`, any column changed by `over`."""
    row = {"run_id": "plain-20-s0-x", "dataset": "synthetic", "arch": "plain", "depth": 20, "width": 16,
           "shortcut": "A", "seed": 0, "preset": "quick", "epoch": epoch, "iteration": 10 * epoch, "lr": 0.1,
           "train_loss": 1.0, "train_error": 0.5, "test_loss": 1.1, "test_error": 0.55, "epoch_seconds": 1.0,
           "images_per_second": 100.0, "device": "cpu", "precision": "fp32",
           "timestamp": dt.datetime.now(dt.timezone.utc)}
    return {**row, **over}


def bench(*args: str, env: dict | None = None):
    """The real `bench` app in this process, its list options expanded as the console script does."""
    return CliRunner().invoke(app, expand_lists(list(args)), env=env)


def one_line_exit_2(result, *fragments: str) -> None:
    """Exit code 2 and the error as the last line of stderr, whole, with what it must say."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output, result.output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in last, result.output


def run_timing(config, **options) -> pd.DataFrame:
    """`bench.timing.timing.sweep`'s rows, with where they were written (``attrs["path"]``, a str or None), whether
    the sweep was interrupted, and ``attrs["error"]`` when writing went wrong."""
    result = sweep(config, **{"progress": False, **options})
    frame = result.rows.copy()
    frame.attrs.update(path=None if result.path is None else str(result.path), interrupted=result.interrupted)
    if result.error is not None:
        frame.attrs["error"] = result.error
    return frame


# A finished grid small enough to copy per test: plain-8 and residual-8, width 2, two epochs, synthetic data.
TINY_GRID = ["--depths", "8", "--device", "cpu", "--dataset", "synthetic", "--preset", "quick", "--width", "2",
            "--batch-size", "32", "--train-subset", "128", "--test-subset", "32", "--epochs", "2", "--no-progress"]


@pytest.fixture(scope="session")
def _finished_once(tmp_path_factory, data_dir) -> Path:
    results = tmp_path_factory.mktemp("finished") / "results"
    result = bench("run", *TINY_GRID, "--data-dir", str(data_dir), "--results", str(results))
    assert result.exit_code == 0, result.output
    return results


@pytest.fixture
def finished_grid(_finished_once, tmp_path) -> Path:
    """A results folder of this test's own holding two finished runs (plain-8 and residual-8, TINY_GRID), each
    with its config.json, status.json, epochs.parquet, layers.parquet and last checkpoint."""
    import shutil

    results = tmp_path / "results"
    shutil.copytree(_finished_once, results)
    return results


def grid_folder(results: Path, arch: str) -> Path:
    """The run folder of `arch` (plain or residual) in a `finished_grid`."""
    [folder] = results.glob(f"synthetic/{arch}-8-*")
    return folder


# Built from the existing block options only: DiracNets' convs inside the residual net's blocks.
THROWAWAY = Arch("dirac-residual", "Dirac convs with shortcuts", "cool", shortcut=True, dirac=True)


@pytest.fixture
def throwaway_arch():
    """THROWAWAY registered for one test, and gone afterwards whatever the test did."""
    register(THROWAWAY)
    try:
        yield THROWAWAY
    finally:
        unregister(THROWAWAY.name)
