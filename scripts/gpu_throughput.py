"""Training-step throughput of the CIFAR nets on a GPU: eager, CUDA graph, CUDA graph + bf16 + channels_last.

One step is what a CIFAR-10 training loop does per batch with the data already on the device: draw a
batch from a synthetic uint8 set resident on the device, augment it there (4-pixel pad, random 32x32
crop, random horizontal flip, normalise), forward, cross-entropy, backward, SGD step. The three modes:

    eager-fp32      plain PyTorch
    graph-fp32      the whole step (augmentation included) captured once as a CUDA graph and replayed
    graph-bf16-cl   the same, under bf16 autocast with channels_last activations and weights

Each (net, mode) gets warm-up steps (cudnn autotuning, graph capture), then `--repeats` timed runs of
`--iters` steps between CUDA events; images/s is the batch size over the median seconds per step.
On a CPU only the eager mode runs; the graph modes are reported as "n/a on CPU".

    python scripts/gpu_throughput.py --out results/gpu_throughput
    python scripts/gpu_throughput.py --device cpu --iters 3 --depths 20 --out /tmp/throughput
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import resnet
from bench.errors import BenchError
from bench.provenance import environment, utc_now
from bench.timing import autocast, make_optimizer, measure

# name: (captured as a CUDA graph, precision, channels_last)
MODES = {
    "eager-fp32": (False, "fp32", False),
    "graph-fp32": (True, "fp32", False),
    "graph-bf16-cl": (True, "bf16", True),
}
NOT_ON_CPU = "n/a on CPU"
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
PAD, SIZE = 4, 32


def crop_flip(padded: torch.Tensor, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """SIZE x SIZE crops of `padded` at per-image offsets `top`, `left`, mirrored where `flip` is True.

    One gather for the whole batch, with no host synchronisation, so it can be captured in a CUDA graph.
    """
    n, c = padded.shape[:2]
    steps = torch.arange(SIZE, device=padded.device)
    rows = top[:, None] + steps
    # A mirrored crop reads its columns right to left.
    cols = left[:, None] + torch.where(flip[:, None], SIZE - 1 - steps, steps)
    images = torch.arange(n, device=padded.device)[:, None, None, None]
    channels = torch.arange(c, device=padded.device)[None, :, None, None]
    return padded[images, channels, rows[:, None, :, None], cols[:, None, None, :]]


def augment(batch: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """The CIFAR augmentation of He et al. on a uint8 batch, on its device: pad, random crop and flip, normalise."""
    n = batch.shape[0]
    offsets = torch.randint(2 * PAD + 1, (2, n), device=batch.device)
    flip = torch.randint(2, (n,), device=batch.device, dtype=torch.bool)
    crops = crop_flip(F.pad(batch, (PAD,) * 4), offsets[0], offsets[1], flip)
    return (crops.float() / 255 - mean) / std


def make_step(
    model: nn.Module, data: torch.Tensor, labels: torch.Tensor, batch_size: int, *, graph: bool, precision: str,
    channels_last: bool,
) -> Callable[[], None]:
    """One training step on a batch drawn from `data`, as a callable; with `graph`, a CUDA graph replay."""
    device = data.device
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=memory_format).train()
    optimizer = make_optimizer(model)
    mean = torch.tensor(CIFAR_MEAN, device=device)[:, None, None]
    std = torch.tensor(CIFAR_STD, device=device)[:, None, None]

    def body() -> None:
        index = torch.randint(data.shape[0], (batch_size,), device=device)
        images = augment(data[index], mean, std).contiguous(memory_format=memory_format)
        with autocast(device, precision):
            loss = F.cross_entropy(model(images), labels[index])
        loss.backward()
        optimizer.step()

    if not graph:
        def eager() -> None:
            optimizer.zero_grad(set_to_none=True)
            body()
        return eager

    # The capture recipe of the CUDA-graph docs: warm up on a side stream (cudnn autotuning, optimizer
    # state), then capture with gradients set to None so backward allocates them in the graph's pool.
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):
            optimizer.zero_grad(set_to_none=True)
            body()
    torch.cuda.current_stream(device).wait_stream(side)
    optimizer.zero_grad(set_to_none=True)
    captured = torch.cuda.CUDAGraph()
    with torch.cuda.graph(captured):
        body()
    return captured.replay


def run(
    device: torch.device, depths: Sequence[int], archs: Sequence[str], batch_size: int, iters: int, repeats: int,
    warmup: int, dataset_size: int,
) -> list[dict]:
    """Images/s of every (depth, arch, mode), one row each."""
    generator = torch.Generator().manual_seed(0)
    data = torch.randint(256, (dataset_size, 3, SIZE, SIZE), generator=generator, dtype=torch.uint8).to(device)
    labels = torch.randint(10, (dataset_size,), generator=generator).to(device)
    rows = []
    for depth in depths:
        for arch in archs:
            for mode, (graph, precision, channels_last) in MODES.items():
                row = {"model": f"{arch}-{depth}", "arch": arch, "depth": depth, "mode": mode, "device": str(device),
                       "batch_size": batch_size, "images_per_second": None, "median_ms": None, "iqr_ms": None,
                       "status": "ok"}
                if device.type != "cuda" and graph:
                    rows.append({**row, "status": NOT_ON_CPU})
                    continue
                torch.manual_seed(0)
                model = resnet.build_model(depth, arch, family="cifar").to(device)
                step = make_step(model, data, labels, batch_size, graph=graph, precision=precision,
                                 channels_last=channels_last)
                timing = measure(step, device, warmup=warmup, repeats=repeats, number=iters)
                rows.append({**row, "images_per_second": batch_size / timing.median,
                             "median_ms": timing.median * 1e3, "iqr_ms": timing.iqr * 1e3})
                del step, model
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    return rows


def markdown(rows: list[dict]) -> str:
    """Images/s as a Markdown table: one line per net, one column per mode."""
    lines = ["| model | " + " | ".join(MODES) + " |", "|---" + "|---:" * len(MODES) + "|"]
    for model in dict.fromkeys(row["model"] for row in rows):
        cells = []
        for mode in MODES:
            row = next(r for r in rows if r["model"] == model and r["mode"] == mode)
            cells.append(row["status"] if row["status"] != "ok" else f"{row['images_per_second']:,.0f}")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_with_settings(args: argparse.Namespace, device: torch.device) -> list[dict]:
    """`run` with the thread count asked for and cudnn autotuning on, both put back afterwards."""
    threads, autotune = torch.get_num_threads(), torch.backends.cudnn.benchmark
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = True  # as a training run would: the warm-up steps pick the algorithms
    try:
        return run(device, args.depths, args.archs, args.batch_size, args.iters, args.repeats, args.warmup,
                   args.dataset_size)
    finally:
        torch.set_num_threads(threads)
        torch.backends.cudnn.benchmark = autotune


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--depths", type=int, nargs="+", default=[20, 56, 110])
    parser.add_argument("--archs", nargs="+", default=list(resnet.ARCHS), choices=resnet.ARCHS)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--iters", type=int, default=50, help="steps per timed run")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs; the median is reported")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    parser.add_argument("--dataset-size", type=int, default=50_000, help="synthetic uint8 images on the device")
    parser.add_argument("--threads", type=int, default=None, help="CPU intra-op threads (torch's default if unset)")
    parser.add_argument("--out", type=Path, required=True, help="folder for throughput.csv and throughput.json")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the table, write the files; exit status 2 with one line on bad input."""
    args = parse_args(argv)
    try:
        try:
            device = torch.device(args.device)
        except RuntimeError:
            device = None
        if device is None or device.type not in ("cpu", "cuda"):
            raise BenchError(f"unknown device {args.device!r}: choose cpu, cuda or cuda:N")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise BenchError("no CUDA GPU is visible to torch: run with --device cpu")
        for depth in args.depths:
            if not resnet.is_cifar_depth(depth):
                raise BenchError(f"depth {depth} is not a CIFAR depth: use 6n+2 such as 20, 56, 110")
        for name in ("batch_size", "iters", "repeats", "dataset_size", "threads"):
            if getattr(args, name) is not None and getattr(args, name) < 1:
                raise BenchError(f"--{name.replace('_', '-')} must be at least 1")
        rows = run_with_settings(args, device)
        args.out.mkdir(parents=True, exist_ok=True)
        with open(args.out / "throughput.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        meta = {"timestamp": utc_now(), "environment": environment(device), "args": vars(args)}
        (args.out / "throughput.json").write_text(json.dumps({**meta, "rows": rows}, indent=2, default=str) + "\n")
    except (BenchError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"Training-step images/s, batch {args.batch_size}, {meta['environment']['device_name']}:\n")
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
