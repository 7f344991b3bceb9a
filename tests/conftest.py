from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny nets gain nothing from a second thread, and OpenMP threads that spin on a busy 2-core machine
    # make them 30x slower. One fixed thread count also keeps CPU numerics reproducible.
    torch.set_num_threads(1)


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
