"""How fast bench.data.streaming feeds a net at 224, beside torchvision's ImageFolder + DataLoader, and how much memory it
holds (docs/benchmarks.md, "Streaming an image folder").

    python scripts/loader_bench.py speed [--images 600] [--workers 1] [--repeats 3]
    python scripts/loader_bench.py memory [--images 20000] [--workers 1]

`speed` writes a folder of generated JPEGs of ImageNet's typical sizes (500x375 and 375x500, about 90 KB each)
in a temporary folder, then measures images/s for:

- decoding alone (torchvision.io, what bench.data.streaming uses; and PIL, what ImageFolder uses), in this process:
  the ceiling per core of any loader that decodes each image once;
- bench.data.streaming's StreamLoader and torchvision's ImageFolder + DataLoader, each with `--workers` workers and the
  same transforms: section 3.4's scale augmentation (torchvision: RandomShortestSize(256..480), RandomCrop(224),
  RandomHorizontalFlip), RandomResizedCrop(224) + flip, and the test view (Resize(256), CenterCrop(224)).

Each loader yields uint8 batches of 64; the mean subtraction happens on the device, after either. Each figure is
the best of `--repeats` passes over the folder, in images per wall-clock second (what a dedicated core gives, when
no other process shares it) and per CPU second of this process and its workers together (what a core gives,
counted however busy the machine was); a pass includes starting its workers.

`memory` streams one epoch of `--images` generated JPEGs of about 224x224 with the scale augmentation, reading
every pixel of each batch as training does, and prints the peak resident memory of this process and of its
workers beside what bench.data.data's whole-set cache of the same set would hold.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's bench, not an installed one

from bench.core.files import size_text  # noqa: E402
from bench.data.streaming import StreamLoader, list_folder, read_image  # noqa: E402
from bench.data.views import Augmentation, View  # noqa: E402

BATCH = 64


def _photo(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """A picture with a photograph's mix of smooth regions and texture, so that it compresses like one."""
    def field(step: int, resample: int) -> np.ndarray:
        small = rng.integers(0, 256, (height // step + 2, width // step + 2, 3), dtype=np.uint8)
        return np.asarray(Image.fromarray(small).resize((width, height), resample), dtype=np.float32)

    pixels = 0.7 * field(16, Image.BICUBIC) + 0.3 * field(3, Image.BILINEAR) + rng.normal(0, 12, (height, width, 3))
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def write_folder(root: Path, images: int, sizes: list[tuple[int, int]], classes: int = 10,
                 distinct: int | None = None) -> Path:
    """train/ and test/ of `images` training JPEGs (quality 90) and a tenth as many test ones. With `distinct`,
    only that many pictures are drawn and encoded, and the files repeat them: a loader reads and decodes every
    file whatever it holds, and drawing 20,000 pictures would take longer than streaming them."""
    rng = np.random.default_rng(0)
    encoded: list[bytes] = []
    for split, count in (("train", images), ("test", max(images // 10, classes))):
        for i in range(count):
            folder = root / split / f"class{i % classes}"
            folder.mkdir(parents=True, exist_ok=True)
            if distinct is None or len(encoded) < distinct:
                width, height = sizes[int(rng.integers(len(sizes)))]
                buffer = io.BytesIO()
                _photo(width, height, rng).save(buffer, "JPEG", quality=90)
                encoded.append(buffer.getvalue())
            (folder / f"{i:06d}.jpg").write_bytes(encoded[-1] if distinct is None else encoded[i % len(encoded)])
    return root


def _cpu_seconds() -> float:
    """CPU seconds of this process and of its children that have ended (a DataLoader joins its workers at the end
    of each epoch): what a pass cost in cores, however many other processes shared them."""
    own, children = (__import__("resource").getrusage(who) for who in (0, -1))  # RUSAGE_SELF, RUSAGE_CHILDREN
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _best_rates(passes: int, one_pass) -> tuple[float, float]:
    """The best images per wall second and per CPU second of `passes` calls of `one_pass` (returns the images)."""
    wall, cpu = [], []
    for _ in range(passes):
        started, cpu_started = time.perf_counter(), _cpu_seconds()
        images = one_pass()
        wall.append(images / (time.perf_counter() - started))
        cpu.append(images / (_cpu_seconds() - cpu_started))
    return max(wall), max(cpu)


def _epoch(batches) -> int:
    """The images of one pass over a loader, each batch's pixels read once."""
    return sum(len(images) + 0 * int(images.max()) for images in
               (batch.images if hasattr(batch, "images") else batch[0] for batch in batches))


def _decode_only(paths: list[str], decoder: str) -> int:
    for path in paths:
        if decoder == "torchvision.io":
            read_image(path)
        else:
            with Image.open(path) as image:
                image.convert("RGB")
    return len(paths)


def _torchvision_loader(root: Path, augmentation: Augmentation | None, workers: int):
    from torchvision import datasets
    from torchvision.transforms import v2

    if augmentation is Augmentation.scale:
        steps = [v2.RandomShortestSize(list(range(256, 481)), antialias=True), v2.RandomCrop(224),
                 v2.RandomHorizontalFlip()]
    elif augmentation is Augmentation.resized_crop:
        steps = [v2.RandomResizedCrop(224, antialias=True), v2.RandomHorizontalFlip()]
    else:
        steps = [v2.Resize(256, antialias=True), v2.CenterCrop(224)]
    folder = datasets.ImageFolder(str(root / "train"), transform=v2.Compose([*steps, v2.PILToTensor()]))
    return torch.utils.data.DataLoader(folder, batch_size=BATCH, shuffle=augmentation is not None,
                                       num_workers=workers, generator=torch.Generator().manual_seed(0))


def speed(args: argparse.Namespace) -> dict:
    root = Path(tempfile.mkdtemp(prefix="loader-bench-"))
    try:
        write_folder(root, args.images, [(500, 375), (375, 500), (500, 333)])
        listing = list_folder(root)
        paths = [listing.train.path(i) for i in range(len(listing.train))]
        result = {"images": len(paths), "mean_file_kib": round(np.mean([os.path.getsize(p) for p in paths]) / 1024),
                  "workers": args.workers, "batch": BATCH}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            for decoder in ("torchvision.io", "PIL"):
                result[f"decode {decoder}"] = _best_rates(args.repeats, lambda: _decode_only(paths, decoder))
        for augmentation in (Augmentation.scale, Augmentation.resized_crop, None):
            name = augmentation.value if augmentation else "test"
            ours = StreamLoader(listing.train, View(224, augmentation), batch_size=BATCH, seed=0,
                                shuffle=augmentation is not None, drop_last=False, workers=args.workers)
            theirs = _torchvision_loader(root, augmentation, args.workers)
            result[f"ours {name}"] = _best_rates(args.repeats, lambda: _epoch(ours.batches(0)))
            result[f"torchvision {name}"] = _best_rates(args.repeats, lambda: _epoch(theirs))
    finally:
        shutil.rmtree(root)
    return result


def _memory_of(pid: int | str, field: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith(field))


def memory(args: argparse.Namespace) -> dict:
    root = Path(tempfile.mkdtemp(prefix="loader-memory-"))
    try:
        started = time.perf_counter()
        write_folder(root, args.images, [(224, 224), (240, 224), (224, 256), (256, 240)], distinct=500)
        written = time.perf_counter() - started
        listing = list_folder(root)
        loader = StreamLoader(listing.train, View(224, Augmentation.scale), batch_size=256, seed=0, shuffle=True,
                              drop_last=True, workers=args.workers)
        started, seen, worker_peak = time.perf_counter(), 0, 0
        for batch in loader.batches(0):
            seen += len(batch.images) + 0 * int(batch.images.max())  # every pixel read, as training reads it
            children = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text().split()
            worker_peak = max([worker_peak, *(_memory_of(pid, "VmHWM:") for pid in children)])
        seconds = time.perf_counter() - started
        peak = _memory_of("self", "VmHWM:")
        return {"images": seen, "written_s": round(written), "epoch_s": round(seconds, 1),
                "images_per_s": round(seen / seconds), "peak_rss": size_text(peak),
                "worker_peak_rss": size_text(worker_peak), "in_flight": size_text(loader.in_flight_bytes),
                "whole_set_cache": size_text(listing.cache_bytes(224)),
                "peak_rss_bytes": peak, "worker_peak_rss_bytes": worker_peak}
    finally:
        shutil.rmtree(root)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["speed", "memory"])
    parser.add_argument("--images", type=int, default=None, help="training images generated (speed 600, memory 20000)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.what == "speed":
        args.images = args.images or 600
        result = speed(args)
    else:
        args.images = args.images or 20_000
        result = memory(args)
    for key, value in result.items():
        if isinstance(value, tuple):
            print(f"{key:28} {value[0]:7.1f} images/s  {value[1]:7.1f} images per CPU second")
        else:
            print(f"{key:28} {value}")


if __name__ == "__main__":
    main()
