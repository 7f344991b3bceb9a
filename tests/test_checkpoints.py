import pytest
import torch

from bench.core.errors import BenchError
from bench.results import checkpoints, store


def test_checkpoint_falls_back_to_the_previous_one_when_torn(tmp_path):
    checkpoints.save_checkpoint(tmp_path, {"epoch": 1, "iteration": 4, "model": {"w": torch.ones(2)}})
    checkpoints.save_checkpoint(tmp_path, {"epoch": 2, "iteration": 8, "model": {"w": torch.ones(2)}})
    assert checkpoints.load_checkpoint(tmp_path)["epoch"] == 2
    latest = tmp_path / store.CHECKPOINT
    latest.write_bytes(latest.read_bytes()[:100])  # torn, as by a crash mid-write on a filesystem without rename
    messages = []
    assert checkpoints.load_checkpoint(tmp_path, messages.append)["epoch"] == 1
    assert "unreadable" in messages[0]


def test_an_unreadable_checkpoint_is_one_clear_error(tmp_path):
    (tmp_path / store.CHECKPOINT).write_bytes(b"not a checkpoint")
    with pytest.raises(BenchError, match="corrupt checkpoint .* delete"):
        checkpoints.load_checkpoint(tmp_path, lambda m: None)
    assert checkpoints.load_checkpoint(tmp_path / "none") is None
