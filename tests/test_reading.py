import pandas as pd
import pytest

from bench.core.config import RunConfig
from bench.results import checkpoints, parquet, reading, store
from tests.conftest import epoch_row, grid_folder


def test_read_results_merges_folders_and_keeps_a_copied_run_once(tmp_path):
    config = RunConfig(arch="plain")
    run_id = config.run_id()  # a folder's config.json must give its own run_id (store.read_config)
    for root in ("a", "b"):
        directory = store.run_dir(tmp_path / root, "synthetic", run_id)
        store.write_json(directory / store.CONFIG, {"run_id": run_id, "config": config.to_dict(),
                                                    "dataset": {"name": "synthetic"}})
        rows = [epoch_row(epoch, run_id=run_id) for epoch in ((1,) if root == "a" else (1, 2))]
        parquet.write_epochs(directory / store.EPOCHS, rows)
        store.write_status(directory, store.FINISHED)
    epochs, runs = reading.read_results([tmp_path / "a", tmp_path / "b"])
    assert len(runs) == 1 and runs.loc[0, "epochs_done"] == 2
    assert epochs["epoch"].tolist() == [1, 2]


def test_an_epochs_file_from_before_the_top5_column_reads_with_it_null(tmp_path):
    config = RunConfig(arch="plain")
    directory = store.run_dir(tmp_path, "synthetic", config.run_id())
    store.write_json(directory / store.CONFIG, {"run_id": config.run_id(), "config": config.to_dict(),
                                                "dataset": {"name": "synthetic"}})
    parquet.write_epochs(directory / store.EPOCHS, [epoch_row(1, run_id=config.run_id(), test_top5_error=0.2)])
    store.write_status(directory, store.FINISHED, epoch=1)
    assert pd.read_parquet(directory / store.EPOCHS)["test_top5_error"].tolist() == [0.2]
    pd.read_parquet(directory / store.EPOCHS).drop(columns="test_top5_error").to_parquet(directory / store.EPOCHS)
    notes: list[str] = []
    epochs, _ = reading.read_results([tmp_path], notify=notes.append)
    assert not notes and tuple(epochs.columns) == parquet.EPOCH_COLUMNS  # read as it is, the column in its place
    assert epochs["test_top5_error"].isna().all() and epochs["test_error"].tolist() == [0.55]


def test_a_config_from_before_a_field_existed_reads_as_that_fields_default(tmp_path):
    # Runs committed before `augment` existed augmented; they must land in one experiment with newer runs.
    for config in ({k: v for k, v in RunConfig(seed=0).to_dict().items() if k != "augment"},
                   RunConfig(seed=1).to_dict()):
        run_id = RunConfig.from_dict(config).run_id()  # the field left out is at its default: the same run_id
        directory = store.run_dir(tmp_path, "synthetic", run_id)
        store.write_json(directory / store.CONFIG, {"run_id": run_id, "config": config, "dataset": {"name": "synthetic"}})
        parquet.write_epochs(directory / store.EPOCHS, [epoch_row(1, run_id=run_id, arch="residual")])  # the run's own
        store.write_status(directory, store.FINISHED)
    _, runs = reading.read_results([tmp_path])
    assert runs["augment"].tolist() == [True, True]


# --- epochs.parquet checked against its run folder when read ------------------------------------------------


EPOCH_LIES = {
    "an epoch twice, the second at 0%": lambda rows: pd.concat(
        [rows, rows.tail(1).assign(train_error=0.0, test_error=0.0)], ignore_index=True),
    "200,000 rows for two epochs": lambda rows: pd.concat([rows] * 100_000, ignore_index=True),
    "epochs out of order": lambda rows: rows.iloc[::-1].reset_index(drop=True),
    "a depth the run_id does not name": lambda rows: rows.assign(depth=9),
    "an arch the run_id does not name": lambda rows: rows.assign(arch="residual"),
    "a top-5 error of 150%": lambda rows: rows.assign(test_top5_error=1.5),
}


@pytest.mark.slow
@pytest.mark.timeout(200)
@pytest.mark.parametrize("lie", list(EPOCH_LIES))
def test_an_epochs_file_that_is_not_one_row_per_epoch_of_its_run_is_replaced_by_the_checkpoints_rows(
        finished_grid, tmp_path, lie):
    from tests.conftest import bench

    folder = grid_folder(finished_grid, "plain")
    truth = checkpoints.load_checkpoint(folder)["rows"]
    EPOCH_LIES[lie](pd.read_parquet(folder / store.EPOCHS)).to_parquet(folder / store.EPOCHS)
    notes: list[str] = []
    epochs, runs = reading.read_results([finished_grid], notify=notes.append)
    plain = epochs[epochs["run_id"] == folder.name]
    assert plain["train_error"].tolist() == [row["train_error"] for row in truth]  # the right final error
    assert any(str(folder / store.EPOCHS) in note for note in notes), notes
    drawn = bench("report", "--results", str(finished_grid), "--out", str(tmp_path / "reports"))
    assert drawn.exit_code == 0 and "Traceback" not in drawn.output, drawn.output
