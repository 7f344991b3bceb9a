"""Where a run's batches come from: the whole set held on the device (`MemoryBatches`), or an ImageFolder
streamed from disk (`StreamBatches`, on bench.data.streaming). bench.run.train asks either for the same things, so the
training loop does not know which it has:

- `draw(iterations)`: the epoch's batches, drawn at its start and checkpointed with it (image indices in
  memory; for a stream only their count: its order comes from the run's seed and the epoch);
- `train(batches, done, epoch)`: this rank's (uint8 images, labels) of each batch from `done` on, on the device;
- `test()`: this rank's share of the test split, in batches; `probe()`: the diagnostics' fixed test images;
- `mean`, and `state()` / `restore()`: what a checkpoint keeps of the source (a stream's pixel mean, so a
  resume subtracts the same one);
- `loading(data, config)`: how the set is read, for config.json.

`StreamedData` is what `bench run` holds for a streamed set instead of an ImageData: the listing's two splits,
its DataInfo, the pixel mean and the worker count; `load_streamed` makes it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor

from bench.core.config import RunConfig
from bench.core.errors import Notify
from bench.data import decoding
from bench.data.data import DataInfo, ImageData, fixed_subset
from bench.data.loader import augment, epoch_batches
from bench.data.streaming import SplitFiles, StreamLoader, list_folder, pixel_mean
from bench.data.views import Augmentation, View
from bench.run.distributed import Dist
from bench.run.layers import RESPONSE_IMAGES, response_probe

Batches = Iterator[tuple[Tensor, Tensor]]  # (uint8 images, int64 labels), this rank's, on the run's device


@dataclasses.dataclass
class StreamedData:
    """A set streamed from disk: its splits (the fixed subset already taken), what it is (`info`, whose
    image_size is the views' size), the per-pixel mean of its training view and the loader's worker count."""

    info: DataInfo
    train: SplitFiles
    test: SplitFiles
    mean: Tensor  # float32 [3, size, size], on the CPU
    workers: int


Data = ImageData | StreamedData  # what a run trains on: a set held in memory, or one streamed from disk


def load_streamed(root: Path, name: str, size: int, *, workers: int, train_subset: int | None,
                  test_subset: int | None, notify: Notify, mean: bool = True) -> StreamedData:
    """The ImageFolder at `root` listed for streaming at `size` x `size`, with the fixed subset bench.data.data takes
    (seed 0), and its pixel mean (bench.data.streaming.pixel_mean, of the whole training split's fixed sample;
    `mean` False: None, for a rank that is sent rank 0's)."""
    listing = list_folder(root, notify)
    generator = torch.Generator().manual_seed(0)
    train, test = _subset(listing.train, train_subset, generator), _subset(listing.test, test_subset, generator)
    info = DataInfo(name=name, source=str(root), num_classes=len(listing.classes), image_size=size,
                    train_size=len(train), test_size=len(test), note="",
                    fingerprint=decoding.fingerprint([f"stream {size}", listing.fingerprint]))
    average = pixel_mean(listing.train, size, workers=workers, notify=notify) if mean else None
    return StreamedData(info, train, test, average, workers)  # type: ignore[arg-type]


def _subset(split: SplitFiles, n: int | None, generator: torch.Generator) -> SplitFiles:
    picked = fixed_subset(len(split), n, generator)
    return split if picked is None else split.subset(picked.numpy())


def loading(data: Data, config: RunConfig) -> dict:
    """How a run reads its set, for config.json: held in memory, or streamed (workers, views)."""
    if isinstance(data, ImageData):
        return {"path": "in memory"}
    size = data.info.image_size
    return {"path": "streamed", "workers": data.workers, "train_view": _train_view(config, size).describe(),
            "test_view": View(size).describe()}


def batch_source(data: Data, config: RunConfig, ranks: Dist, device: torch.device,
                 generator: torch.Generator, notify: Notify) -> MemoryBatches | StreamBatches:
    """The run's batches from `data`, whichever kind it is."""
    if isinstance(data, ImageData):
        return MemoryBatches(data, config, ranks, generator)
    return StreamBatches(data, config, ranks, device, notify)


def _train_view(config: RunConfig, size: int) -> View:
    """Section 3.4's scale augmentation, or with --no-augment the test view."""
    return View(size, Augmentation.scale if config.augment else None)


class MemoryBatches:
    """The set on the device: each epoch's global batches drawn from the run's generator, each rank taking its
    contiguous slice of every one, the paper's CIFAR crop and flip batched on the device."""

    def __init__(self, data: ImageData, config: RunConfig, ranks: Dist, generator: torch.Generator) -> None:
        self.data, self.config, self.ranks, self.generator, self.mean = data, config, ranks, generator, data.mean
        per_rank = config.batch_size // ranks.world_size
        self.rank_share = slice(ranks.rank * per_rank, (ranks.rank + 1) * per_rank)

    def example(self, n: int) -> Tensor:
        return self.data.train_images[:n]

    def draw(self, iterations: int) -> Tensor:
        batches = epoch_batches(len(self.data.train_images), self.config.batch_size, self.generator, drop_last=True)
        return torch.stack(batches[:iterations]).cpu()

    def train(self, batches: Tensor, done: int, epoch: int) -> Batches:
        """Lazily: the augmentation draws from the run's generator only for a batch the loop asks for, so a stop
        between iterations leaves the generator where the checkpoint expects it."""
        data, batches = self.data, batches.to(self.data.train_images.device)
        for index in range(done, len(batches)):
            idx = batches[index]
            images = data.train_images[idx]
            if self.config.augment:
                images = augment(images, self.generator)
            yield images[self.rank_share], data.train_labels[idx][self.rank_share]

    def test(self, batch_size: int) -> Batches:
        """This rank's contiguous share of the test split, `batch_size` images at a time."""
        images, labels = self.data.test_images, self.data.test_labels
        share = -(-len(images) // self.ranks.world_size)
        first, last = self.ranks.rank * share, min((self.ranks.rank + 1) * share, len(images))
        for start in range(first, last, batch_size):
            end = min(start + batch_size, last)
            yield images[start:end], labels[start:end]

    def probe(self) -> Tensor:
        return response_probe(self.data.test_images)

    def state(self) -> dict:
        return {}

    def restore(self, checkpoint: dict) -> None:
        pass


class StreamBatches:
    """The set read from disk a batch at a time (bench.data.streaming.StreamLoader): each epoch's order from the
    run's seed and the epoch, each rank its share of every global batch, views drawn from (seed, epoch, place);
    nothing here draws from the run's generator, so a resume at any batch of an epoch repeats it exactly."""

    def __init__(self, data: StreamedData, config: RunConfig, ranks: Dist, device: torch.device,
                 notify: Notify) -> None:
        self.data, self.device, self.mean = data, device, data.mean.to(device)
        size = data.info.image_size
        options = dict(batch_size=config.batch_size, seed=config.seed, rank=ranks.rank, world_size=ranks.world_size,
                       workers=data.workers, pin_memory=device.type == "cuda", notify=notify)
        self.train_loader = StreamLoader(data.train, _train_view(config, size), shuffle=True, drop_last=True,
                                         **options)
        # Evaluated a global batch at a time: it divides over the ranks (bench.run.state.check_batch).
        self.test_loader = StreamLoader(data.test, View(size), shuffle=False, drop_last=False, **options)
        self._probe: Tensor | None = None

    def example(self, n: int) -> Tensor:
        size = self.data.info.image_size
        return torch.zeros(n, 3, size, size, dtype=torch.uint8, device=self.device)

    def draw(self, iterations: int) -> Tensor:
        # The order is (seed, epoch)'s: only the count is kept, the epoch's or the rest of the run's.
        return torch.empty(min(iterations, self.train_loader.order.global_batches()), 0, dtype=torch.int64)

    def train(self, batches: Tensor, done: int, epoch: int) -> Batches:
        return self._on_device(self.train_loader.batches(epoch, done), len(batches) - done)

    def test(self, batch_size: int) -> Batches:
        """The test view, a global batch at a time whatever `batch_size` (the stored-size count bench.run.train
        scales for the in-memory set): training fits that batch at this size, with its gradients."""
        return self._on_device(self.test_loader.batches(0), None)

    def _on_device(self, stream: Iterator, count: int | None) -> Batches:
        try:
            for index, batch in enumerate(stream):
                if count is not None and index == count:  # the run's last epoch may end before the split does
                    return
                yield (batch.images.to(self.device, non_blocking=True),
                       batch.labels.to(self.device, non_blocking=True))
        finally:
            stream.close()  # the loader's workers end with the epoch, a stop or an error alike

    def probe(self) -> Tensor:
        """The test view of RESPONSE_IMAGES test images spread over the split (bench.run.layers.response_probe),
        decoded once, in this process."""
        if self._probe is None:
            chosen = response_probe(torch.arange(len(self.data.test)), RESPONSE_IMAGES).numpy()
            loader = StreamLoader(self.data.test.subset(chosen), View(self.data.info.image_size), batch_size=256,
                                  seed=0, shuffle=False, drop_last=False)
            self._probe = torch.cat([batch.images for batch in loader.batches(0)]).to(self.device)
        return self._probe

    def state(self) -> dict:
        return {"mean": self.mean.cpu()}

    def restore(self, checkpoint: dict) -> None:
        """The pixel mean the run started with, whatever this start's sample gave."""
        mean = checkpoint.get("mean")
        if mean is None:
            return
        if not isinstance(mean, Tensor) or mean.shape != self.mean.shape or mean.dtype != self.mean.dtype:
            raise ValueError(f"its pixel mean is not a float32 {tuple(self.mean.shape)} tensor")
        self.mean = mean.to(self.device)
