import pandas as pd
import pytest

from bench.results import parquet
from tests.conftest import epoch_row


def test_epochs_parquet_has_exactly_the_contract_schema(tmp_path):
    parquet.write_epochs(tmp_path / "e.parquet", [epoch_row(1), epoch_row(2)])
    frame = pd.read_parquet(tmp_path / "e.parquet")
    assert tuple(frame.columns) == parquet.EPOCH_COLUMNS
    assert frame["epoch"].tolist() == [1, 2]
    assert str(frame["timestamp"].dt.tz) == "UTC"
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind


def test_a_failed_write_leaves_the_old_file_whole(tmp_path):
    path = tmp_path / "e.parquet"
    parquet.write_epochs(path, [epoch_row(1)])
    with pytest.raises(KeyError):
        parquet.write_epochs(path, [{"epoch": 2}])  # a row missing columns fails before anything is replaced
    assert len(pd.read_parquet(path)) == 1
