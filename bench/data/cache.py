"""The decoded-tensor cache of a dataset: where it lies, what it must agree with, loading and saving it.

A cache is ``<folder holding the dataset>/.cache/<name>-<key>.pt`` (the key: the source's file names, sizes and
modification times, or the synthetic set's parameters). It is trusted only when it agrees with what it claims
to be, checked at every load: its own digest (`cache_digest`), the source it records (the dataset's name and
key), its tensors' dtypes and shapes, the image size, and the class count, image counts and labels the
source's listing gives. One that disagrees is decoded again, with one line saying why; the run then records
what was decoded. Neither `.cache` nor the file may be a link (bench.core.files' link rule).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from bench.core.errors import Notify, first_line
from bench.core.files import RefusedFile, open_regular, refuse_links_below, safe_name, write_atomic
from bench.data.decoding import fingerprint, _tensor_fingerprint

SPLITS = ("train", "test")
# The most bytes a cache may hold when its image counts are not known ahead (CIFAR's pickles): CIFAR-100's is
# 176 MiB. Where the counts are known the bound is what they take (`Expected.limit`).
UNKNOWN_COUNTS_LIMIT = 4 * 2**30
_SLACK = 64 * 2**20  # torch.save's zip framing, the mean, the labels' own bytes are counted apart


@dataclass(frozen=True)
class Expected:
    """What a cache must agree with: the source it was decoded from and what the source's listing says."""

    name: str  # the dataset's name, as DataInfo has it
    key: str  # the source's cache key
    source: str  # where it is read from, as DataInfo.source has it (recorded, shown when it differs)
    image_size: int
    num_classes: int | None = None  # None: the source's listing does not say before decoding
    counts: dict[str, int] = field(default_factory=dict)  # split -> images, where the listing says
    labels: dict[str, Tensor] = field(default_factory=dict)  # split -> labels, where the listing says

    @property
    def limit(self) -> int:
        """The most bytes the cache may hold: its images and labels at the known counts, and some slack."""
        if set(self.counts) != set(SPLITS):
            return UNKNOWN_COUNTS_LIMIT
        return sum(self.counts.values()) * (3 * self.image_size**2 + 8) + 4 * self.image_size**2 + _SLACK


def cache_path(cache_dir: Path, expected: Expected) -> Path:
    """Where the cache of `expected` lies under `cache_dir`; a link in place of `.cache` or of the file is
    a BenchError naming it."""
    cache_dir = Path(cache_dir)
    return refuse_links_below(cache_dir, cache_dir / ".cache" / f"{safe_name(expected.name)}-{expected.key}.pt")


def cache_digest(tensors: dict) -> str:
    """A hash of every tensor and field of a cache, stored in it when it is built and checked whenever it is
    loaded, so a cache of the right shape holding other pixels or labels is not trusted. It costs 0.15 s for
    CIFAR-10's 60,000 images (176 MiB, sha1) beside 0.35 s to load the cache. The cache is tied to its source by
    its key (file names, sizes and times) and the listing's labels: checking the source's bytes at every start
    would cost 1.5 s for the 60,000 JPEG files with the page cache warm, a minute cold."""
    mean = tensors["mean"].contiguous().numpy()
    return fingerprint([_tensor_fingerprint(tensors), memoryview(mean).cast("B"), tensors["note"]])


def disagreement(cached: dict, expected: Expected) -> str | None:
    """How `cached` disagrees with `expected` or with itself, in words, or None when it agrees."""
    if (cached.get("name"), cached.get("key")) != (expected.name, expected.key):
        return (f"it was decoded from {str(cached.get('source', 'a source it does not record'))[:200]}, not from "
                f"{expected.source}")
    classes = cached.get("num_classes")
    if not isinstance(classes, int) or isinstance(classes, bool) or classes < 2:
        return f"its class count {classes!r:.40} is not a count of two or more"
    if expected.num_classes is not None and classes != expected.num_classes:
        return f"it claims {classes} classes, but the source has {expected.num_classes}"
    for split in SPLITS:
        images, labels = cached.get(f"{split}_images"), cached.get(f"{split}_labels")
        if not isinstance(images, Tensor) or not isinstance(labels, Tensor):
            return f"it has no {split} tensors"
        wanted = (3, expected.image_size, expected.image_size)
        if images.dtype != torch.uint8 or images.dim() != 4 or tuple(images.shape[1:]) != wanted:
            shape = ", ".join(map(str, wanted))
            return f"its {split} images are {images.dtype} {tuple(images.shape)}, not uint8 [N, {shape}]"
        if labels.dtype != torch.int64 or labels.dim() != 1 or len(labels) != len(images):
            return f"its {split} labels are {labels.dtype} {tuple(labels.shape)}, not int64 [{len(images)}]"
        if split in expected.counts and len(images) != expected.counts[split]:
            return f"it holds {len(images)} {split} images, but the source has {expected.counts[split]}"
        if len(labels) and not 0 <= labels.min() <= labels.max() < classes:  # would fail deep in the loss
            return f"its {split} labels fall outside its {classes} classes"
        if split in expected.labels and not torch.equal(labels, expected.labels[split]):
            return f"its {split} labels are not the source's class folders"
    mean = cached.get("mean")
    if not isinstance(mean, Tensor) or mean.dtype != torch.float32 or mean.shape != cached["train_images"].shape[1:]:
        return "its mean image is not float32 of the images' shape"
    if not isinstance(cached.get("note"), str):
        return "its note is not text"
    if cached.get("digest") != cache_digest(cached):
        return "its tensors do not match its digest: damaged, edited, or from before digests"
    return None


def load_cache(path: Path, expected: Expected, notify: Notify) -> dict | None:
    """The cached tensors, or None when there is no cache, or one that cannot be read or disagrees with
    `expected` (disagreement): then the data is decoded again, with one line saying why."""
    if not (path.exists() or path.is_symlink()):
        return None
    try:
        with open_regular(path, expected.limit, "delete it") as handle:
            cached = torch.load(handle, map_location="cpu", weights_only=True)
        reason = disagreement(cached, expected) if isinstance(cached, dict) else "it holds no dict of tensors"
    except RefusedFile as error:
        reason = error.reason
    except Exception as error:  # any damage (a truncated file, a foreign pickle) means: decode again
        reason = f"unreadable: {type(error).__name__}"
    if reason is not None:
        notify(f"cache {path} is not used ({reason}); decoding the data again")
        return None
    return cached


def save_cache(path: Path, tensors: dict, expected: Expected, notify: Notify) -> bool:
    """Record the source in `tensors` and its digest, then write it atomically, so a killed process never leaves
    half a cache behind; a cache that cannot be written only costs the next start a decode."""
    tensors.update(name=expected.name, key=expected.key, source=expected.source, digest=cache_digest(tensors))
    try:
        write_atomic(path, lambda handle: torch.save(tensors, handle))
        return True
    except Exception as error:  # torch.save raises RuntimeError for some write failures, OSError for others
        notify(f"could not write the data cache {path} ({first_line(error, 200)}); the next start decodes again")
        return False
