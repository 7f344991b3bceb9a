import json
import time

import pandas as pd
import pytest

from bench.core.errors import BenchError
from bench.core.provenance import cpu_id, git_commit
from bench.results import chunks, store
from bench.run.train import train_run
from tests.conftest import CPU, TINY_RUN


@pytest.mark.slow
def test_each_start_of_a_run_records_where_it_trained_from_which_epoch(tmp_path, tiny_data):
    assert train_run(TINY_RUN, tiny_data, tmp_path, CPU, deadline=time.monotonic()) == store.INTERRUPTED
    assert train_run(TINY_RUN, tiny_data, tmp_path, CPU) == store.FINISHED
    first, second = chunks.read_chunks(tmp_path, epochs_done=len(pd.read_parquet(tmp_path / store.EPOCHS)))
    assert (first.first_epoch, first.first_iteration) == (0, 0)
    assert (second.first_epoch, second.first_iteration) == (1, 8)  # 512 images // 64 a batch
    assert second.cpu_id == cpu_id() and second.git_commit == git_commit() and second.threads == 1
    assert not first.from_config and first.started_at < second.started_at
    train_run(TINY_RUN, tiny_data, tmp_path, CPU)  # finished: nothing trains, nothing is recorded
    assert len(chunks.read_chunks(tmp_path)) == 2


@pytest.mark.slow
def test_a_run_begun_before_chunks_were_recorded_starts_its_record_with_config_json(tmp_path, tiny_data):
    train_run(TINY_RUN, tiny_data, tmp_path, CPU, deadline=time.monotonic())
    (tmp_path / chunks.CHUNKS).unlink()
    train_run(TINY_RUN, tiny_data, tmp_path, CPU)
    first, second = chunks.read_chunks(tmp_path)
    meta = store.read_json(tmp_path / store.CONFIG)
    assert first.from_config and first.started_at == meta["started_at"]
    assert first.cpu_id == meta["environment"]["cpu_id"] and second.first_epoch == 1 and not second.from_config


@pytest.mark.parametrize("entries, says", [
    ([{"first_epoch": 2}], "not a chunk"),
    ([{"first_epoch": "0", "first_iteration": 0, "started_at": None, "git_commit": None, "device_name": None,
       "cpu_id": None, "threads": 1}], "not a int"),
    ([{"first_epoch": 1, "first_iteration": 8, "started_at": None, "git_commit": None, "device_name": None,
       "cpu_id": None, "threads": True}], "not a int"),
    ([{"first_epoch": e, "first_iteration": 8 * e, "started_at": None, "git_commit": None, "device_name": None,
       "cpu_id": None, "threads": 1} for e in (2, 1)], "out of order"),
    ([{"first_epoch": 9, "first_iteration": 72, "started_at": None, "git_commit": None, "device_name": None,
       "cpu_id": None, "threads": 1}], "after epoch 9"),
])
def test_a_damaged_chunks_json_is_refused_naming_the_fix(tmp_path, entries, says):
    (tmp_path / chunks.CHUNKS).write_text(json.dumps({"chunks": entries}))
    with pytest.raises(BenchError, match=says) as error:
        chunks.read_chunks(tmp_path, epochs_done=3)
    assert f"delete {tmp_path / chunks.CHUNKS}" not in str(error.value) and "delete chunks.json" in str(error.value)


def test_a_link_in_place_of_chunks_json_is_not_read(tmp_path):
    (tmp_path / "elsewhere.json").write_text(json.dumps({"chunks": []}))
    (tmp_path / chunks.CHUNKS).symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(BenchError, match="link"):
        chunks.read_chunks(tmp_path)
