import datetime as dt
import json
import os

import pandas as pd
import pytest
import torch

from bench.core import files

from bench.core.config import RunConfig
from bench.core.errors import BenchError
from bench.core.records import RunStatus
from bench.results import store


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


def test_an_epochs_file_from_before_the_top5_column_reads_with_it_null(tmp_path):
    config = RunConfig(arch="plain")
    directory = store.run_dir(tmp_path, "synthetic", config.run_id())
    store.write_json(directory / store.CONFIG, {"run_id": config.run_id(), "config": config.to_dict(),
                                                "dataset": {"name": "synthetic"}})
    store.write_epochs(directory / store.EPOCHS, [_row(1, run_id=config.run_id(), test_top5_error=0.2)])
    store.write_status(directory, store.FINISHED, epoch=1)
    assert pd.read_parquet(directory / store.EPOCHS)["test_top5_error"].tolist() == [0.2]
    pd.read_parquet(directory / store.EPOCHS).drop(columns="test_top5_error").to_parquet(directory / store.EPOCHS)
    notes: list[str] = []
    epochs, _ = store.read_results([tmp_path], notify=notes.append)
    assert not notes and tuple(epochs.columns) == store.EPOCH_COLUMNS  # read as it is, the column in its place
    assert epochs["test_top5_error"].isna().all() and epochs["test_error"].tolist() == [0.55]


def test_a_config_from_before_a_field_existed_reads_as_that_fields_default(tmp_path):
    # Runs committed before `augment` existed augmented; they must land in one experiment with newer runs.
    for config in ({k: v for k, v in RunConfig(seed=0).to_dict().items() if k != "augment"},
                   RunConfig(seed=1).to_dict()):
        run_id = RunConfig.from_dict(config).run_id()  # the field left out is at its default: the same run_id
        directory = store.run_dir(tmp_path, "synthetic", run_id)
        store.write_json(directory / store.CONFIG, {"run_id": run_id, "config": config, "dataset": {"name": "synthetic"}})
        store.write_epochs(directory / store.EPOCHS, [_row(1, run_id=run_id, arch="residual")])  # the run's own
        store.write_status(directory, store.FINISHED)
    _, runs = store.read_results([tmp_path])
    assert runs["augment"].tolist() == [True, True]


# --- a run folder's files checked against each other when read ------------------------------------------------


def _plain(results):
    [folder] = results.glob("synthetic/plain-8-*")
    return folder


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

    folder = _plain(finished_grid)
    truth = store.load_checkpoint(folder)["rows"]
    EPOCH_LIES[lie](pd.read_parquet(folder / store.EPOCHS)).to_parquet(folder / store.EPOCHS)
    notes: list[str] = []
    epochs, runs = store.read_results([finished_grid], notify=notes.append)
    plain = epochs[epochs["run_id"] == folder.name]
    assert plain["train_error"].tolist() == [row["train_error"] for row in truth]  # the right final error
    assert any(str(folder / store.EPOCHS) in note for note in notes), notes
    drawn = bench("report", "--results", str(finished_grid), "--out", str(tmp_path / "reports"))
    assert drawn.exit_code == 0 and "Traceback" not in drawn.output, drawn.output


CONFIG_LIES = {
    "model.width 64 for a width-2 run": (("model", "width"), 64, "model.width 64"),
    "model.family imagenet": (("model", "family"), "imagenet", "model.family"),
    "model.params a string": (("model", "params"), "many", "params 'many'"),
    "schedule.epochs Infinity": (("schedule", "epochs"), float("inf"), "epochs inf"),
}
STATUS_LIES = {
    "epochs_total Infinity": ("epochs_total", float("inf")),
    "epochs_total a string": ("epochs_total", "six"),
    "epoch negative": ("epoch", -1),
    "diverged_epoch a float": ("diverged_epoch", 1.5),
}


@pytest.mark.slow
@pytest.mark.parametrize("lie", [*CONFIG_LIES, *STATUS_LIES])
def test_a_run_file_field_of_the_wrong_type_or_value_is_a_refused_file(finished_grid, data_dir, tmp_path, lie):
    import json

    from tests.conftest import TINY_GRID, bench, one_line_exit_2

    folder = _plain(finished_grid)
    if lie in CONFIG_LIES:
        (section, key), value, said = CONFIG_LIES[lie]
        path = folder / store.CONFIG
        meta = json.loads(path.read_text())
        meta[section][key] = value
    else:
        (key, value), said, path = STATUS_LIES[lie], f"{STATUS_LIES[lie][0]} ", folder / store.STATUS
        meta = {**json.loads(path.read_text()), key: value}
    path.write_text(json.dumps(meta))  # Infinity, as Python's json writes it
    with pytest.raises(BenchError, match="not a count|but its config builds"):
        store.read_config(folder) if lie in CONFIG_LIES else store.read_status(folder)
    drawn = bench("report", "--results", str(finished_grid), "--out", str(tmp_path / "reports"))
    assert drawn.exit_code == 0 and "Traceback" not in drawn.output, drawn.output
    text = " ".join(drawn.output.split())
    assert f"skipped {folder}" in text and said in text
    assert "width 64" not in (tmp_path / "reports" / "README.md").read_text()
    one_line_exit_2(bench("run", *TINY_GRID, "--data-dir", str(data_dir), "--results", str(finished_grid)),
                    str(path))


def test_status_json_holds_the_state_as_its_word_and_reads_back_as_the_run_status(tmp_path):
    store.write_status(tmp_path, RunStatus.FINISHED, epoch=2, epochs_total=2)
    assert json.loads((tmp_path / store.STATUS).read_text())["state"] == "finished"
    assert store.run_state(tmp_path) is RunStatus.FINISHED
    # As bench wrote it before the states were one type: the same words, read the same.
    (tmp_path / store.STATUS).write_text('{"state": "interrupted", "updated": "2025-01-01T00:00:00+00:00"}')
    assert store.run_state(tmp_path) is RunStatus.INTERRUPTED and f"{store.run_state(tmp_path)}" == "interrupted"
    with pytest.raises(ValueError, match="busy"):  # a word that is no run state is never written
        store.write_status(tmp_path, "busy")  # type: ignore[arg-type]
    assert store.run_state(tmp_path) is RunStatus.INTERRUPTED
