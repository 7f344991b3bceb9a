import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from bench import store
from bench.cli import expand_lists
from tests.conftest import bench

TINY = ["--device", "cpu", "--dataset", "synthetic", "--preset", "quick", "--width", "4", "--batch-size", "32",
        "--train-subset", "256", "--test-subset", "64", "--no-progress"]


def test_list_options_take_several_values():
    assert expand_lists(["run", "--depths", "18", "34", "--seeds", "0", "1", "--lr", "0.1"]) == [
        "run", "--depths", "18", "--depths", "34", "--seeds", "0", "--seeds", "1", "--lr", "0.1"]
    # `run` trains on one device; `time` sweeps several.
    assert expand_lists(["run", "--device", "cpu"]) == ["run", "--device", "cpu"]
    assert expand_lists(["time", "--device", "cpu", "cuda"]) == ["time", "--device", "cpu", "--device", "cuda"]


def test_dry_run_prints_one_line_per_run_starting_with_its_id(tmp_path, data_dir):
    result = bench("run", "--depths", "18", "34", "--seeds", "0", "1", "--data-dir", str(data_dir),
                   "--results", str(tmp_path), "--dry-run", *TINY)
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 8
    assert all(line.split()[0].split("-")[0] in ("plain", "residual") for line in lines)
    assert not list(tmp_path.iterdir())  # nothing trained, nothing written


@pytest.mark.parametrize("args, fix", [
    (["run", "--depths", "19"], "choose one of"),
    (["run", "--depths", "18", "--preset", "fast"], "'quick', 'paper'"),
    (["run", "--depths", "18", "--shortcut", "Z"], "'A', 'B', 'C'"),
    (["run", "--depths", "18", "--arch", "dense"], "'plain', 'residual'"),
    (["run", "--depths", "18", "--device", "cpu", "--cuda-graph"], "--cuda-graph needs a CUDA device"),
    (["run"], "Missing option '--depths'"),
    (["time", "--depths", "18", "--precision", "fp8"], "'fp32', 'bf16'"),
    (["report", "--format", "gif"], "'png', 'svg', 'pdf'"),
    (["run", "--depths", "18", "--dataset", "mnist"], "cifar10"),
    (["run", "--depths", "18", "--epochs", "2", "--iterations", "9"], "not both"),
    (["run", "--depths", "18", "--shard", "5/4"], "between 1 and N"),
])
def test_bad_input_is_one_line_and_exit_code_2(args, fix, tmp_path):
    result = bench(*args, "--results", str(tmp_path))
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert fix in result.output and len(result.output.strip().splitlines()) == 1, result.output


def test_unwritable_results_folder_is_exit_code_2(tmp_path, data_dir):
    (tmp_path / "file").write_text("")
    result = bench("run", "--depths", "8", "--epochs", "1", "--data-dir", str(data_dir),
                   "--results", str(tmp_path / "file" / "results"), *TINY)
    assert result.exit_code == 2 and "--results" in result.output


def test_run_then_rerun_skips_finished_runs_and_report_draws_them(tmp_path, data_dir):
    args = ["run", "--depths", "8", "--epochs", "2", "--data-dir", str(data_dir), "--results", str(tmp_path), *TINY]
    first = bench(*args)
    assert first.exit_code == 0, first.output
    epochs, runs = store.read_results([tmp_path])
    assert sorted(runs["arch"]) == ["plain", "residual"] and set(runs["state"]) == {"finished"}
    assert len(epochs) == 4
    environment = store.read_json(next(tmp_path.glob(f"*/*/{store.CONFIG}")))["environment"]
    # What bench time measures under too (bench.step.device_settings): IEEE fp32, cudnn autotuning.
    assert (environment["cudnn_benchmark"], environment["allow_tf32_matmul"], environment["allow_tf32_cudnn"]) == (
        True, False, False)
    # Which CPU exactly: one model name ("AMD EPYC") covered two CPUs that trained 1.6x apart.
    if Path("/proc/cpuinfo").exists():
        assert re.fullmatch(r"\S+ family \d+ model \d+; .+", environment["cpu_id"]), environment["cpu_id"]
    files = sorted(tmp_path.glob(f"*/*/{store.EPOCHS}"))
    before = [path.stat().st_mtime_ns for path in files]
    second = bench(*args)
    assert second.exit_code == 0, second.output
    assert [path.stat().st_mtime_ns for path in files] == before  # nothing trained or written again
    drawn = bench("report", "--results", str(tmp_path), "--out", str(tmp_path / "reports"))
    assert drawn.exit_code == 0, drawn.output
    assert (tmp_path / "reports" / "synthetic-quick" / "degradation.png").stat().st_size > 10_000
    assert "plain-8" in (tmp_path / "reports" / "README.md").read_text()


def _cli(*args: str, results: Path, data_dir: Path) -> list[str]:
    return [sys.executable, "-m", "bench", "run", "--depths", "8", "--arch", "plain", "--epochs", "4",
            "--data-dir", str(data_dir), "--results", str(results), "--dataset", "synthetic", "--width", "8",
            "--batch-size", "32", "--train-subset", "1024", "--test-subset", "64", "--no-progress", "--device", "cpu",
            *args]


def test_kill_9_mid_epoch_then_rerun_gives_the_same_numbers(tmp_path, data_dir):
    """The promise of `bench run`: a killed run resumed gives what an uninterrupted one gives, epoch by epoch."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    whole = subprocess.run(_cli(results=tmp_path / "whole", data_dir=data_dir), env=env, capture_output=True,
                           text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr
    process = subprocess.Popen(_cli(results=tmp_path / "cut", data_dir=data_dir), env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list((tmp_path / "cut").glob(f"*/*/{store.EPOCHS}")) and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # well into epoch 2 (an epoch takes about a second here)
    process.send_signal(signal.SIGKILL)
    process.wait()
    (directory,) = {path.parent for path in (tmp_path / "cut").glob(f"*/*/{store.CONFIG}")}
    assert len(pd.read_parquet(directory / store.EPOCHS)) < 4  # it really was cut short
    resumed = subprocess.run(_cli(results=tmp_path / "cut", data_dir=data_dir), env=env, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    timing = ["epoch_seconds", "images_per_second", "timestamp"]
    (expected,) = (tmp_path / "whole").glob(f"*/*/{store.EPOCHS}")
    pd.testing.assert_frame_equal(pd.read_parquet(expected).drop(columns=timing),
                                  pd.read_parquet(directory / store.EPOCHS).drop(columns=timing))
