"""The numbers of a short run, pinned: a refactor of the step, the loop or the data path must not move them.

Pinned in float64 on data made of integers, so they hold on any x86-64 CPU. The first version pinned a float32
run (commit f8a1b15) at a relative 1e-5 and failed on an AMD EPYC by 1.2e-5: another CPU's kernels
round the last float32 digit differently and 24 SGD steps carry that forward. Measured on one AMD EPYC with
its kernels switched to the SSE4.1/SSE4.2 and AVX2 ones (ISA_SWITCHES, then the same with "avx2"/"AVX2"): the
pinned numbers moved by up to 8.6e-3 (relative) in float32 and by at most 4.4e-16 in float64, while a changed
computation (drawing the flips before the crop offsets in bench.data.loader.augment) moves them by up to 0.11.
So the tolerance below, 1e-9, is six orders above what another CPU moves and eight below a real change.

Nothing here is float32-specific: the run is `train_run` itself, with the default dtype set to float64 so that
the net is built in it and the data's float64 mean makes the inputs float64 (bench.data.loader.normalize). The data
are integer operations on an integer RNG stream (exact everywhere); the synthetic set would not do, since its
shapes are drawn with sin and cos, whose last bit differs between vectorised kernels.

Regenerate only on purpose, when a change is meant to change the numbers, and say so in the commit:
    python -m tests.test_pinned_numbers
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pandas as pd
import pytest
import torch

from bench.core.config import RunConfig
from bench.data.data import DataInfo, ImageData
from bench.results import store
from bench.run.train import train_run

PINNED = Path(__file__).parent / "fixtures" / "pinned-numbers.json"
# Both archs, so the shortcut path is pinned as well as the plain one; 3 epochs cross an lr decay (at 50%).
CONFIGS = [RunConfig(arch=arch, depth=8, width=4, preset="test", dataset="integer", iterations=None, epochs=3,
                     batch_size=64, lr=0.05) for arch in ("plain", "residual")]
NUMBERS = ["epoch", "iteration", "lr", "train_loss", "train_error", "test_loss", "test_error"]
# Environment settings that make this CPU run other kernels, as another CPU would: how the tolerance was chosen.
ISA_SWITCHES = {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}


def integer_data(train: int = 512, test: int = 128, classes: int = 10, size: int = 32) -> ImageData:
    """A learnable set from integers alone: each class a random uint8 image, each sample it plus integer noise."""
    g = torch.Generator().manual_seed(0)
    base = torch.randint(0, 256, (classes, 3, size, size), generator=g)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(0, classes, (n,), generator=g)
        noise = torch.randint(-64, 65, (n, 3, size, size), generator=g)
        return (base[labels] + noise).clamp(0, 255).to(torch.uint8), labels

    (train_images, train_labels), (test_images, test_labels) = split(train), split(test)
    mean = train_images.double().sum(0) / (255.0 * train)  # integer sums: exact in float64, in any order
    info = DataInfo(name="integer", source="tests/test_pinned_numbers.py", num_classes=classes, image_size=size,
                    train_size=train, test_size=test, note="")
    return ImageData(info, train_images, train_labels, test_images, test_labels, mean)


def run_numbers(folder: Path) -> dict[str, list[dict]]:
    """Per-epoch numbers and the mean per-layer diagnostics of every config, trained in float64 on one thread."""
    torch.set_num_threads(1)
    data = integer_data()
    out = {}
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        for config in CONFIGS:
            directory = folder / config.run_id()
            assert train_run(config, data, directory, torch.device("cpu"), notify=lambda _: None) == store.FINISHED
            epochs = pd.read_parquet(directory / store.EPOCHS)[NUMBERS]
            layers = pd.read_parquet(directory / store.LAYERS)
            # Diagnostics are pinned too: the mean response std after each epoch, the mean gradient norm of each
            # epoch's last step (iteration 1's belong to epoch 0).
            mean = layers.groupby(["kind", "epoch"])["value"].mean()
            rows = epochs.to_dict("records")
            for row in rows:
                row["mean_response_std"] = float(mean["response_std", row["epoch"]])
                row["mean_grad_norm"] = float(mean["grad_norm", row["epoch"] - 1])
            out[config.run_id()] = rows
    finally:
        torch.set_default_dtype(default)
    return out


def test_the_pinned_data_are_integers_only():
    data = integer_data()
    assert data.train_images.dtype == torch.uint8 and data.mean.dtype == torch.float64
    # The classes are learnable: the test images are nearer their own class's training mean than any other.
    centres = torch.stack([data.train_images[data.train_labels == c].double().mean(0) for c in range(10)])
    nearest = torch.cdist(data.test_images.double().flatten(1), centres.flatten(1)).argmin(1)
    assert (nearest == data.test_labels).float().mean() > 0.9


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_a_short_run_gives_the_pinned_numbers(tmp_path):
    pinned = json.loads(PINNED.read_text())
    now = run_numbers(tmp_path)
    assert list(now) == list(pinned["runs"])  # the run_ids too
    for run_id, rows in pinned["runs"].items():
        for got, want in zip(now[run_id], rows, strict=True):
            assert got["epoch"] == want["epoch"] and got["iteration"] == want["iteration"]
            # float64: other kernels move these by <1e-15 (ISA_SWITCHES); a changed step by ~1e-1.
            for name in ("lr", "train_loss", "test_loss", "mean_response_std", "mean_grad_norm"):
                assert got[name] == pytest.approx(want[name], rel=1e-9, abs=1e-12), (run_id, name)
            for name in ("train_error", "test_error"):
                assert got[name] == pytest.approx(want[name], abs=1.5 / 128), (run_id, name)  # one image


if __name__ == "__main__":
    from bench.core.provenance import git_commit

    with tempfile.TemporaryDirectory() as tmp:
        runs = run_numbers(Path(tmp))
    PINNED.write_text(json.dumps({"commit": git_commit(), "torch": torch.__version__, "dtype": "float64",
                                  "runs": runs}, indent=1) + "\n")
    print(f"wrote {PINNED}")
