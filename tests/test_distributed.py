import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from bench.run import distributed

from bench.core.config import GridConfig, RunConfig
from bench.core.errors import BenchError
from bench.results import reading, store
from bench.run.grid import run_grid
from resnet import build_model

TINY = ["--depths", "8", "--arch", "residual", "--epochs", "1", "--dataset", "synthetic", "--width", "4",
        "--batch-size", "32", "--train-subset", "256", "--test-subset", "64", "--no-progress", "--sync-bn",
        "--device", "cpu"]


def _bench(results, data_dir, nproc: int, args: list[str] = TINY) -> subprocess.CompletedProcess:
    """`bench run` with `args` in one process, or in `nproc` gloo ranks under torchrun."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    command = (launcher if nproc > 1 else [sys.executable]) + [
        "-m", "bench", "run", *args, "--data-dir", str(data_dir), "--results", str(results)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.timeout(600)
@pytest.mark.slow
def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path, data_dir):
    one = _bench(tmp_path / "one", data_dir, 1)
    assert one.returncode == 0, one.stderr
    two = _bench(tmp_path / "two", data_dir, 2)
    assert two.returncode == 0, two.stderr[-3000:]
    a, runs_a = reading.read_results([tmp_path / "one"])
    b, runs_b = reading.read_results([tmp_path / "two"])
    assert list(a.columns) == list(b.columns) and len(b) == 1  # rank 0 alone wrote, in the same schema
    assert runs_a["run_id"].tolist() == runs_b["run_id"].tolist()
    for column in ("train_loss", "test_loss"):
        assert b[column].iloc[0] == pytest.approx(a[column].iloc[0], rel=1e-3, abs=1e-3), column
    # Two ranks sum in another order, and one image whose two top logits nearly tie may flip: one image, no more.
    for column, images in (("train_error", 256), ("test_error", 64)):
        assert abs(b[column].iloc[0] - a[column].iloc[0]) <= 1 / images + 1e-9, column
    config = store.read_json(next((tmp_path / "two").glob(f"*/*/{store.CONFIG}")))
    assert config["distributed"] == {"world_size": 2, "batch_per_rank": 16}


@pytest.mark.slow
def test_shards_run_disjoint_slices_that_cover_the_grid(tmp_path, data_dir):
    base = RunConfig(preset="test", dataset="synthetic", width=4, epochs=1, iterations=None, batch_size=32,
                     train_subset=64, test_subset=32, device="cpu")
    seen = []
    for index in (1, 2, 3):
        grid = GridConfig(base=base, depths=(8, 14), seeds=(0,), data_dir=str(data_dir),
                          results=str(tmp_path), shard=(index, 3))
        seen += [item.run_id for item in run_grid(grid, progress=False)]
    _, runs = reading.read_results([tmp_path])
    assert sorted(seen) == sorted(runs["run_id"]) and len(seen) == 4 == len(set(seen))


@pytest.mark.timeout(600)
@pytest.mark.slow
def test_workers_on_several_devices_take_each_run_once(tmp_path, data_dir):
    # Two CPU "devices" stand in for two GPUs: the run locks are what keeps the workers apart.
    base = RunConfig(preset="test", dataset="synthetic", width=4, epochs=1, iterations=None, batch_size=32,
                     train_subset=64, test_subset=32, device="cpu")
    grid = GridConfig(base=base, depths=(8, 14), seeds=(0, 1), data_dir=str(data_dir), results=str(tmp_path),
                      devices=("cpu", "cpu"))
    summary = run_grid(grid, progress=False)
    assert [item.state for item in summary] == ["finished"] * 8
    epochs, runs = reading.read_results([tmp_path])
    assert len(runs) == 8 and len(epochs) == 8  # one epoch each: no run trained twice


def _batchnorm_names(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]


def test_convert_sync_batchnorm_on_cpu_uses_our_own_and_keeps_the_state():
    torch.manual_seed(0)
    model = build_model(8, shortcut="B", width=4)
    names, state = _batchnorm_names(model), {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model.eval()(x)
    converted = distributed.convert_sync_batchnorm(model, torch.device("cpu"))
    assert converted is model
    assert [n for n, m in converted.named_modules() if type(m) is distributed.SyncBatchNorm] == names
    assert not any(type(m) is nn.BatchNorm2d for m in converted.modules())
    assert converted.state_dict().keys() == state.keys()
    for key, value in converted.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)
    with torch.no_grad():  # no process group: it normalises like the BatchNorm it replaced
        torch.testing.assert_close(converted(x), expected)


def test_more_ranks_than_gpus_is_one_line_naming_the_fix(monkeypatch):
    # Under torchrun --nproc-per-node 2 on a one-GPU machine; rank 1 would get a raw
    # "invalid device ordinal" from set_device. The GPU count is stood in for: there is no GPU here.
    calls = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", calls.append)
    with pytest.raises(BenchError, match=r"this machine has 1 GPU\(s\): start at most 1 processes per node"):
        distributed.setup(distributed.Dist(rank=1, world_size=2, local_rank=1), torch.device("cuda"))
    assert not calls and not torch.distributed.is_initialized()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_convert_sync_batchnorm_on_cuda_uses_torchs_own():
    model = build_model(8, shortcut="B", width=4).cuda()
    names, keys = _batchnorm_names(model), model.state_dict().keys()
    converted = distributed.convert_sync_batchnorm(model, torch.device("cuda"))
    assert [n for n, m in converted.named_modules() if type(m) is nn.SyncBatchNorm] == names
    assert not _batchnorm_names(converted)
    assert converted.state_dict().keys() == keys
    with torch.no_grad():
        assert converted.eval()(torch.randn(2, 3, 32, 32, device="cuda")).shape == (2, 10)
