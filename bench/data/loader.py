"""The on-device loader of `bench run`: batches of a dataset that already lives on the training device.

`epoch_batches` draws one epoch's index batches, `augment` does the paper's CIFAR augmentation (4-pixel pad,
random 32x32 crop, horizontal flip) batched on the device, `normalize` subtracts the per-pixel mean, and
`resize` brings a batch to the run's input size. The crop is drawn at the stored size, before the resize, so it
scales with the input: 4 of 32 pixels is 28 of 224, the same share of the image.
Nothing here copies from the host or knows about ranks: under DistributedDataParallel every rank draws the
same global batches and the caller, bench/run/train.py, takes each rank's slice of them. Finding, decoding and
caching the data (and the fixed subset a run trains on) is bench/data/data.py's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def augment(images: Tensor, generator: torch.Generator, *, padding: int = 4) -> Tensor:
    """The paper's CIFAR augmentation, per sample and batched on the images' device: pad `padding` zero
    pixels on each side, take a random crop of the original size, flip it horizontally with probability 1/2.

    uint8 [N,C,H,W] in, uint8 [N,C,H,W] out. All randomness comes from `generator` (offsets, then flips),
    so the same generator state gives the same batch; it may live on the images' device or the CPU.
    """
    n, _, h, w = images.shape
    device = images.device
    padded = F.pad(images, (padding, padding, padding, padding))
    offsets = _to(torch.randint(0, 2 * padding + 1, (n, 2), generator=generator, device=generator.device), device)
    flips = _to(torch.rand(n, generator=generator, device=generator.device) < 0.5, device)
    rows = offsets[:, 0, None] + torch.arange(h, device=device)  # [N,H]: which padded row each output row reads
    cols = offsets[:, 1, None] + torch.arange(w, device=device)
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    # Advanced indexing around the channel slice gives [N,H,W,C]; one gather for the whole batch.
    out = padded[torch.arange(n, device=device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def _to(t: Tensor, device: torch.device) -> Tensor:
    """`t` on `device`. From the CPU to a GPU through pinned memory, without blocking: a copy from pageable
    memory (non_blocking=False) waits for the GPU's queue to drain, a host sync every training step that
    would hold back compiled and graphed runs. A host-to-device non_blocking copy from pinned memory is the
    safe direction (torch's "good usage of non_blocking and pin_memory" tutorial)."""
    if t.device == device:
        return t
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def resize(images: Tensor, size: int) -> Tensor:
    """Float images [N,C,H,W] at `size` x `size`, as torchvision's Resize(size) makes a square image: bilinear,
    antialiased when shrinking; unchanged when they are that size already. Done per batch on the images'
    device, so the dataset stays in memory at its stored size."""
    if images.shape[-2:] == (size, size):
        return images
    shrinking = size < min(images.shape[-2:])
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=shrinking)


def normalize(images: Tensor, mean: Tensor) -> Tensor:
    """uint8 images -> floats of the mean's dtype (float32 in every run) on the same device, scaled to [0,1]
    minus the training set's per-pixel mean.

    This is the paper's normalisation ("the per-pixel mean subtracted", section 4.2); it does not divide
    by a per-channel standard deviation.
    """
    return images.to(mean.dtype).div_(255.0).sub_(mean)


def epoch_batches(n: int, batch_size: int, generator: torch.Generator, *, drop_last: bool = False) -> list[Tensor]:
    """Index tensors (on the generator's device) for one epoch over n samples: one random permutation split
    into batches of `batch_size`, without a final partial batch if `drop_last`.

    Under DistributedDataParallel every rank calls this with a generator in the same state, so all ranks
    get the same global batches and each trains on its own slice of them (bench.run.train does the slicing).
    `batch_size` is positive: bench.core.config.validate checks it where it enters.
    """
    order = torch.randperm(n, generator=generator, device=generator.device)
    batches = list(order.split(batch_size))
    if batches and drop_last and len(batches[-1]) < batch_size:
        batches.pop()
    return batches
