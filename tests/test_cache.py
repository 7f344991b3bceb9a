"""bench.data.cache: a cache is trusted only when it agrees with its source and with itself; one that disagrees is
decoded again with one line saying why, and the run records what was decoded. Each case builds its own
ImageFolder (tests/test_data.py's writer) and its own cache."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from bench.core.errors import BenchError
from bench.data import cache as cache_module
from bench.data.data import load_dataset
from bench.results import checkpoints, store
from tests.conftest import bench, one_line_exit_2
from tests.test_data import _image_folder


def _cache_of(folder: Path) -> Path:
    [path] = (folder.parent / ".cache").glob(f"imagefolder-{folder.name}-*.pt")
    return path


def _resign(path: Path, change) -> None:
    """Change a cache's tensors and sign it again, as a cache built elsewhere would be: its digest matches."""
    tensors = torch.load(path, weights_only=True)
    change(tensors)
    tensors["digest"] = cache_module.cache_digest(tensors)
    torch.save(tensors, path)


DAMAGES = {
    "another dataset's cache": None,  # copied over this one's name: handled apart
    "a claim of 7 classes": lambda t: t.update(num_classes=7),
    "16x16 images": lambda t: t.update(train_images=t["train_images"][:, :, :16, :16].contiguous(),
                                       test_images=t["test_images"][:, :, :16, :16].contiguous(),
                                       mean=t["mean"][:, :16, :16].contiguous()),
    "labels of other classes": lambda t: t.update(train_labels=t["train_labels"].flip(0)),
    "fewer images": lambda t: t.update(train_images=t["train_images"][:-1], train_labels=t["train_labels"][:-1]),
}
REASONS = {"another dataset's cache": "it was decoded from", "a claim of 7 classes": "claims 7 classes",
           "16x16 images": "not uint8 [N, 3, 32, 32]", "labels of other classes": "labels are not the source's",
           "fewer images": "holds 11 train images, but the source has 12"}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_cache_that_disagrees_with_its_folder_is_decoded_again_with_one_line(tmp_path, damage):
    root = tmp_path / "three"
    _image_folder(root)  # 3 classes, 4 images each per split, 32x32
    first = load_dataset("imagefolder", root, progress=False)
    path = _cache_of(root)
    if damage == "another dataset's cache":
        _image_folder(tmp_path / "two", classes=("x", "y"), per_class=5)
        load_dataset("imagefolder", tmp_path / "two", progress=False)
        shutil.copy(_cache_of(tmp_path / "two"), path)
    else:
        _resign(path, DAMAGES[damage])
    notes: list[str] = []
    again = load_dataset("imagefolder", root, progress=False, notify=notes.append)
    [note] = [n for n in notes if str(path) in n and "is not used" in n]
    assert REASONS[damage] in note and "decoding the data again" in note and "\n" not in note
    assert again.info == first.info and again.info.num_classes == 3
    for name in ("train_images", "train_labels", "test_images", "test_labels", "mean"):
        assert torch.equal(getattr(again, name), getattr(first, name)), name
    notes.clear()
    load_dataset("imagefolder", root, progress=False, notify=notes.append)
    assert notes == []  # the cache decoded again is trusted


def test_a_run_records_what_it_trained_on_not_what_a_foreign_cache_claims(tmp_path):
    root = tmp_path / "three"
    _image_folder(root, per_class=8)
    load_dataset("imagefolder", root, progress=False)
    _resign(_cache_of(root), DAMAGES["a claim of 7 classes"])
    results = tmp_path / "results"
    ran = bench("run", "--depths", "8", "--arch", "plain", "--dataset", "imagefolder", "--data-dir", str(root),
                "--device", "cpu", "--preset", "quick", "--width", "2", "--batch-size", "8", "--epochs", "1",
                "--results", str(results), "--no-progress")
    assert ran.exit_code == 0, ran.output
    assert "claims 7 classes" in " ".join(ran.output.split())
    [config] = results.glob(f"*/*/{store.CONFIG}")
    meta = store.read_config(config.parent)
    assert meta["dataset"]["num_classes"] == 3 and meta["dataset"]["train_size"] == 27
    checkpoint = checkpoints.load_checkpoint(config.parent)
    assert checkpoint["model"]["fc.weight"].shape[0] == 3  # a 3-way net


@pytest.mark.parametrize("where", ["the cache file", "the .cache folder"])
def test_a_cache_that_is_a_link_is_refused_in_one_line(tmp_path, where):
    root = tmp_path / "three"
    _image_folder(root)
    load_dataset("imagefolder", root, progress=False)
    path = _cache_of(root)
    outside = tmp_path / "outside"
    outside.mkdir()
    if where == "the cache file":
        shutil.move(path, outside / path.name)
        path.symlink_to(outside / path.name)
        link = path
    else:
        shutil.move(path, outside / path.name)
        (root.parent / ".cache").rmdir()
        link = root.parent / ".cache"
        link.symlink_to(outside, target_is_directory=True)
    with pytest.raises(BenchError, match=f"{link} is a symbolic link"):
        load_dataset("imagefolder", root, progress=False)
    ran = bench("run", "--depths", "8", "--arch", "plain", "--dataset", "imagefolder", "--data-dir", str(root),
                "--device", "cpu", "--preset", "quick", "--width", "2", "--batch-size", "4", "--epochs", "1",
                "--results", str(tmp_path / "results"), "--no-progress")
    one_line_exit_2(ran, str(link), "is a symbolic link")


def test_a_cache_past_its_bound_is_not_read(tmp_path):
    root = tmp_path / "three"
    _image_folder(root)
    load_dataset("imagefolder", root, progress=False)
    path = _cache_of(root)
    os.truncate(path, 2**30)  # sparse: no disk, but read whole it is a gigabyte
    notes: list[str] = []
    assert load_dataset("imagefolder", root, progress=False, notify=notes.append).info.train_size == 12
    assert any("is 1 GiB, more than" in n for n in notes), notes
