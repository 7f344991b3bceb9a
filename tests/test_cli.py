import functools
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from bench.cli import expand_lists
from bench.results import reading, store
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


def test_dry_run_shows_the_recipe_and_the_ids_follow_it(tmp_path, data_dir):
    def lines(*args: str) -> list[str]:
        result = bench("run", "--depths", "8", "--arch", "plain", "--data-dir", str(data_dir), "--results",
                       str(tmp_path), "--dry-run", *TINY, *args)
        assert result.exit_code == 0, result.output
        return [line for line in result.stdout.splitlines() if line.strip()]

    (sgd,) = lines()
    assert "sgd lr=0.1 momentum=0.9 wd=0.0001 milestones=0.5,0.75" in sgd
    (adam,) = lines("--optimizer", "adam", "--lr-milestones", "none")
    assert "adam lr=0.001 wd=0 milestones=none" in adam and adam.split()[0] != sgd.split()[0]
    (tuned,) = lines("--momentum", "0.8", "--weight-decay", "5e-4", "--lr-milestones", "0.3", "0.6", "0.9")
    assert "sgd lr=0.1 momentum=0.8 wd=0.0005 milestones=0.3,0.6,0.9" in tuned
    assert tuned.split()[0] != sgd.split()[0]
    (same,) = lines("--optimizer", "sgd", "--momentum", "0.9", "--lr-milestones", "0.5", "0.75")
    assert same.split()[0] == sgd.split()[0]  # the preset's values, said again: the same run
    (imagenet,) = lines("--stem", "imagenet")
    assert imagenet.endswith(f"input=224 stem=imagenet  -> {tmp_path / 'synthetic' / imagenet.split()[0]}")


def test_the_imagenet_preset_dry_run_prints_section_3_4s_recipe(tmp_path, data_dir):
    def line(*args: str) -> str:
        result = bench("run", "--depths", "50", "--arch", "residual", "--preset", "imagenet", "--dataset",
                       "synthetic", "--data-dir", str(data_dir), "--results", str(tmp_path), "--dry-run", *args)
        assert result.exit_code == 0, result.output
        (planned,) = [line for line in result.stdout.splitlines() if line.strip()]
        return planned

    assert ("epochs=90 batch=256 sgd lr=0.1 momentum=0.9 wd=0.0001 milestones=0.333333,0.666667 (epochs 30,60) "
            "input=224") in line()
    assert "batch=512 sgd lr=0.2 " in line("--batch-size", "512")  # linear in the batch
    assert "batch=512 sgd lr=0.05 " in line("--batch-size", "512", "--lr", "0.05")  # unless --lr says otherwise
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("args, fix", [
    (["run", "--depths", "19"], "choose one of"),
    (["run", "--depths", "18", "--preset", "fast"], "'quick', 'paper', 'imagenet'"),
    (["run", "--depths", "18", "--shortcut", "Z"], "'A', 'B', 'C'"),
    (["run", "--depths", "18", "--arch", "dense"], "'plain', 'residual'"),
    (["run", "--depths", "18", "--device", "cpu", "--cuda-graph"], "--cuda-graph needs a CUDA device"),
    (["run"], "Missing option '--depths'"),
    (["time", "--depths", "18", "--precision", "fp8"], "'fp32', 'bf16'"),
    (["report", "--format", "gif"], "'png', 'svg', 'pdf'"),
    (["run", "--depths", "18", "--dataset", "mnist"], "cifar10"),
    (["run", "--depths", "18", "--epochs", "2", "--iterations", "9"], "not both"),
    (["run", "--depths", "18", "--shard", "5/4"], "between 1 and N"),
    (["run", "--depths", "18", "--shard", "0/0"], "between 1 and N"),
    (["run", "--depths", "18", "--shard", "half"], "write it as I/N"),
    (["run", "--depths", "18", "--devices", "0,one"], "give GPU indices"),
    (["run", "--depths", "18", "--device", "cpu", "--devices", "0"], "drop one of them"),
    (["run", "--depths", "18", "--optimizer", "lion"], "'sgd', 'adam', 'adamw'"),
    (["run", "--depths", "18", "--optimizer", "adam", "--momentum", "0.9"], "drop --momentum"),
    (["run", "--depths", "18", "--lr-milestones", "0.5", "1.5"], "1.5 is outside the run"),
    (["run", "--depths", "18", "--lr-milestones", "half"], "give fractions of the run"),
    (["run", "--depths", "18", "--input-size", "0"], "--input-size must be a positive integer"),
    (["run", "--depths", "18", "--input-size", "-5"], "--input-size must be a positive integer"),
    (["run", "--depths", "50", "--input-size", "1", "--batch-size", "1"], "too small for"),
    (["run", "--depths", "18", "--stem", "vgg"], "'imagenet', 'cifar'"),
])
def test_bad_input_is_one_line_and_exit_code_2(args, fix, tmp_path):
    result = bench(*args, "--results", str(tmp_path))
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert fix in result.output and len(result.output.strip().splitlines()) == 1, result.output


def test_devices_this_machine_lacks_are_one_line_and_exit_code_2(tmp_path):
    # Refused in the plan with its fix, whether the machine has no GPU or fewer than 100.
    result = bench("run", "--depths", "18", "--devices", "0,99", "--dry-run", "--results", str(tmp_path))
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "leave --devices out" in result.output or "indices run 0.." in result.output


def test_unwritable_results_folder_is_exit_code_2(tmp_path, data_dir):
    (tmp_path / "file").write_text("")
    result = bench("run", "--depths", "8", "--epochs", "1", "--data-dir", str(data_dir),
                   "--results", str(tmp_path / "file" / "results"), *TINY)
    assert result.exit_code == 2 and "--results" in result.output


@pytest.mark.slow
def test_run_then_rerun_skips_finished_runs_and_report_draws_them(tmp_path, data_dir):
    args = ["run", "--depths", "8", "--epochs", "2", "--data-dir", str(data_dir), "--results", str(tmp_path), *TINY]
    first = bench(*args)
    assert first.exit_code == 0, first.output
    epochs, runs = reading.read_results([tmp_path])
    assert sorted(runs["arch"]) == ["plain", "residual"] and set(runs["state"]) == {"finished"}
    assert len(epochs) == 4
    environment = store.read_json(next(tmp_path.glob(f"*/*/{store.CONFIG}")))["environment"]
    # What bench time measures under too (bench.run.step.device_settings): IEEE fp32, cudnn autotuning.
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


def _command(*args: str, results: Path, data_dir: Path) -> list[str]:
    return [sys.executable, "-m", "bench", "run", "--depths", "8", "--arch", "plain", "--epochs", "4",
            "--data-dir", str(data_dir), "--results", str(results), "--dataset", "synthetic", "--width", "8",
            "--batch-size", "32", "--train-subset", "1024", "--test-subset", "64", "--no-progress", "--device", "cpu",
            *args]


@pytest.mark.slow
@pytest.mark.timeout(800)
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_kill_9_mid_epoch_then_rerun_gives_the_same_numbers(tmp_path, data_dir, optimizer):
    """The promise of `bench run`: a killed run resumed gives what an uninterrupted one gives, epoch by epoch,
    whichever optimizer's state the checkpoint holds."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = functools.partial(_command, "--optimizer", optimizer)
    whole = subprocess.run(command(results=tmp_path / "whole", data_dir=data_dir), env=env, capture_output=True,
                           text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr
    process = subprocess.Popen(command(results=tmp_path / "cut", data_dir=data_dir), env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list((tmp_path / "cut").glob(f"*/*/{store.EPOCHS}")) and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # well into epoch 2 (an epoch takes about a second here)
    process.send_signal(signal.SIGKILL)
    process.wait()
    (directory,) = {path.parent for path in (tmp_path / "cut").glob(f"*/*/{store.CONFIG}")}
    assert len(pd.read_parquet(directory / store.EPOCHS)) < 4  # it really was cut short
    resumed = subprocess.run(command(results=tmp_path / "cut", data_dir=data_dir), env=env, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    timing = ["epoch_seconds", "images_per_second", "timestamp"]
    (expected,) = (tmp_path / "whole").glob(f"*/*/{store.EPOCHS}")
    pd.testing.assert_frame_equal(pd.read_parquet(expected).drop(columns=timing),
                                  pd.read_parquet(directory / store.EPOCHS).drop(columns=timing))


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_the_tutorial_resnet_50_at_224_with_adam_is_one_command(tmp_path, data_dir):
    """Issue 45's command, shrunk to seconds (width 2, a few images): it plans, trains, logs and reports."""
    from bench.report.report import make_report

    result = bench("run", "--depths", "50", "--arch", "plain", "residual", "--input-size", "224", "--optimizer",
                   "adam", "--batch-size", "8", "--epochs", "2", "--dataset", "synthetic", "--width", "2",
                   "--train-subset", "16", "--test-subset", "8", "--device", "cpu", "--no-progress",
                   "--data-dir", str(data_dir), "--results", str(tmp_path / "results"))
    assert result.exit_code == 0, result.output
    assert '"optimizer": "adam"' in result.output and '"input_size": 224' in result.output  # the configuration
    # One line per epoch and net in a log: training loss and error, test error and loss.
    assert len(re.findall(r"epoch [12]/2: loss [\d.]+ train [\d.]+% test [\d.]+% \(loss [\d.]+\)",
                          result.output)) == 4, result.output
    for directory in (tmp_path / "results" / "synthetic").iterdir():
        described = store.read_json(directory / store.CONFIG)
        assert described["model"]["stem"] == "imagenet" and described["config"]["lr"] == 0.001
        rows = pd.read_parquet(directory / store.EPOCHS)
        assert rows["epoch"].tolist() == [1, 2]
        assert rows[["train_loss", "test_loss", "train_error", "test_error"]].notna().all().all()
    make_report([tmp_path / "results"], tmp_path / "reports", formats=("png",), notify=lambda _: None)
    assert "224x224 inputs (stored 32x32" in (tmp_path / "reports" / "README.md").read_text()


@pytest.mark.data
@pytest.mark.slow
def test_the_cifar_copy_trains_at_64_pixels(tmp_path):
    root = Path(__file__).parent.parent / "data"
    if not (root / "cifar10-jpg" / "train").is_dir():
        pytest.skip("the CIFAR-10 copy is not extracted under data/")
    result = bench("run", "--depths", "18", "--arch", "residual", "--input-size", "64", "--dataset", "cifar10",
                   "--width", "4", "--batch-size", "32", "--train-subset", "128", "--test-subset", "64", "--epochs",
                   "1", "--device", "cpu", "--no-progress", "--data-dir", str(root), "--results", str(tmp_path))
    assert result.exit_code == 0, result.output
    (directory,) = (tmp_path / "cifar10").iterdir()
    described = store.read_json(directory / store.CONFIG)
    assert (described["dataset"]["image_size"], described["config"]["input_size"]) == (32, 64)
    assert described["model"]["stem"] == "cifar"  # below 128 pixels
    assert len(pd.read_parquet(directory / store.EPOCHS)) == 1
