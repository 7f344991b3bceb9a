"""The numbers of a short run, pinned from a run of the code before the training step was factored out
(issue #11, commit f8a1b15): a refactor of the step, the loop or the data path must not move them.

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

from bench import store
from bench.config import RunConfig
from bench.train import train_run

PINNED = Path(__file__).parent / "fixtures" / "pinned-numbers.json"
# Both archs, so the shortcut path is pinned as well as the plain one; 3 epochs cross an lr decay (at 50%).
CONFIGS = [RunConfig(arch=arch, depth=8, width=4, preset="test", dataset="synthetic", iterations=None, epochs=3,
                     batch_size=64, lr=0.05) for arch in ("plain", "residual")]
NUMBERS = ["epoch", "iteration", "lr", "train_loss", "train_error", "test_loss", "test_error"]


def run_numbers(data, folder: Path) -> dict[str, list[dict]]:
    """Per-epoch numbers and the mean per-layer response std of every config, trained on one CPU thread."""
    torch.set_num_threads(1)
    out = {}
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
    return out


def test_a_short_run_gives_the_pinned_numbers(tmp_path, tiny_data):
    pinned = json.loads(PINNED.read_text())
    now = run_numbers(tiny_data, tmp_path)
    assert list(now) == list(pinned["runs"])  # the run_ids too
    for run_id, rows in pinned["runs"].items():
        for got, want in zip(now[run_id], rows, strict=True):
            assert got["epoch"] == want["epoch"] and got["iteration"] == want["iteration"]
            # Same machine, same thread count: bit for bit. Another CPU's kernels may round differently in
            # the last places, which the tolerance admits; a changed step moves these by far more.
            for name in ("lr", "train_loss", "test_loss", "mean_response_std", "mean_grad_norm"):
                assert got[name] == pytest.approx(want[name], rel=1e-5, abs=1e-7), (run_id, name)
            for name in ("train_error", "test_error"):
                assert got[name] == pytest.approx(want[name], abs=1.5 / 128), (run_id, name)  # one image


if __name__ == "__main__":
    from bench.data import load_dataset, take_subset

    with tempfile.TemporaryDirectory() as tmp:
        # The tiny_data fixture of tests/conftest.py.
        data = take_subset(load_dataset("synthetic", Path(tmp), synthetic_train=1024, synthetic_test=256,
                                        progress=False), 512, 128)
        from bench.provenance import git_commit
        runs = run_numbers(data, Path(tmp))
    PINNED.write_text(json.dumps({"commit": git_commit(), "torch": torch.__version__, "runs": runs}, indent=1) + "\n")
    print(f"wrote {PINNED}")
