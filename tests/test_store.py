import datetime as dt
import os

import pandas as pd
import pytest
import torch

from bench import files, store
from bench.config import RunConfig
from bench.errors import BenchError


def _row(epoch: int, **over) -> dict:
    row = {"run_id": "plain-20-s0-x", "dataset": "synthetic", "arch": "plain", "depth": 20, "width": 16,
           "shortcut": "A", "seed": 0, "preset": "quick", "epoch": epoch, "iteration": 10 * epoch, "lr": 0.1,
           "train_loss": 1.0, "train_error": 0.5, "test_loss": 1.1, "test_error": 0.55, "epoch_seconds": 1.0,
           "images_per_second": 100.0, "device": "cpu", "precision": "fp32",
           "timestamp": dt.datetime.now(dt.timezone.utc)}
    return {**row, **over}


def test_epochs_parquet_has_exactly_the_contract_schema(tmp_path):
    store.write_epochs(tmp_path / "e.parquet", [_row(1), _row(2)])
    frame = pd.read_parquet(tmp_path / "e.parquet")
    assert tuple(frame.columns) == store.EPOCH_COLUMNS
    assert frame["epoch"].tolist() == [1, 2]
    assert str(frame["timestamp"].dt.tz) == "UTC"
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind


def test_a_failed_write_leaves_the_old_file_whole(tmp_path):
    path = tmp_path / "e.parquet"
    store.write_epochs(path, [_row(1)])
    with pytest.raises(KeyError):
        store.write_epochs(path, [{"epoch": 2}])  # a row missing columns fails before anything is replaced
    assert len(pd.read_parquet(path)) == 1


def test_checkpoint_falls_back_to_the_previous_one_when_torn(tmp_path):
    store.save_checkpoint(tmp_path, {"epoch": 1, "iteration": 4, "model": {"w": torch.ones(2)}})
    store.save_checkpoint(tmp_path, {"epoch": 2, "iteration": 8, "model": {"w": torch.ones(2)}})
    assert store.load_checkpoint(tmp_path)["epoch"] == 2
    latest = tmp_path / store.CHECKPOINT
    latest.write_bytes(latest.read_bytes()[:100])  # torn, as by a crash mid-write on a filesystem without rename
    messages = []
    assert store.load_checkpoint(tmp_path, messages.append)["epoch"] == 1
    assert "unreadable" in messages[0]


def test_an_unreadable_checkpoint_is_one_clear_error(tmp_path):
    (tmp_path / store.CHECKPOINT).write_bytes(b"not a checkpoint")
    with pytest.raises(BenchError, match="corrupt checkpoint .* delete"):
        store.load_checkpoint(tmp_path, lambda m: None)
    assert store.load_checkpoint(tmp_path / "none") is None


def test_run_lock_is_exclusive_between_processes(tmp_path):
    with store.run_lock(tmp_path) as mine:
        assert mine
        pid = os.fork()
        if pid == 0:  # the child must not get the lock the parent holds
            with store.run_lock(tmp_path) as theirs:
                os._exit(0 if not theirs else 1)
        _, status = os.waitpid(pid, 0)
        assert os.WEXITSTATUS(status) == 0
    with store.run_lock(tmp_path) as again:
        assert again


def test_unwritable_results_folder_is_one_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(BenchError, match="--results"):
        files.check_writable(blocker / "results")


def test_read_results_merges_folders_and_keeps_a_copied_run_once(tmp_path):
    config = RunConfig(arch="plain")
    run_id = config.run_id()  # a folder's config.json must give its own run_id (store.read_config)
    for root in ("a", "b"):
        directory = store.run_dir(tmp_path / root, "synthetic", run_id)
        store.write_json(directory / store.CONFIG, {"run_id": run_id, "config": config.to_dict(),
                                                    "dataset": {"name": "synthetic"}})
        rows = [_row(epoch, run_id=run_id) for epoch in ((1,) if root == "a" else (1, 2))]
        store.write_epochs(directory / store.EPOCHS, rows)
        store.write_status(directory, store.FINISHED)
    epochs, runs = store.read_results([tmp_path / "a", tmp_path / "b"])
    assert len(runs) == 1 and runs.loc[0, "epochs_done"] == 2
    assert epochs["epoch"].tolist() == [1, 2]


def test_a_config_from_before_a_field_existed_reads_as_that_fields_default(tmp_path):
    # Runs committed before `augment` existed augmented; they must land in one experiment with newer runs.
    for config in ({k: v for k, v in RunConfig(seed=0).to_dict().items() if k != "augment"},
                   RunConfig(seed=1).to_dict()):
        run_id = RunConfig.from_dict(config).run_id()  # the field left out is at its default: the same run_id
        directory = store.run_dir(tmp_path, "synthetic", run_id)
        store.write_json(directory / store.CONFIG, {"run_id": run_id, "config": config, "dataset": {"name": "synthetic"}})
        store.write_epochs(directory / store.EPOCHS, [_row(1, run_id=run_id)])
        store.write_status(directory, store.FINISHED)
    _, runs = store.read_results([tmp_path])
    assert runs["augment"].tolist() == [True, True]
