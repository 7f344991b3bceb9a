"""scripts/gpu_throughput.py: the on-device augmentation is right, and the script runs end to end on a CPU."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_throughput.py"
spec = importlib.util.spec_from_file_location("gpu_throughput", SCRIPT)
gpu_throughput = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_throughput)

# Small enough for a few seconds on a busy 2-core CPU; one thread, so a neighbour's load cannot stall it.
QUICK = ["--iters", "3", "--depths", "20", "--batch-size", "8", "--repeats", "2", "--warmup", "1",
         "--dataset-size", "64", "--threads", "1"]


def test_crop_flip_is_a_crop_then_a_mirror() -> None:
    generator = torch.Generator().manual_seed(0)
    padded = torch.randint(256, (6, 3, 40, 40), generator=generator, dtype=torch.uint8)
    top, left = torch.randint(9, (2, 6), generator=generator)
    flip = torch.tensor([True, False, True, False, True, False])
    out = gpu_throughput.crop_flip(padded, top, left, flip)
    for i in range(6):
        crop = padded[i, :, top[i]:top[i] + 32, left[i]:left[i] + 32]
        assert torch.equal(out[i], crop.flip(-1) if flip[i] else crop)


def test_augment_pads_with_zeros_and_normalises() -> None:
    batch = torch.full((64, 3, 32, 32), 255, dtype=torch.uint8)
    mean = torch.tensor(gpu_throughput.CIFAR_MEAN)[:, None, None]
    std = torch.tensor(gpu_throughput.CIFAR_STD)[:, None, None]
    out = gpu_throughput.augment(batch, mean, std)
    assert out.shape == (64, 3, 32, 32) and out.dtype == torch.float32
    white, black = (1 - mean) / std, (0 - mean) / std
    # Every pixel is either the image (white) or the zero padding (black), and some crops reach the padding.
    is_white = torch.isclose(out, white.expand_as(out))
    assert (is_white | torch.isclose(out, black.expand_as(out))).all()
    assert not is_white.all()


def test_runs_on_cpu_and_writes_table_csv_json(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert gpu_throughput.main(["--device", "cpu", "--out", str(tmp_path), *QUICK]) == 0
    printed = capsys.readouterr().out
    assert "| model | eager-fp32 | graph-fp32 | graph-bf16-cl |" in printed
    assert "| plain-20 |" in printed and "| residual-20 |" in printed

    with open(tmp_path / "throughput.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["model"], r["mode"]) for r in rows] == [
        (m, mode) for m in ("plain-20", "residual-20") for mode in gpu_throughput.MODES]
    for row in rows:
        if row["mode"] == "eager-fp32":
            assert row["status"] == "ok" and float(row["images_per_second"]) > 0
            assert float(row["images_per_second"]) == pytest.approx(8e3 / float(row["median_ms"]))
        else:
            assert row["status"] == "n/a on CPU" and row["images_per_second"] == ""
    saved = json.loads((tmp_path / "throughput.json").read_text())
    assert saved["environment"]["device"] == "cpu" and len(saved["rows"]) == 6


@pytest.mark.parametrize("argv", [["--depths", "18"], ["--batch-size", "0"], ["--device", "tpu"]])
def test_bad_input_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture, argv: list[str]) -> None:
    assert gpu_throughput.main(["--device", "cpu", "--out", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert not (tmp_path / "throughput.csv").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_all_three_modes_run_on_a_gpu(tmp_path: Path) -> None:
    assert gpu_throughput.main(["--device", "cuda", "--out", str(tmp_path), "--depths", "20", "--iters", "5",
                                "--repeats", "2", "--warmup", "2", "--dataset-size", "1024"]) == 0
    rows = json.loads((tmp_path / "throughput.json").read_text())["rows"]
    assert len(rows) == 6 and all(r["status"] == "ok" and r["images_per_second"] > 0 for r in rows)
