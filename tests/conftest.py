from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny nets gain nothing from a second thread, and OpenMP threads that spin on a busy 2-core machine
    # make them 30x slower. One fixed thread count also keeps CPU numerics reproducible.
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _cpu_unless_marked_gpu(request, monkeypatch):
    # A test not marked gpu that leaves --device auto would train on the GPU where there is one, and fail
    # there: bitwise resumes are not promised on GPUs, messages say "on cuda", gloo becomes NCCL (issue 22).
    # Here it fails on every machine, naming the fix. Tests that start `bench` as a process pass --device cpu.
    if request.node.get_closest_marker("gpu"):
        return
    import bench.analyze
    import bench.grid
    from bench.config import resolve_device

    def cpu_unless_told(name: str) -> torch.device:
        if name == "auto":
            raise AssertionError("this test leaves --device auto, which is the GPU where there is one: pass "
                                 "--device cpu (RunConfig(device='cpu')), or mark the test gpu")
        return resolve_device(name)

    for module in (bench.grid, bench.analyze):
        monkeypatch.setattr(module, "resolve_device", cpu_unless_told)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """A data folder shared by the tests of one session, so the offline set is generated once."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def tiny_data(data_dir):
    """A small slice of the offline set: enough for a few iterations of a narrow net."""
    from bench.data import load_dataset, take_subset

    data = load_dataset("synthetic", data_dir, synthetic_train=1024, synthetic_test=256, progress=False)
    return take_subset(data, 512, 128)
