import json
import os

import pytest

from bench.core import files
from bench.core.errors import BenchError
from bench.core.records import RunStatus
from bench.results import store
from tests.conftest import grid_folder


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


# --- a run file's fields checked when read -----------------------------------------------------------------------


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

    folder = grid_folder(finished_grid, "plain")
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
