"""A run's batches from memory or streamed from disk (bench.run.batches): `bench run` trains from an ImageFolder
streamed a batch at a time, records how it read it, resumes exactly from a stop mid-epoch or a kill -9, splits
over ranks as one process does, and refuses what it cannot stream in one line. The loader itself is
tests/test_streaming.py's."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from bench.core.config import PRESETS, GridConfig, RunConfig
from bench.core.errors import BenchError
from bench.results import checkpoints, reading, store
from bench.run.batches import MemoryBatches, StreamBatches, load_streamed
from bench.run.distributed import Dist
from bench.run.planner import plan
from bench.run.measures import EVAL_BATCH, scaled_batch
from bench.run.train import Run, train_run
from tests.conftest import CPU, bench, epoch_numbers, one_line_exit_2
from tests.test_distributed import _bench
from tests.test_streaming import write_folder

REPO = Path(__file__).resolve().parents[1]
SMALL = ((48, 40), (36, 50))  # not square; views at 32 keep a CPU test fast
# A narrow plain-8 streamed at 32 pixels: 24 training images, 3 batches of 8 an epoch, 3 epochs.
STREAMED = RunConfig(arch="plain", depth=8, width=2, preset="test", dataset="imagefolder:set", iterations=None,
                     epochs=3, batch_size=8, lr=0.05, input_size=32, device="cpu")


def _streamed(root: Path, size: int = 32, workers: int = 0):
    return load_streamed(root, "imagefolder:set", size, workers=workers, train_subset=None, test_subset=None,
                         notify=print)


def _args(root: Path, results: Path, *more: str) -> list[str]:
    return ["run", "--depths", "8", "--arch", "plain", "--dataset", f"imagefolder:{root}", "--stream", "--device",
            "cpu", "--width", "2", "--batch-size", "8", "--no-progress", "--results", str(results), *more]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_an_image_folder_trains_streamed_through_bench_run_at_224(tmp_path):
    root = write_folder(tmp_path / "set", classes=3, per_class=4, test_per_class=1)  # 300x250 and 260x340 JPEGs
    broken = root / "train" / "class1" / "0002.jpg"
    broken.write_bytes(broken.read_bytes()[:300])  # truncated mid-scan: skipped, named and counted
    result = bench(*_args(root, tmp_path / "results", "--epochs", "1", "--loader-workers", "1"))
    assert result.exit_code == 0, result.output
    assert '"input_size": 224,' in result.stdout and '"data": "streamed, 1 loader worker"' in result.stdout
    assert "streamed from disk, 1 loader worker, views at 224" in result.stdout
    assert str(broken) in result.stderr and "skipped" in result.stderr
    (directory,) = {path.parent for path in (tmp_path / "results").glob(f"*/*/{store.CONFIG}")}
    config = store.read_json(directory / store.CONFIG)
    assert config["config"]["input_size"] == 224 and config["dataset"]["image_size"] == 224
    test_view = "shorter side 256, centre 224 crop"  # the quick preset trains without augmentation: the test view
    assert config["loading"] == {"path": "streamed", "workers": 1, "train_view": test_view, "test_view": test_view}
    rows = pd.read_parquet(directory / store.EPOCHS)
    assert rows["iteration"].tolist() == [1]  # 12 images, one of them skipped: one whole batch of 8
    assert checkpoints.load_checkpoint(directory)["mean"].shape == (3, 224, 224)


@pytest.mark.timeout(120)
def test_stream_sources_train_and_test_the_same_images_as_the_listing(tmp_path):
    data = _streamed(write_folder(tmp_path / "set", per_class=8, sizes=SMALL))
    source = StreamBatches(data, STREAMED, Dist(), CPU, print)
    batches = source.draw(100)
    assert batches.shape == (3, 0)  # an epoch's worth, not the run's
    trained = list(source.train(batches, 1, epoch=0))
    assert len(trained) == 2 and all(x.shape == (8, 3, 32, 32) and x.dtype == torch.uint8 for x, _ in trained)
    tested = list(source.test(1000))
    assert sum(len(y) for _, y in tested) == 6 and source.probe().shape == (6, 3, 32, 32)
    assert source.state()["mean"].shape == (3, 32, 32)


def _cut_at_iteration_4(tmp_path: Path, act, expected: type[BaseException], match: str | None = None):
    """A streamed run trained whole (tmp_path/whole), and again (tmp_path/cut) with `act` done after iteration 4,
    the first batch of epoch 2, which must raise `expected`: (its data, what pytest.raises caught)."""
    data = _streamed(write_folder(tmp_path / "set", per_class=8, sizes=SMALL), workers=1)
    assert train_run(STREAMED, data, tmp_path / "whole", CPU) == store.FINISHED
    with pytest.raises(expected, match=match) as caught:
        train_run(STREAMED, data, tmp_path / "cut", CPU, on_step=lambda iteration, *_: iteration == 4 and act())
    return data, caught


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_stop_mid_epoch_on_the_streaming_path_resumes_to_the_same_numbers(tmp_path):
    data, _ = _cut_at_iteration_4(tmp_path, lambda: os.kill(os.getpid(), signal.SIGINT), KeyboardInterrupt)
    checkpoint = checkpoints.load_checkpoint(tmp_path / "cut")
    assert checkpoint["iteration"] == 4 and checkpoint["partial"]["done"] == 1  # epoch 2's position is kept
    other_mean = dataclasses.replace(data, mean=torch.zeros_like(data.mean))  # a resume keeps the run's own mean
    assert train_run(STREAMED, other_mean, tmp_path / "cut", CPU) == store.FINISHED
    pd.testing.assert_frame_equal(epoch_numbers(tmp_path / "whole"), epoch_numbers(tmp_path / "cut"))


def _kill_the_workers() -> None:
    """As the system's out-of-memory killer would: every child of this process, then a pause, in which torch's
    SIGCHLD handler may raise in the middle of the loop's own work."""
    for pid in Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text().split():
        os.kill(int(pid), signal.SIGKILL)
    time.sleep(0.5)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_loader_worker_killed_mid_epoch_stops_the_run_in_one_line_and_the_rerun_is_exact(tmp_path):
    data, error = _cut_at_iteration_4(tmp_path, _kill_the_workers, BenchError,
                                      r"a data loader worker failed .*run the same command again")
    assert "\n" not in str(error.value)
    assert store.read_status(tmp_path / "cut")["state"] == "interrupted"
    assert train_run(STREAMED, data, tmp_path / "cut", CPU) == store.FINISHED  # from epoch 1's checkpoint
    pd.testing.assert_frame_equal(epoch_numbers(tmp_path / "whole"), epoch_numbers(tmp_path / "cut"))


@pytest.mark.timeout(120)
def test_the_memory_source_is_the_run_s_old_loop(tmp_path, tiny_data):
    run = Run(dataclasses.replace(STREAMED, dataset="synthetic", input_size=None), tiny_data, tmp_path, CPU,
              notify=print)
    assert isinstance(run.batches, MemoryBatches) and run.batches.state() == {}
    images, labels = next(run.batches.train(run.batches.draw(2), 0, 0))
    assert images.shape == (8, 3, 32, 32) and labels.shape == (8,)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_streamed_run_killed_mid_epoch_resumes_to_an_unbroken_runs_numbers(tmp_path):
    root = write_folder(tmp_path / "set", per_class=16, sizes=SMALL)  # 6 batches an epoch
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}

    def command(results: Path) -> list[str]:
        return [sys.executable, "-m", "bench", *_args(root, results, "--epochs", "3", "--input-size", "32",
                                                       "--loader-workers", "1", "--augment")]

    whole = subprocess.run(command(tmp_path / "whole"), env=env, capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr
    process = subprocess.Popen(command(tmp_path / "cut"), env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list((tmp_path / "cut").glob(f"*/*/{store.EPOCHS}")) and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # into epoch 2
    process.send_signal(signal.SIGKILL)
    process.wait()
    (directory,) = {path.parent for path in (tmp_path / "cut").glob(f"*/*/{store.CONFIG}")}
    assert len(pd.read_parquet(directory / store.EPOCHS)) < 3  # it really was cut short
    resumed = subprocess.run(command(tmp_path / "cut"), env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    (expected,) = {path.parent for path in (tmp_path / "whole").glob(f"*/*/{store.CONFIG}")}
    pd.testing.assert_frame_equal(epoch_numbers(expected), epoch_numbers(directory))


def _ranked_args(tmp_path: Path, *more: str) -> list[str]:
    """`bench run`'s options for a streamed width-4 net-8 on a generated folder under `tmp_path`, for tests/
    test_distributed.py's `_bench` (one process or gloo ranks), with `more` (the arch, epochs, workers)."""
    root = write_folder(tmp_path / "set", per_class=8, sizes=SMALL)
    return ["--depths", "8", "--dataset", f"imagefolder:{root}", "--stream", "--input-size", "32", "--width", "4",
            "--batch-size", "8", "--augment", "--no-progress", "--device", "cpu", *more]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_gloo_ranks_streaming_match_one_process(tmp_path):
    args = _ranked_args(tmp_path, "--arch", "residual", "--epochs", "1", "--loader-workers", "0", "--sync-bn")
    one = _bench(tmp_path / "one", tmp_path, 1, args)
    assert one.returncode == 0, one.stderr
    two = _bench(tmp_path / "two", tmp_path, 2, args)
    assert two.returncode == 0, two.stderr[-3000:]
    a, _ = reading.read_results([tmp_path / "one"])
    b, _ = reading.read_results([tmp_path / "two"])
    for column in ("train_loss", "test_loss"):
        assert b[column].iloc[0] == pytest.approx(a[column].iloc[0], rel=1e-3, abs=1e-3), column
    for column, images in (("train_error", 24), ("test_error", 6)):
        assert abs(b[column].iloc[0] - a[column].iloc[0]) <= 1 / images + 1e-9, column


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_gloo_ranks_streaming_resume_to_an_unbroken_two_rank_runs_numbers(tmp_path):
    args = _ranked_args(tmp_path, "--arch", "plain", "--epochs", "2", "--loader-workers", "1")
    whole = _bench(tmp_path / "whole", tmp_path, 2, args)
    assert whole.returncode == 0, whole.stderr[-3000:]
    first = _bench(tmp_path / "cut", tmp_path, 2, [*args, "--time-limit", "0.0001"])  # stops after epoch 1
    assert first.returncode == 0, first.stderr[-3000:]
    (cut,) = (tmp_path / "cut").glob("*/*/")
    assert store.read_status(cut)["state"] == "interrupted" and len(epoch_numbers(cut)) == 1
    rest = _bench(tmp_path / "cut", tmp_path, 2, args)
    assert rest.returncode == 0, rest.stderr[-3000:]
    (unbroken,) = (tmp_path / "whole").glob("*/*/")
    pd.testing.assert_frame_equal(epoch_numbers(unbroken), epoch_numbers(cut))


def test_only_an_image_folder_streams_and_never_under_cuda_graphs(tmp_path):
    one_line_exit_2(bench("run", "--depths", "8", "--dataset", "synthetic", "--stream", "--device", "cpu",
                          "--results", str(tmp_path), "--dry-run"), "--stream reads an ImageFolder", "synthetic")
    root = write_folder(tmp_path / "set", per_class=2, test_per_class=1, sizes=SMALL)
    one_line_exit_2(bench(*_args(root, tmp_path / "results", "--cuda-graph", "--device", "cuda", "--dry-run",
                                 "--batch-size", "4")), "--cuda-graph replays")


@pytest.mark.slow
def test_the_imagenet_preset_streams_an_image_folder_unless_told_to_hold_it(tmp_path):
    # In memory an ImageFolder is stored at 32x32: section 3.4's crops of full-size images need the stream.
    root = write_folder(tmp_path / "set", per_class=2, test_per_class=1, sizes=SMALL)
    base = dataclasses.replace(PRESETS["imagenet"], dataset=f"imagefolder:{root}", device="cpu", batch_size=4,
                               width=2)
    grid = GridConfig(base=base, depths=(18,), results=str(tmp_path / "results"))
    streamed, held = plan(grid), plan(dataclasses.replace(grid, stream=False))
    assert streamed.stream and {run.input_size for run in streamed.runs} == {224}
    assert not held.stream
    assert not plan(dataclasses.replace(grid, base=dataclasses.replace(base, preset="paper"))).stream  # by size


@pytest.mark.slow
def test_evaluation_holds_as_many_pixels_a_batch_streamed_at_224_as_at_32(tmp_path, tiny_data):
    # A stream's images are 224 as they arrive; the evaluation and diagnostics batches are sized at 32 (7.8 GB
    # resident evaluating ResNet-18 in batches of 1,000 at 224, before they were scaled for a stream too).
    streamed = _streamed(write_folder(tmp_path / "set", per_class=2, test_per_class=1, sizes=SMALL), size=224)
    at_224 = EVAL_BATCH * 32 * 32 // (224 * 224)
    assert scaled_batch(EVAL_BATCH, RunConfig(), streamed) == at_224
    assert scaled_batch(EVAL_BATCH, RunConfig(input_size=224), tiny_data) == at_224
    assert scaled_batch(EVAL_BATCH, RunConfig(), tiny_data) == EVAL_BATCH


def test_a_test_split_with_classes_the_training_split_lacks_is_one_line(tmp_path):
    root = write_folder(tmp_path / "set", per_class=2, test_per_class=1, sizes=SMALL)
    (root / "test" / "zebra").mkdir()
    (root / "test" / "zebra" / "a.jpg").write_bytes((root / "test" / "class0" / "0000.jpg").read_bytes())
    one_line_exit_2(bench(*_args(root, tmp_path / "results", "--epochs", "1", "--loader-workers", "0",
                                 "--batch-size", "4")), "lacks (zebra)")
