"""The data layer of `bench run`: find, download or make a dataset, decode it once, cache it.

Datasets (the `--dataset` names):

- ``cifar10`` / ``cifar100``: any form torchvision reads (``cifar-10-batches-py/``,
  ``cifar-10-python.tar.gz``, ``cifar-100-python/``...) or an ImageFolder copy (``cifar10-jpg/`` or
  ``cifar10/`` holding ``train/<class>/*`` and ``test/<class>/*``), under the data folder; downloaded by
  torchvision into it when it is missing and the internet is reachable.
- ``imagefolder`` (the data folder itself) or ``imagefolder:<path>``: any ``train/`` + ``test/`` (or
  ``val/``) ImageFolder, resized (shorter side) and centre-cropped to ``image_size``.
- ``synthetic``: shapes drawn by `bench.data.synthetic`, no download needed.
- ``auto``: CIFAR-10 when it is on disk or can be downloaded, else ``synthetic`` with a loud notice.

Files are decoded once into uint8 tensors and cached as ``<folder holding the dataset>/.cache/<name>-<key>.pt``,
keyed by the source's file names, sizes and modification times, so the next start loads in about a second;
a cache that disagrees with its source or itself (bench.data.cache) is decoded again.
Each dataset also gets a content fingerprint (DataInfo.fingerprint) that a run folder records.
The whole set then lives on the training device (`ImageData.to`), where bench/data/loader.py batches and augments it.

    bench.data.sources    finding: a name -> a DataSource (resolve_dataset), the download
    bench.data.decoding   decoding: ImageFolder files, CIFAR pickles, the synthetic set
    bench.data.cache      the decoded-tensor cache, checked against its source at every load
    bench.data.data       loading a DataSource into an ImageData (load_dataset), and the subset a run trains on
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch
from torch import Tensor

from bench.data import decoding, synthetic
from bench.data.cache import Expected, cache_path, load_cache, save_cache
from bench.data.decoding import (SYNTHETIC_SEED, _cifar_pickle_source, _imagefolder_source, _synthetic_source,
                                 _tensor_fingerprint, _train_images, _train_mean)
from bench.core.errors import BenchError, Notify
from bench.data.sources import (_CIFAR, _CIFAR_TITLE, DATASETS, DataSource, _canonical, _download_cifar, _find_cifar,
                                _is_imagefolder, default_data_dir, resolve_dataset)

__all__ = ["DATASETS", "DataInfo", "DataSource", "ImageData", "default_data_dir", "fixed_subset", "load_dataset",
           "resolve_dataset", "take_subset", "train_size"]

SYNTHETIC_TRAIN = 20000  # the synthetic set's training images unless told otherwise
CIFAR_TRAIN = 50000  # CIFAR-10's and CIFAR-100's training images, as released

_SYNTHETIC_NOTE = ("offline synthetic shapes (bench/data/synthetic.py), not CIFAR-10: errors are not comparable "
                   "to the paper's")


@dataclasses.dataclass(frozen=True)
class DataInfo:
    """What a run was trained on; saved into every run's config.json and drawn on figures."""

    name: str  # "cifar10" | "cifar100" | "synthetic" | "imagefolder:<folder name>"
    source: str  # path it was read from, or "generated (seed N)"
    num_classes: int
    image_size: int
    train_size: int
    test_size: int
    note: str  # caveat for readers; "" if none
    # What the data is, not where it lies: a hash of the file list (names, sizes, labels), of the decoded
    # tensors for CIFAR's pickles, or of the synthetic set's parameters. Saved in each run's config.json so a
    # run folder found again with other data under the same name is refused (bench.results.store.check_same_data).
    fingerprint: str = ""


@dataclasses.dataclass
class ImageData:
    """A whole dataset as tensors: uint8 images [N,3,H,W], int64 labels [N], and the training per-pixel mean."""

    info: DataInfo
    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    mean: Tensor  # float32 [3,H,W], per-pixel mean of the training images in [0,1] units

    def to(self, device: torch.device | str) -> ImageData:
        """The same data on `device` (the point: the training loop then never copies from the host)."""
        return dataclasses.replace(
            self, train_images=self.train_images.to(device), train_labels=self.train_labels.to(device),
            test_images=self.test_images.to(device), test_labels=self.test_labels.to(device),
            mean=self.mean.to(device),
        )


def load_dataset(name: str | DataSource, data_dir: Path | None = None, *, image_size: int = 32,
                 synthetic_train: int = SYNTHETIC_TRAIN, synthetic_test: int = 4000, progress: bool = True,
                 notify: Notify | None = None) -> ImageData:
    """Load a dataset as CPU tensors (call `.to(device)` next), decoding it on first use and caching it.

    `name` is any `--dataset` value, found under `data_dir` (default `default_data_dir()`), or a DataSource
    that `resolve_dataset` returned, loaded as it was pinned without resolving it again (`data_dir` unused).
    `progress` shows a bar while decoding or drawing; `notify` receives sentences worth telling the user
    (auto's choice, a download, decode time, cache trouble). Bad or missing data is a BenchError naming
    the file and the fix.
    """
    notify = notify or (lambda message: None)
    canonical = name.name if isinstance(name, DataSource) else _canonical(name)
    if canonical in _CIFAR and image_size != 32:  # said before the data is looked for or the network is asked
        raise BenchError(f"{_CIFAR_TITLE[canonical]} images are 32x32: use --image-size 32 (or leave it out)")
    if isinstance(name, DataSource):
        pinned = name
    else:
        pinned = resolve_dataset(canonical, data_dir)
        if pinned.notice:
            notify(pinned.notice)
    return _load(pinned, image_size, synthetic_train, synthetic_test, progress, notify)


def _load(pinned: DataSource, image_size: int, synthetic_train: int, synthetic_test: int, progress: bool,
          notify: Notify) -> ImageData:
    """Load the pinned dataset: its cache, else decode (or draw, or download first) and cache it."""
    name, path = pinned.name, Path(pinned.path)
    fingerprint = None  # None: hash the decoded tensors
    # What the listing says before anything is decoded, for the cache to agree with (bench.data.cache.Expected).
    classes, labels, counts = {"cifar10": 10, "cifar100": 100}.get(name), {}, {}
    if name == "synthetic":
        source, cache_dir = f"generated (seed {SYNTHETIC_SEED})", path
        key, build = _synthetic_source(synthetic_train, synthetic_test, image_size, progress)
        fingerprint = decoding.fingerprint([f"synthetic {synthetic.VERSION} {synthetic_train} {synthetic_test} "
                                            f"{image_size} {SYNTHETIC_SEED}"])
        classes, counts = len(synthetic.CLASSES), {"train": synthetic_train, "test": synthetic_test}
    elif name.startswith("imagefolder"):
        source, cache_dir = str(path), path.parent
        key, build, fingerprint, labels = _imagefolder_source(path, image_size, progress, title=None, notify=notify)
    else:
        root = _find_cifar(name, path) or _download_cifar(name, path)  # resolve_dataset found it downloadable
        source, cache_dir = str(root), root.parent
        if _is_imagefolder(root):
            key, build, fingerprint, labels = _imagefolder_source(root, image_size, progress,
                                                                  title=_CIFAR_TITLE[name], notify=notify)
        else:
            key, build = _cifar_pickle_source(name, root)
    if labels:
        classes, counts = int(labels["train"].max()) + 1, {split: len(labels[split]) for split in labels}

    expected = Expected(name, key, source, image_size, classes, counts, labels)
    cache = cache_path(cache_dir, expected)
    tensors = load_cache(cache, expected, notify)
    if tensors is None:
        started = time.perf_counter()
        tensors = build()
        tensors["mean"] = _train_mean(tensors["train_images"])
        if save_cache(cache, tensors, expected, notify):
            notify(f"{name}: built in {time.perf_counter() - started:.1f} s and cached as {cache}")
    num_classes = int(tensors["num_classes"])
    wanted = {"cifar10": 10, "cifar100": 100}.get(name, num_classes)
    if num_classes != wanted:
        raise BenchError(f"{source} has {num_classes} classes, not {_CIFAR_TITLE[name]}'s {wanted}: "
                         f"use --dataset imagefolder for other image sets")
    info = DataInfo(name=name, source=source, num_classes=num_classes, image_size=image_size,
                    train_size=len(tensors["train_images"]), test_size=len(tensors["test_images"]),
                    note=_SYNTHETIC_NOTE if name == "synthetic" else tensors["note"],
                    fingerprint=fingerprint or _tensor_fingerprint(tensors))
    return ImageData(info, tensors["train_images"], tensors["train_labels"], tensors["test_images"],
                     tensors["test_labels"], tensors["mean"])


def train_size(source: DataSource, synthetic_train: int = SYNTHETIC_TRAIN) -> int:
    """How many training images `source` holds, known before anything is decoded, for `bench run`'s plan to
    check each batch against: the synthetic set's is an option, an ImageFolder's files are counted (a listing,
    as the load makes anyway), and a CIFAR copy in pickles (or one to be downloaded) holds the release's. A
    pickle copy that is not the release may hold fewer: the decoded count is checked again as the data loads
    (bench.run.state.Schedule.of), still before any run folder is made."""
    if source.name == "synthetic":
        return synthetic_train
    root = source.path if source.name.startswith("imagefolder") else _find_cifar(source.name, Path(source.path))
    return _train_images(root) if root is not None and _is_imagefolder(root) else CIFAR_TRAIN


# --- the subset a run trains on ---------------------------------------------------------------------------------


def fixed_subset(length: int, n: int | None, generator: torch.Generator) -> Tensor | None:
    """The sorted indices of `n` of `length` items drawn from `generator`, or None for all of them: the one
    draw behind take_subset, and behind the subset of a streamed set (bench.run.batches)."""
    if n is None or n >= length:
        return None
    return torch.randperm(length, generator=generator)[:n].sort().values


def take_subset(data: ImageData, train: int | None, test: int | None) -> ImageData:
    """The same fixed random subset for every run (seed 0, not the run's seed), so runs compare.

    Here, not in bench/data/loader.py: it chooses which data a run trains on (its sizes go into DataInfo and
    config.json), once per run on the whole ImageData, like load_dataset and unlike the per-epoch batching.
    """
    generator = torch.Generator().manual_seed(0)

    def pick(images: torch.Tensor, labels: torch.Tensor, n: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        index = fixed_subset(len(images), n, generator)
        if index is None:
            return images, labels
        index = index.to(images.device)
        return images[index], labels[index]

    train_images, train_labels = pick(data.train_images, data.train_labels, train)
    test_images, test_labels = pick(data.test_images, data.test_labels, test)
    info = dataclasses.replace(data.info, train_size=len(train_images), test_size=len(test_images))
    # The per-pixel mean stays the full training set's: it is a property of the data, not of the subset.
    return dataclasses.replace(data, info=info, train_images=train_images, train_labels=train_labels,
                               test_images=test_images, test_labels=test_labels)
