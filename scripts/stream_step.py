"""Streamed 224 training steps: a generated folder of ImageNet-sized JPEGs, read by bench.data.streaming's workers, fed to
ResNet-18 on the device (scripts/gpu_check.sh runs it, until `bench run` streams on its own).

    python scripts/stream_step.py [--device cuda] [--workers 8] [--steps 4]

On a GPU: ResNet-18 at its paper width, batch 128, bf16 autocast, channels-last, pinned batches. On the CPU:
width 16, batch 16, fp32, so that it ends in seconds. Prints the images/s of the streamed steps after the first;
exit 1 if a loss is not finite.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's bench, not an installed one
sys.path.insert(0, str(Path(__file__).resolve().parent))

from loader_bench import write_folder  # noqa: E402

from bench.data.streaming import StreamLoader, list_folder, pixel_mean  # noqa: E402
from bench.data.views import Augmentation, View  # noqa: E402
from bench.run.step import TrainStep, network_inputs, sgd  # noqa: E402
from resnet.nets import build_model  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workers", type=int, default=None, help="default: 8 on a GPU, 1 on the CPU")
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    # Width 16 on the CPU: at 8, torch's channels-last backward of the 1x1 stride-2 shortcut at 56x56 crashed
    # (docs/benchmarks.md, "Streaming an image folder").
    batch, width, precision = (128, 64, "bf16") if gpu else (16, 16, "fp32")
    workers = args.workers if args.workers is not None else (8 if gpu else 1)
    root = Path(tempfile.mkdtemp(prefix="stream-step-"))
    try:
        write_folder(root, batch * (args.steps + 1), [(500, 375), (375, 500), (500, 333)])
        listing = list_folder(root)
        mean = pixel_mean(listing.train, 224, sample=256, workers=workers).to(device)
        loader = StreamLoader(listing.train, View(224, Augmentation.scale), batch_size=batch, seed=0, shuffle=True,
                              drop_last=True, workers=workers, pin_memory=gpu)
        model = build_model(18, "residual", width=width, num_classes=len(listing.classes)).to(device)
        model = model.to(memory_format=torch.channels_last)
        step = TrainStep(model, sgd(model, lr=0.1 * batch / 256), precision)
        losses, started, images = [], None, 0
        for index, streamed in enumerate(loader.batches(0)):
            if index == 1:  # from the second step on: the first pays for the workers' start and cuDNN's autotuner
                if gpu:
                    torch.cuda.synchronize()
                started = time.perf_counter()
            x = network_inputs(streamed.images.to(device, non_blocking=True), mean, channels_last=True)
            loss, _ = step(x, streamed.labels.to(device, non_blocking=True))
            losses.append(loss.item())
            images += len(x) if index >= 1 else 0
            if index == args.steps:
                break
        seconds = time.perf_counter() - started
    finally:
        shutil.rmtree(root)
    print(f"ResNet-18 width {width}, {precision}, batch {batch}, {workers} workers on {device}: "
          f"{images / seconds:.0f} images/s over {len(losses) - 1} streamed 224 steps; losses "
          + ", ".join(f"{loss:.3f}" for loss in losses))
    return 0 if all(math.isfinite(loss) for loss in losses) else 1


if __name__ == "__main__":
    sys.exit(main())
