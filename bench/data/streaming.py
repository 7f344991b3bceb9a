"""An image folder streamed from disk in batches, for sets larger than memory (ImageNet's 1.28 million JPEGs).

bench.data.data decodes a whole set once into one uint8 tensor. Here each batch is read and decoded in DataLoader
worker processes, so memory holds the batches in flight (`StreamLoader.in_flight_bytes`), not the set.

- `list_folder`: a train/ + test/ (or val/) ImageFolder as two `SplitFiles` (file names and labels)
- `View` (bench.data.views): what an image becomes: section 3.4's scale augmentation, RandomResizedCrop, or the test view
- `EpochOrder`: one epoch's batches from (seed, epoch) alone, from a saved position on, each rank its share
- `FolderDataset`: one batch decoded in a worker, as a `Batch` of uint8 images, labels and skipped files
- `StreamLoader`: the DataLoader over them; a failed or hung worker is a one-line BenchError
- `pixel_mean`: the per-pixel mean the batches are normalised with (bench.data.loader.normalize)

Every random draw of an image's view comes from (run seed, epoch, the image's place in the epoch's order), not
from a worker's generator: the same batch is the same whichever worker decodes it, with any number of workers,
on any number of ranks, and from any saved position, so a resumed epoch repeats an unbroken one exactly.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from bench.core.errors import BenchError, Notify, first_line
from bench.data.decoding import Undecodable, class_files, fingerprint, read_image
from bench.data.views import PAPER_SIZE, View

# --- the files ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SplitFiles:
    """One split's images: `names` ("<class>/<file>" under `folder`) and their labels (the training split's class
    indices). The names are one numpy bytes array, not a list of str: the workers read it without touching
    Python objects' reference counts, which would copy a list's pages into every forked worker."""

    folder: Path
    names: np.ndarray  # dtype S<n>, os.fsencode'd
    labels: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.names)

    def path(self, index: int) -> str:
        return os.path.join(self.folder, os.fsdecode(self.names[index]))

    def subset(self, indices: np.ndarray) -> SplitFiles:
        return dataclasses.replace(self, names=self.names[indices], labels=self.labels[indices])


@dataclasses.dataclass(frozen=True)
class FolderListing:
    """A train/ + test/ (or val/) ImageFolder, listed; `fingerprint` hashes the names and labels (not the sizes:
    a stat of each of 1.28 million files costs minutes on a cold network file system)."""

    root: Path
    classes: tuple[str, ...]
    train: SplitFiles
    test: SplitFiles
    fingerprint: str

    def cache_bytes(self, size: int) -> int:
        """What the whole set would take decoded into memory at `size` x `size`, as bench.data.data caches it."""
        return (len(self.train) + len(self.test)) * 3 * size * size

    def streams(self, size: int, memory_bytes: int | None = None) -> bool:
        """Whether the set is streamed rather than held in memory: when its decoded copy (`cache_bytes`) would
        take more than half of `memory_bytes` (by default this machine's physical memory), leaving the rest to
        the model, the batches and the cache's load, which briefly holds it twice."""
        if memory_bytes is None:
            memory_bytes = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return self.cache_bytes(size) > memory_bytes // 2


def _split(folder: Path, per_class: dict, classes: list[str]) -> SplitFiles:
    names = [os.fsencode(f"{cls}/{entry.name}") for cls, entries in per_class.items() for entry in entries]
    labels = np.repeat([classes.index(cls) for cls in per_class], [len(e) for e in per_class.values()])
    return SplitFiles(folder, np.array(names, dtype=bytes), labels.astype(np.int64))


def list_folder(root: Path, notify: Notify | None = None) -> FolderListing:
    """The ImageFolder at `root`: train/<class>/* and test/<class>/* (or val/). Its test split may lack some of
    the training split's classes, not hold others; one class, or a class folder without images, is refused."""
    notify = notify or (lambda message: None)
    root = Path(root)
    test_dir = root / "test" if (root / "test").is_dir() else root / "val"
    train, test = class_files(root / "train", notify), class_files(test_dir, notify)
    if len(train) < 2:  # one class: every net is right on every image
        raise BenchError(f"{root / 'train'} has {len(train)} class folder ({', '.join(train)}): a classifier needs "
                         "two or more; add a folder per class")
    unknown = sorted(set(test) - set(train))
    if unknown:
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise BenchError(f"{test_dir} has class folders that {root / 'train'} lacks ({', '.join(unknown[:5])}{more}): "
                         "give the test split only the training split's classes")
    classes = list(train)
    splits = _split(root / "train", train, classes), _split(test_dir, test, classes)
    digest = fingerprint(["imagefolder stream", *(f"{split.folder.name}/{os.fsdecode(name)} {label}" for split in splits
                                                  for name, label in zip(split.names, split.labels))])
    return FolderListing(root, tuple(classes), *splits, digest)


# --- one epoch's order ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BatchOrder:
    """One rank's share of one global batch: which images (`indices` into the split) and their places in the
    epoch's order (`positions`, what their views are drawn from)."""

    epoch: int
    positions: np.ndarray
    indices: np.ndarray


class EpochOrder(Sampler):
    """The batches of an epoch: global batches of `batch_size` images, in an order drawn from (seed, epoch)
    alone when `shuffle` (else the files' order); each of `world_size` ranks takes its contiguous share of
    every global batch, as bench.run.train slices the in-memory batches. `set_epoch(epoch, start)` begins at global
    batch `start`, a position saved within the epoch. `batch_size` is a multiple of `world_size`
    (bench.run.state.check_batch checks it where it enters)."""

    def __init__(self, size: int, batch_size: int, seed: int, *, shuffle: bool, drop_last: bool, rank: int = 0,
                 world_size: int = 1) -> None:
        self.size, self.batch_size, self.seed, self.shuffle, self.drop_last = size, batch_size, seed, shuffle, drop_last
        self.rank, self.world_size, self.epoch, self.start = rank, world_size, 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def global_batches(self) -> int:
        """Batches in a whole epoch; a final partial one is dropped with `drop_last`."""
        return self.size // self.batch_size if self.drop_last else -(-self.size // self.batch_size)

    def __len__(self) -> int:
        return max(self.global_batches() - self.start, 0)

    def __iter__(self) -> Iterator[BatchOrder]:
        order = (np.random.default_rng([self.seed, self.epoch, 0]).permutation(self.size) if self.shuffle
                 else np.arange(self.size))
        per_rank = self.batch_size // self.world_size
        for batch in range(self.start, self.global_batches()):
            first = batch * self.batch_size + self.rank * per_rank
            last = min(first + per_rank, (batch + 1) * self.batch_size, self.size)
            if first < last:
                yield BatchOrder(self.epoch, np.arange(first, last), order[first:last])


# --- decoding a batch in a worker -----------------------------------------------------------------------------


@dataclasses.dataclass
class Batch:
    """One rank's share of a batch, on the host: uint8 images [n, 3, size, size] (bench.data.loader.normalize makes
    them floats on the device) and int64 labels [n]. An image that could not be decoded is left out and named
    in `skipped` ("path (reason)"); `refused` is a one-line BenchError message that stops the run."""

    images: Tensor
    labels: Tensor
    skipped: tuple[str, ...] = ()
    refused: str = ""

    def pin_memory(self) -> Batch:  # DataLoader(pin_memory=True) calls it
        return dataclasses.replace(self, images=self.images.pin_memory(), labels=self.labels.pin_memory())


class FolderDataset(Dataset):
    """A split's images, read and decoded a batch at a time (`dataset[BatchOrder]`), each through `view`."""

    def __init__(self, files: SplitFiles, view: View, seed: int) -> None:
        self.files, self.view, self.seed = files, view, seed

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, order: BatchOrder) -> Batch:
        images = torch.empty(len(order.indices), 3, self.view.size, self.view.size, dtype=torch.uint8)
        if torch.utils.data.get_worker_info() is not None:  # written in shared memory: not copied there to be sent
            images.share_memory_()
        kept, skipped = [], []
        for position, index in zip(order.positions.tolist(), order.indices.tolist()):
            path = self.files.path(index)
            try:  # through a link, as bench.data.data reads an ImageFolder (a set of links into a shared copy)
                image = read_image(path, follow=True)
            except Undecodable as error:
                skipped.append(f"{path} ({error})")
                continue
            except BenchError as error:  # in-band: raised in a worker, it would come back as its traceback
                return Batch(images[:0], torch.empty(0, dtype=torch.int64), tuple(skipped), str(error))
            rng = None if self.view.augmentation is None else np.random.default_rng([self.seed, order.epoch, 1,
                                                                                     position])
            images[len(kept)] = self.view(image, rng)
            kept.append(index)
        return Batch(images[:len(kept)], torch.from_numpy(self.files.labels[kept]), tuple(skipped))


def _as_is(batch: Batch) -> Batch:
    return batch


_WORKER_FAILURES = ("DataLoader worker", "DataLoader timed out")  # torch's words for a dead or hung worker


class StreamLoader:
    """One split's batches, epoch after epoch, decoded in `workers` processes (none: in this one).

    Memory holds at most workers x `prefetch` batches in flight, plus the one being used. A worker that dies
    (killed by the system) or gives no batch for `timeout_s` seconds is a one-line BenchError. A skipped image
    is told to `notify` and counted in `skipped`."""

    def __init__(self, files: SplitFiles, view: View, *, batch_size: int, seed: int, shuffle: bool, drop_last: bool,
                 rank: int = 0, world_size: int = 1, workers: int = 0, prefetch: int = 2, timeout_s: float = 120.0,
                 pin_memory: bool = False, notify: Notify | None = None) -> None:
        self.order = EpochOrder(len(files), batch_size, seed, shuffle=shuffle, drop_last=drop_last, rank=rank,
                                world_size=world_size)
        self.view, self.workers, self.prefetch = view, workers, prefetch
        self.notify = notify or (lambda message: None)
        self.skipped: list[str] = []
        # The DataLoader's generator seeds each worker's torch, random and numpy from the run's seed; no view
        # draws from them (see the module's docstring), but nothing in a worker is left to the clock.
        self.loader = DataLoader(FolderDataset(files, view, seed), batch_size=None, sampler=self.order,
                                 collate_fn=_as_is, num_workers=workers, prefetch_factor=prefetch if workers else None,
                                 timeout=timeout_s if workers else 0, pin_memory=pin_memory,
                                 generator=torch.Generator().manual_seed(seed))

    def describe(self) -> str:
        """How the split is read, for the configuration line and config.json."""
        workers = f"{self.workers} worker{'s' if self.workers != 1 else ''}" if self.workers else "no workers"
        return f"streamed from disk ({workers}): {self.view.describe()}"

    @property
    def in_flight_bytes(self) -> int:
        """The most image bytes the loader holds at once: the batches in flight and the one in use."""
        per_batch = self.order.batch_size // self.order.world_size * 3 * self.view.size ** 2
        return per_batch * (self.workers * self.prefetch + 1)

    def batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """The batches of `epoch` from global batch `start` on (`start` batches were trained already)."""
        self.order.set_epoch(epoch, start)
        try:
            for batch in self.loader:
                for name in batch.skipped:
                    self.notify(f"skipped {name}: the decoder cannot read it; replace or delete the file")
                self.skipped += batch.skipped
                if batch.refused:
                    raise BenchError(batch.refused)
                yield batch
        except (RuntimeError, ConnectionError, EOFError) as error:
            raise worker_failure(error) or error from None


def worker_failure(error: BaseException) -> BenchError | None:
    """The one line for torch's error on a loader worker that died (killed by the system) or hung; None for any
    other error. torch raises it from its SIGCHLD handler too, wherever the main process is at the time, so
    bench.run.train asks here about an error from anywhere in a run, not only from the loader's `next`. A worker
    killed while it hands a batch over leaves the loader a broken connection (ConnectionError, EOFError) instead."""
    lost_connection = isinstance(error, (ConnectionError, EOFError))
    if not lost_connection and (not isinstance(error, RuntimeError) or not str(error).startswith(_WORKER_FAILURES)):
        return None
    return BenchError(f"a data loader worker failed ({first_line(error, 200).strip()}): run the same command again "
                      "to resume from the last save")


def pixel_mean(files: SplitFiles, size: int = PAPER_SIZE, *, sample: int = 10_000, workers: int = 0,
               batch_size: int = 256, notify: Notify | None = None) -> Tensor:
    """float32 [3, size, size] in [0, 1] units: the per-pixel mean of the test view (resize, centre crop) of a
    fixed sample of `sample` training images (drawn with seed 0, whatever the run's seed), summed exactly in
    integers, so it is the same number on every machine whose decoder gives the same pixels."""
    chosen = np.sort(np.random.default_rng(0).permutation(len(files))[:sample])
    loader = StreamLoader(files.subset(chosen), View(size), batch_size=batch_size, seed=0, shuffle=False,
                          drop_last=False, workers=workers, notify=notify)
    total, count = torch.zeros(3, size, size, dtype=torch.int64), 0
    for batch in loader.batches(0):
        for image in batch.images:  # in place: a batch's sum(dtype=int64) would copy all of it to int64 first
            total += image
        count += len(batch.images)
    if not count:
        raise BenchError(f"none of the {len(chosen)} sampled images of {files.folder} could be decoded: "
                         "check the folder's files")
    return (total.double() / (255.0 * count)).float()
