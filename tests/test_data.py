"""The data layer (bench.data.data: synthetic set, ImageFolder and CIFAR-pickle readers, the cache); the on-device
loader is tests/test_loader.py's."""

from __future__ import annotations

import os
import pickle
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.core.errors import BenchError
from bench.data import cache as cache_module
from bench.data import sources
from bench.data import synthetic
from bench.data.data import DataInfo, ImageData, default_data_dir, load_dataset, resolve_dataset, train_size


@pytest.fixture
def offline(monkeypatch):
    """No network, decided instantly."""
    monkeypatch.setattr(sources, "_reachable", lambda host, *args, **kwargs: False)


def _random_images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


# --- synthetic -------------------------------------------------------------------------------------------------


def test_synthetic_is_deterministic_and_balanced():
    images, labels = synthetic.generate(100, seed=5)
    again_images, again_labels = synthetic.generate(100, seed=5)
    assert torch.equal(images, again_images) and torch.equal(labels, again_labels)
    assert not torch.equal(synthetic.generate(20, seed=6)[0], synthetic.generate(20, seed=5)[0])
    assert images.shape == (100, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.dtype == torch.int64 and labels.min() == 0 and labels.max() == len(synthetic.CLASSES) - 1
    assert torch.bincount(labels).tolist() == [10] * 10
    assert images.float().std() > 40  # real pictures with contrast, not a blank canvas
    assert synthetic.generate(10, seed=5, image_size=16)[0].shape == (10, 3, 16, 16)


def test_synthetic_dataset_is_cached(tmp_path):
    first = load_dataset("synthetic", tmp_path, synthetic_train=40, synthetic_test=20, progress=False)
    assert first.info == DataInfo("synthetic", "generated (seed 0)", 10, 32, 40, 20, first.info.note,
                                  first.info.fingerprint)
    assert "not comparable" in first.info.note
    assert len(list((tmp_path / ".cache").glob("synthetic-*.pt"))) == 1
    second = load_dataset("synthetic", tmp_path, synthetic_train=40, synthetic_test=20, progress=False)
    assert torch.equal(first.train_images, second.train_images) and torch.equal(first.mean, second.mean)
    assert not torch.equal(first.train_images[:20], first.test_images)  # separate draws for the two splits
    assert first.mean.shape == (3, 32, 32) and first.mean.dtype == torch.float32
    assert torch.allclose(first.mean, first.train_images.float().mean(0) / 255, atol=1e-6)


def _image_folder(root: Path, classes=("ant", "bee", "cat"), per_class: int = 3, size: int = 32) -> dict:
    """Write PNGs (lossless, compared exactly) and one JPEG per class with PIL, an encoder independent of the
    decoder under test; returns {split: {class: uint8 [n,3,size,size] of the PNGs}}."""
    written: dict = {}
    for s, split in enumerate(("train", "test")):
        for c, cls in enumerate(classes):
            folder = root / split / cls
            folder.mkdir(parents=True)
            pngs = _random_images(per_class, size, seed=100 * s + c)
            for i, image in enumerate(pngs):
                Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i:02d}.png")
            Image.fromarray(pngs[0].permute(1, 2, 0).numpy()).save(folder / "zz.jpg", quality=90)
            (folder / "notes.txt").write_text("not an image: skipped")
            written.setdefault(split, {})[cls] = pngs
    return written


def test_imagefolder_loads_labels_and_pixels(tmp_path):
    written = _image_folder(tmp_path / "tiny")
    data = load_dataset("imagefolder", tmp_path / "tiny", progress=False)
    assert data.info.name == "imagefolder:tiny" and data.info.source == str(tmp_path / "tiny")
    assert (data.info.num_classes, data.info.train_size, data.info.test_size) == (3, 12, 12)
    assert data.info.note == ""  # 32x32 already; JPEG is not a caveat for an arbitrary folder
    assert data.train_labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert torch.equal(data.train_images[4:7], written["train"]["bee"])  # files sorted by name, PNGs exact
    assert torch.equal(data.test_images[8:11], written["test"]["cat"])
    for name, data_dir in ((f"imagefolder:{tmp_path / 'tiny'}", tmp_path / "elsewhere"), ("imagefolder:tiny", tmp_path),
                           resolve_dataset("imagefolder", tmp_path / "tiny")[:2]):
        assert torch.equal(load_dataset(name, data_dir, progress=False).train_images, data.train_images)
    assert resolve_dataset("imagefolder", tmp_path / "tiny") == ("imagefolder:tiny", tmp_path / "tiny", None)



def test_the_training_images_are_counted_before_anything_is_decoded(tmp_path, monkeypatch):
    # What bench run's plan checks each batch against: the same count the load then gives.
    _image_folder(tmp_path / "tiny")
    _image_folder(tmp_path / "data" / "cifar10-jpg")
    _fake_cifar10(tmp_path / "pickles" / "cifar-10-batches-py")
    monkeypatch.setattr("bench.data.decoding._decode_files", lambda *args: pytest.fail("an image was decoded"))
    assert train_size(resolve_dataset("imagefolder", tmp_path / "tiny")) == 12
    assert train_size(resolve_dataset("cifar10", tmp_path / "data")) == 12  # a CIFAR copy as an ImageFolder
    assert train_size(resolve_dataset("synthetic", tmp_path / "none")) == 20000  # what load_dataset draws
    assert not (tmp_path / "none").exists()
    # Pickles are not read to count them: a copy holds the release's 50,000 (this fake holds 20, and the
    # decoded count is what a run's schedule is worked out on).
    assert train_size(resolve_dataset("cifar10", tmp_path / "pickles")) == 50000
    monkeypatch.undo()
    assert len(load_dataset("imagefolder", tmp_path / "tiny", progress=False).train_images) == 12

def test_imagefolder_resizes_to_image_size(tmp_path):
    _image_folder(tmp_path / "big", classes=("a", "b"), per_class=1, size=40)
    data = load_dataset("imagefolder", tmp_path / "big", image_size=16, progress=False)
    assert data.train_images.shape == (4, 3, 16, 16) and data.mean.shape == (3, 16, 16)
    assert "resized" in data.info.note


def test_imagefolder_cache_is_used_and_keyed_by_the_files(tmp_path):
    root = tmp_path / "tiny"
    _image_folder(root)
    load_dataset("imagefolder", root, progress=False)
    [cache] = (tmp_path / ".cache").glob("imagefolder-tiny-*.pt")
    # Mark the cache: a second load that returns the mark read the cache, not the images.
    tensors = torch.load(cache, weights_only=True)
    tensors["train_images"][0] = 7
    tensors["digest"] = cache_module.cache_digest(tensors)  # signed again, or the mark would be taken for damage
    torch.save(tensors, cache)
    assert (load_dataset("imagefolder", root, progress=False).train_images[0] == 7).all()
    # A changed file changes the key: decoded again, into a second cache file.
    (root / "train" / "ant" / "00.png").touch()
    assert not (load_dataset("imagefolder", root, progress=False).train_images[0] == 7).all()
    assert len(list((tmp_path / ".cache").glob("imagefolder-tiny-*.pt"))) == 2


def test_corrupt_cache_is_rebuilt(tmp_path):
    root = tmp_path / "tiny"
    _image_folder(root)
    first = load_dataset("imagefolder", root, progress=False)
    [cache] = (tmp_path / ".cache").glob("*.pt")
    cache.write_bytes(b"not a torch file")
    messages: list[str] = []
    again = load_dataset("imagefolder", root, progress=False, notify=messages.append)
    assert torch.equal(again.train_images, first.train_images)
    assert any("unreadable" in m for m in messages)
    assert torch.load(cache, weights_only=True)["train_images"].shape == (12, 3, 32, 32)


def test_imagefolder_errors_name_the_culprit(tmp_path):
    root = tmp_path / "tiny"
    _image_folder(root)
    bad = root / "train" / "bee" / "01.png"
    bad.write_bytes(b"\x89PNG garbage")
    with pytest.raises(BenchError, match=r"01\.png"):
        load_dataset("imagefolder", root, progress=False)
    bad.unlink()

    (root / "test" / "dog").mkdir()
    with pytest.raises(BenchError, match=r"test/dog has no images"):
        load_dataset("imagefolder", root, progress=False)
    (root / "test" / "dog" / "00.png").write_bytes((root / "test" / "cat" / "00.png").read_bytes())
    with pytest.raises(BenchError, match="different class folders.*dog"):
        load_dataset("imagefolder", root, progress=False)

    with pytest.raises(BenchError, match="does not exist"):
        load_dataset("imagefolder:nowhere", tmp_path, progress=False)
    (tmp_path / "half" / "train").mkdir(parents=True)
    with pytest.raises(BenchError, match=r"no test/"):
        load_dataset("imagefolder", tmp_path / "half", progress=False)


# --- CIFAR in torchvision's python-pickle format ----------------------------------------------------------------


def _fake_cifar10(folder: Path, per_batch: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """A cifar-10-batches-py folder in the real format, tiny; returns the train images and test labels."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    train = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"batch_label": name, "data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 "labels": rng.integers(0, 10, per_batch).tolist(), "filenames": [f"{i}.png" for i in range(per_batch)]}
        (folder / name).write_bytes(pickle.dumps(batch))
        train.append(batch)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names, "num_vis": 3072}))
    images = torch.from_numpy(np.concatenate([b["data"] for b in train[:5]]).reshape(-1, 3, 32, 32))
    return images, torch.tensor(train[5]["labels"])


def test_cifar10_pickle_folder_and_archive(tmp_path, offline):
    train_images, test_labels = _fake_cifar10(tmp_path / "data" / "cifar-10-batches-py")
    assert resolve_dataset("auto", tmp_path / "data") == ("cifar10", tmp_path / "data" / "cifar-10-batches-py", None)
    data = load_dataset("cifar10", tmp_path / "data", progress=False)
    assert (data.info.name, data.info.num_classes, data.info.train_size, data.info.test_size) == ("cifar10", 10, 20, 4)
    assert torch.equal(data.train_images, train_images) and torch.equal(data.test_labels, test_labels)
    assert data.info.note == ""

    archive_dir = tmp_path / "archived"
    archive_dir.mkdir()
    with tarfile.open(archive_dir / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "data" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    from_archive = load_dataset("auto", archive_dir, progress=False)
    assert from_archive.info.source == str(archive_dir / "cifar-10-python.tar.gz")
    assert torch.equal(from_archive.train_images, train_images)


def test_cifar100_pickle_folder(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name, n in (("train", 6), ("test", 2)):
        entry = {"data": np.full((n, 3072), 9, dtype=np.uint8), "fine_labels": [99] * n, "coarse_labels": [0] * n}
        (folder / name).write_bytes(pickle.dumps(entry))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"c{i}" for i in range(100)]}))
    data = load_dataset("cifar100", tmp_path, progress=False)
    assert (data.info.num_classes, data.info.train_size, data.info.test_size) == (100, 6, 2)
    assert (data.train_labels == 99).all() and torch.allclose(data.mean, torch.full((3, 32, 32), 9 / 255))


def test_cifar_with_the_wrong_class_count_is_refused(tmp_path):
    _image_folder(tmp_path / "cifar10")
    with pytest.raises(BenchError, match="3 classes.*imagefolder"):
        load_dataset("cifar10", tmp_path, progress=False)


# --- choosing the dataset ---------------------------------------------------------------------------------------


def test_auto_without_data_or_network_is_synthetic(tmp_path, offline):
    name, path, notice = resolve_dataset("auto", tmp_path)
    assert (name, path) == ("synthetic", tmp_path) and "synthetic" in notice and str(tmp_path) in notice
    with pytest.raises(BenchError, match="CIFAR-10 not found"):
        load_dataset("cifar10", tmp_path, progress=False)


def test_auto_with_network_downloads(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "_reachable", lambda host, *args, **kwargs: True)
    name, path, notice = resolve_dataset("auto", tmp_path)
    assert (name, path) == ("cifar10", tmp_path) and "downloaded" in notice


def test_reachability_check_does_not_hang():
    started = time.perf_counter()
    assert not sources._reachable("192.0.2.1", 9, timeout=0.2)  # TEST-NET-1: routed nowhere
    assert time.perf_counter() - started < 2


def test_unknown_dataset_lists_the_choices(tmp_path):
    with pytest.raises(BenchError, match="cifar10, cifar100, imagefolder, synthetic"):
        resolve_dataset("mnist", tmp_path)


def test_default_data_dir_honours_bench_data(monkeypatch):
    monkeypatch.setenv("BENCH_DATA", "/somewhere/else")
    assert default_data_dir() == Path("/somewhere/else")
    monkeypatch.delenv("BENCH_DATA")
    assert default_data_dir() == Path("data")


def test_image_data_moves_as_a_whole(tmp_path):
    _image_folder(tmp_path / "tiny")
    data = load_dataset("imagefolder", tmp_path / "tiny", progress=False)
    moved = data.to("cpu")
    assert isinstance(moved, ImageData) and moved.info == data.info and torch.equal(moved.mean, data.mean)


# --- the real shared copy -----------------------------------------------------------------------------------------


@pytest.mark.data
@pytest.mark.slow
def test_real_cifar10_copy():
    folder = next((d for d in (default_data_dir(), Path(__file__).parent.parent / "data")
                   if (d / "cifar10-jpg" / "train").is_dir()), None)
    if folder is None:
        pytest.skip("no cifar10-jpg/ under data/ or $BENCH_DATA: tar -xzf ../shared/data/cifar10-jpg.tar.gz -C data")
    data = load_dataset("auto", folder, progress=False)
    info = data.info
    assert (info.name, info.num_classes, info.train_size, info.test_size) == ("cifar10", 10, 50000, 10000)
    assert torch.bincount(data.train_labels).tolist() == [5000] * 10
    assert "JPEG" in data.info.note
    assert 0.4 < data.mean.mean().item() < 0.5


# --- links among the images; a folder name that is not UTF-8 ----------------------------------------------------


def test_images_that_link_outside_the_data_folder_are_read_and_counted(tmp_path):
    """The rule for images (docs/links-and-bounds.md): followed, as torchvision's ImageFolder follows them,
    and counted in one notice; links that stay inside the folder are not counted."""
    root = tmp_path / "data"
    written = _image_folder(root)
    _image_folder(tmp_path / "other-disk", classes=("dog",))
    (root / "train" / "dog").symlink_to(tmp_path / "other-disk" / "train" / "dog", target_is_directory=True)
    (root / "test" / "dog").symlink_to(tmp_path / "other-disk" / "test" / "dog", target_is_directory=True)
    (root / "train" / "ant" / "zz-out.png").symlink_to(tmp_path / "other-disk" / "train" / "dog" / "00.png")
    (root / "train" / "ant" / "zz-in.png").symlink_to(root / "train" / "bee" / "00.png")
    notes: list[str] = []
    data = load_dataset("imagefolder", root, progress=False, notify=notes.append)
    assert data.info.num_classes == 4 and data.info.train_size == 4 * 4 + 2
    # ant's 00-02.png, zz-in (bee's 00), zz-out (dog's 00), zz.jpg; then bee's 00.png
    assert torch.equal(data.train_images[3], written["train"]["bee"][0])
    assert torch.equal(data.train_images[6], written["train"]["bee"][0])
    [note] = [n for n in notes if "resolve outside" in n]
    assert note.startswith(f"9 images of {root} are links") and "\n" not in note  # 4 + 4 dogs, 1 ant


@pytest.mark.slow
def test_a_data_folder_whose_name_is_not_utf8_is_refused_up_front_and_leaves_no_run(tmp_path):
    from tests.conftest import bench, one_line_exit_2

    root = tmp_path / os.fsdecode(b"caf\xe9")
    _image_folder(root)
    results = tmp_path / "results"
    args = ["run", "--depths", "8", "--arch", "plain", "--dataset", "imagefolder", "--data-dir", str(root),
            "--device", "cpu", "--preset", "quick", "--width", "2", "--batch-size", "4", "--epochs", "1",
            "--results", str(results), "--no-progress"]
    for _ in range(2):  # a second try says the same, never a run left interrupted
        one_line_exit_2(bench(*args), "is not UTF-8", "rename the folder")
        assert not list(results.glob("*/*/*"))
    renamed = root.rename(tmp_path / "cafe")
    assert bench(*[str(renamed) if a == str(root) else a for a in args]).exit_code == 0
