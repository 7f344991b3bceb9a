"""bench.run.state: what a run's checkpoint holds beside the weights; here, the RNGs' states."""

import random

import numpy as np
import torch

from bench.run.state import rng_state, set_rng_state
from tests.conftest import CPU


def test_rng_states_round_trip_exactly():
    generator = torch.Generator().manual_seed(3)
    state = rng_state(generator, CPU)
    assert state["cuda"] is None
    first = (random.random(), np.random.rand(), torch.rand(2), torch.rand(2, generator=generator))
    set_rng_state(state, generator, CPU)
    second = (random.random(), np.random.rand(), torch.rand(2), torch.rand(2, generator=generator))
    assert first[:2] == second[:2]
    assert torch.equal(first[2], second[2]) and torch.equal(first[3], second[3])


def test_the_cuda_rng_state_is_the_run_devices(monkeypatch):
    # It was once saved and restored on the current device. torch.cuda's RNG calls are stood
    # in for (no GPU here): what matters is which device they are asked about.
    asked = []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: asked.append(("get", device)) or torch.zeros(8))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: asked.append(("set", device)))
    generator, gpu = torch.Generator().manual_seed(3), torch.device("cuda", 1)
    set_rng_state(rng_state(generator, gpu), generator, gpu)
    assert asked == [("get", gpu), ("set", gpu)]
