"""An image folder streamed from disk in batches (bench.data.streaming): listing, the epoch's order, exact resumes, ranks,
bad files, worker failures and bounded memory. The views themselves are tests/test_views.py's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.core.errors import BenchError
from bench.data.streaming import StreamLoader, list_folder, pixel_mean, worker_failure
from bench.data.views import Augmentation, View

REPO = Path(__file__).resolve().parents[1]


def write_folder(root: Path, classes: int = 3, per_class: int = 4, test_per_class: int = 2,
                 sizes: tuple[tuple[int, int], ...] = ((300, 250), (260, 340)), seed: int = 0) -> Path:
    """A train/ + test/ ImageFolder of random-noise JPEGs (width x height taken in turn from `sizes`) under `root`."""
    rng = np.random.default_rng(seed)
    count = 0
    for split, n in (("train", per_class), ("test", test_per_class)):
        for cls in range(classes):
            folder = root / split / f"class{cls}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                width, height = sizes[count % len(sizes)]
                count += 1
                pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:04d}.jpg", quality=85)
    return root


def _all(loader: StreamLoader, epoch: int, start: int = 0) -> list:
    return [(batch.images, batch.labels) for batch in loader.batches(epoch, start)]


def _same(first: list, second: list) -> bool:
    return len(first) == len(second) and all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
                                             for a, b in zip(first, second))


def test_a_generated_folder_streams_in_batches_at_224(tmp_path):
    listing = list_folder(write_folder(tmp_path / "set"))
    assert listing.classes == ("class0", "class1", "class2")
    assert (len(listing.train), len(listing.test)) == (12, 6)
    assert listing.cache_bytes(224) == 18 * 3 * 224 * 224
    train = StreamLoader(listing.train, View(224, Augmentation.scale), batch_size=5, seed=0, shuffle=True,
                         drop_last=True)
    assert train.describe() == "streamed from disk (no workers): shorter side 256-480, random 224 crop, flip"
    batches = list(train.batches(0))
    assert len(batches) == 2 and all(b.images.shape == (5, 3, 224, 224) and b.images.dtype == torch.uint8
                                     for b in batches)
    labels = torch.cat([b.labels for b in batches])
    assert labels.dtype == torch.int64 and not torch.equal(labels, torch.sort(labels).values)  # shuffled
    assert not _same(_all(train, 0), _all(train, 1))  # another epoch, another order and other views
    test = StreamLoader(listing.test, View(224), batch_size=4, seed=0, shuffle=False, drop_last=False)
    [first, last] = list(test.batches(0))
    assert torch.cat([first.labels, last.labels]).tolist() == [0, 0, 1, 1, 2, 2]  # every image, in order
    assert _same(_all(test, 0), _all(test, 5))  # the test view draws nothing


def test_the_same_seed_epoch_and_position_give_the_same_batches_with_two_workers(tmp_path):
    listing = list_folder(write_folder(tmp_path / "set", per_class=6, sizes=((48, 40), (36, 50))))
    options = dict(batch_size=4, seed=3, shuffle=True, drop_last=True)
    unbroken = _all(StreamLoader(listing.train, View(32, Augmentation.scale), **options), epoch=2)
    resumed = _all(StreamLoader(listing.train, View(32, Augmentation.scale), workers=2, **options), epoch=2, start=2)
    assert len(unbroken) == 4 and _same(unbroken[2:], resumed)
    other_seed = StreamLoader(listing.train, View(32, Augmentation.scale), **{**options, "seed": 4})
    assert not _same(unbroken, _all(other_seed, epoch=2))


@pytest.mark.parametrize("augmentation", list(Augmentation))
def test_two_ranks_shares_are_disjoint_and_make_the_global_batch(tmp_path, augmentation):
    listing = list_folder(write_folder(tmp_path / "set", per_class=6, sizes=((48, 40), (36, 50))))
    view = View(32, augmentation)
    options = dict(batch_size=6, seed=1, shuffle=True, drop_last=True)
    whole = list(StreamLoader(listing.train, view, **options).batches(1))
    ranks = [list(StreamLoader(listing.train, view, rank=r, world_size=2, **options).batches(1)) for r in (0, 1)]
    for index, batch in enumerate(whole):
        zero, one = ranks[0][index], ranks[1][index]
        assert len(zero.images) == len(one.images) == 3
        assert torch.equal(torch.cat([zero.images, one.images]), batch.images)
        assert torch.equal(torch.cat([zero.labels, one.labels]), batch.labels)
    orders = [list(StreamLoader(listing.train, view, rank=r, world_size=2, **options).order) for r in (0, 1)]
    for zero, one in zip(*orders):
        assert not set(zero.indices.tolist()) & set(one.indices.tolist())


def test_a_corrupt_jpeg_met_by_a_worker_is_named_skipped_and_counted(tmp_path):
    root = write_folder(tmp_path / "set", sizes=((48, 40),))
    broken = root / "train" / "class1" / "0002.jpg"
    broken.write_bytes(broken.read_bytes()[:300])  # truncated mid-scan
    listing = list_folder(root)
    told: list[str] = []
    loader = StreamLoader(listing.train, View(32, Augmentation.scale), batch_size=4, seed=0, shuffle=False,
                          drop_last=False, workers=1, notify=told.append)
    batches = list(loader.batches(0))
    assert sum(len(b.images) for b in batches) == 11 and sum(len(b.labels) for b in batches) == 11
    assert len(loader.skipped) == 1 and str(broken) in loader.skipped[0]
    assert len(told) == 1 and str(broken) in told[0] and "\n" not in told[0]


def test_an_image_declaring_too_many_pixels_is_refused_before_decoding(tmp_path):
    root = write_folder(tmp_path / "set", sizes=((48, 40),))
    bomb = root / "train" / "class0" / "0001.png"  # a PNG header declaring 20000 x 20000, with no pixels at all
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\x0dIHDR" + (20000).to_bytes(4, "big") * 2 + b"\x08\x02\0\0\0")
    listing = list_folder(root)
    loader = StreamLoader(listing.train, View(32), batch_size=4, seed=0, shuffle=False, drop_last=False, workers=1)
    with pytest.raises(BenchError, match="declares 20000 x 20000 pixels") as error:
        list(loader.batches(0))
    assert str(bomb) in str(error.value) and "\n" not in str(error.value)


def test_a_test_split_with_classes_the_training_split_lacks_is_refused(tmp_path):
    root = write_folder(tmp_path / "set", sizes=((40, 40),))
    (root / "test" / "zebra").mkdir()
    Image.new("RGB", (40, 40)).save(root / "test" / "zebra" / "a.jpg")
    with pytest.raises(BenchError, match=r"test has class folders that .*train lacks \(zebra\)"):
        list_folder(root)
    for image in (root / "test" / "class2").iterdir():  # a test split lacking a class is fine; labels stay
        image.unlink()
    (root / "test" / "class2").rmdir()
    (root / "test" / "zebra" / "a.jpg").unlink()
    (root / "test" / "zebra").rmdir()
    listing = list_folder(root)
    assert listing.test.labels.tolist() == [0, 0, 1, 1]


def test_val_is_the_test_split_when_there_is_no_test_folder(tmp_path):
    root = write_folder(tmp_path / "set", sizes=((40, 40),))
    (root / "test").rename(root / "val")
    assert list_folder(root).test.folder == root / "val"


def test_a_worker_killed_by_the_system_stops_the_epoch_in_one_line(tmp_path):
    listing = list_folder(write_folder(tmp_path / "set", per_class=40, sizes=((48, 40),)))
    loader = StreamLoader(listing.train, View(32, Augmentation.scale), batch_size=2, seed=0, shuffle=True,
                          drop_last=True, workers=1, prefetch=1, timeout_s=30)
    batches = loader.batches(0)
    next(batches)
    children = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text().split()
    assert children, "the loader's worker process is a child of this one"
    for pid in children:
        os.kill(int(pid), signal.SIGKILL)
    started = time.monotonic()
    with pytest.raises(BenchError, match=r"a data loader worker failed \(DataLoader worker .*run the same command"):
        for _ in batches:
            pass
    assert time.monotonic() - started < 30


def test_pixel_mean_is_the_mean_of_the_test_view_of_a_fixed_sample(tmp_path):
    listing = list_folder(write_folder(tmp_path / "set", per_class=5, sizes=((48, 40), (36, 50))))
    mean = pixel_mean(listing.train, 32, sample=6)
    assert mean.shape == (3, 32, 32) and mean.dtype == torch.float32
    chosen = np.sort(np.random.default_rng(0).permutation(15)[:6])
    views = torch.cat([b.images for b in StreamLoader(listing.train.subset(chosen), View(32), batch_size=15, seed=9,
                                                      shuffle=False, drop_last=False).batches(0)])
    assert len(views) == 6 and torch.allclose(mean, views.double().mean(0).float() / 255, atol=1e-6)
    assert torch.equal(mean, pixel_mean(listing.train, 32, sample=6, workers=2, batch_size=4))


def test_the_set_streams_when_its_decoded_copy_would_fill_half_the_memory(tmp_path):
    listing = list_folder(write_folder(tmp_path / "set", sizes=((40, 40),)))
    cache = listing.cache_bytes(224)
    assert listing.streams(224, memory_bytes=2 * cache - 2) and not listing.streams(224, memory_bytes=2 * cache)
    assert not listing.streams(32)  # 18 small images never fill a machine's memory


_MEASURE = textwrap.dedent("""
    import json, os, sys
    from bench.data.streaming import StreamLoader, list_folder
    from bench.data.views import Augmentation, View

    def memory(pid, field):
        for line in open(f"/proc/{pid}/status"):
            if line.startswith(field):
                return int(line.split()[1]) * 1024

    listing = list_folder(sys.argv[1])
    loader = StreamLoader(listing.train, View(int(sys.argv[2]), Augmentation.scale), batch_size=32, seed=0,
                          shuffle=True, drop_last=True, workers=1)
    batches = loader.batches(0)
    seen = len(next(batches).images)  # the worker started, batches in flight: the loader's steady state from here
    [worker] = open(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read().split()
    before, worker_before, worker_peak = memory("self", "VmRSS:"), memory(worker, "VmRSS:"), 0
    for batch in batches:  # read every pixel, as training does: shared memory no process touched is in no RSS
        seen += len(batch.images) + 0 * int(batch.images.max())
        worker_peak = max(worker_peak, memory(worker, "VmHWM:"))
    print(json.dumps({"seen": seen, "growth": memory("self", "VmHWM:") - before,
                      "worker_growth": worker_peak - worker_before,
                      "cache": listing.cache_bytes(int(sys.argv[2])), "in_flight": loader.in_flight_bytes}))
""")


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_streaming_a_folder_holds_the_batches_in_flight_not_the_set(tmp_path):
    """1,600 images whose decoded copy at 128 is 79 MB: streaming them grows neither this process nor its worker
    by a quarter of that."""
    root = write_folder(tmp_path / "set", classes=4, per_class=400, test_per_class=1, sizes=((150, 130), (140, 160)))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", _MEASURE, str(root), "128"], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    measured = json.loads(result.stdout)
    assert measured["seen"] == 1600 // 32 * 32
    assert measured["cache"] > 10 * measured["in_flight"]
    assert measured["growth"] < measured["cache"] / 4 and measured["worker_growth"] < measured["cache"] / 4, measured


_PIXEL_MEAN = textwrap.dedent("""
    import sys
    from bench.core.allocator import keep_freed_memory
    from bench.data.streaming import list_folder, pixel_mean

    def peak():
        return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:"))

    listing = list_folder(sys.argv[1])
    keep_freed_memory()  # as a process that trains has it: freed blocks stay resident
    before = peak()
    pixel_mean(listing.train, 224, batch_size=64, workers=1)
    print(peak() - before)
""")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_pixel_mean_grows_the_process_by_less_than_a_few_batches(tmp_path):
    """400 images in batches of 64 at 224, freed memory kept: a batch summed in int64 in one call was first copied
    whole to int64 (8x the batch), and the kept heap grew by more than that; summed in place, by a batch or two."""
    root = write_folder(tmp_path / "set", classes=4, per_class=100, test_per_class=1, sizes=((64, 48), (40, 56)))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", _PIXEL_MEAN, str(root)], capture_output=True, text=True, env=env,
                            timeout=100)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) < 4 * 64 * 3 * 224 * 224, int(result.stdout)

def test_a_worker_lost_mid_transfer_is_the_same_one_line_as_a_worker_killed():
    # A worker killed while handing a batch over leaves a reset connection, not torch's RuntimeError.
    for error in (RuntimeError("DataLoader worker (pid 7) is killed by signal: Killed."),
                  ConnectionResetError(104, "Connection reset by peer"), EOFError()):
        assert "a data loader worker failed" in str(worker_failure(error))
        assert "run the same command again" in str(worker_failure(error))
    assert worker_failure(RuntimeError("shape mismatch")) is None and worker_failure(ValueError("x")) is None
