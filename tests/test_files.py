"""bench.core.files: the one link rule (a root may be a link, nothing below it is written or read through one), the
bounds on names and JSON nesting, and environment limits (ulimit -f, a name too long) as one line and exit 2.
Each case builds its own files: a finished tiny grid (conftest.finished_grid) or a results folder of its own."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.core import files

from bench.core.errors import BenchError
from bench.results import reading, store
from tests.conftest import TINY_GRID, bench, one_line_exit_2
from tests.test_report import write_grid, write_timing

TIME = ["--depths", "8", "--arch", "plain", "--width", "2", "--input-size", "16", "--batch-size", "2",
        "--threads", "1", "--no-progress", "--device", "cpu"]


def _run_folder(results: Path, arch: str = "plain") -> Path:
    [folder] = results.glob(f"synthetic/{arch}-8-*")
    return folder


def _tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes: what a write through a link would change."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- the link rule: below a root, no folder or file of bench's own is written or read through a link ----------


def _plant(kind: str, results: Path, out: Path, outside: Path) -> Path:
    """Put a link where bench's own folder goes, pointing at `outside` (which holds what was there, if
    anything); returns the link."""
    where = {"dataset folder": results / "synthetic", "run folder": _run_folder(results) if results.exists() else None,
             "report folder": out / "synthetic-quick", "report timing folder": out / "timing",
             "timing folder": results / "timing"}[kind]
    if where.exists():
        shutil.move(str(where), str(outside))
    else:
        outside.mkdir()
    where.parent.mkdir(parents=True, exist_ok=True)
    where.symlink_to(outside, target_is_directory=True)
    return where


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "command"), [
    ("dataset folder", "run"), ("run folder", "run"), ("report folder", "report"),
    ("report timing folder", "report"), ("timing folder", "time")])
def test_a_link_in_place_of_a_folder_of_bench_is_refused_and_nothing_is_written_through_it(
        finished_grid, data_dir, tmp_path, kind, command):
    out, outside = tmp_path / "reports", tmp_path / "elsewhere"
    write_timing(finished_grid)
    link = _plant(kind, finished_grid, out, outside)
    before = _tree(outside)
    args = {"run": [*TINY_GRID, "--data-dir", str(data_dir), "--results", str(finished_grid)],
            "report": ["--results", str(finished_grid), "--out", str(out)],
            "time": [*TIME, "--results", str(finished_grid)]}[command]
    one_line_exit_2(bench(command, *args), str(link), "is a symbolic link")
    assert _tree(outside) == before


@pytest.mark.slow
def test_the_roots_themselves_may_be_links(finished_grid, data_dir, tmp_path):
    (tmp_path / "results-link").symlink_to(finished_grid, target_is_directory=True)
    (tmp_path / "real-reports").mkdir()
    (tmp_path / "reports-link").symlink_to(tmp_path / "real-reports", target_is_directory=True)
    again = bench("run", *TINY_GRID, "--data-dir", str(data_dir), "--results", str(tmp_path / "results-link"))
    assert again.exit_code == 0, again.output
    drawn = bench("report", "--results", str(tmp_path / "results-link"), "--out", str(tmp_path / "reports-link"))
    assert drawn.exit_code == 0, drawn.output
    assert (tmp_path / "real-reports" / "synthetic-quick" / "degradation.png").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("name", [store.EPOCHS, store.STATUS, store.CONFIG, store.LAYERS])
def test_a_run_file_that_is_a_link_is_never_read(finished_grid, tmp_path, name):
    """A link to a file outside, of the right form but other numbers: the report says so, and draws the run
    from what is its own (the checkpoint's epoch rows) or leaves it out."""
    folder = _run_folder(finished_grid)
    outside = tmp_path / f"outside-{name}"
    shutil.copy(folder / name, outside)
    if name == store.EPOCHS:  # of the right shape, and every error 0%
        import pandas as pd

        rows = pd.read_parquet(outside)
        rows[["train_error", "test_error"]] = 0.0
        rows.to_parquet(outside)
    (folder / name).unlink()
    (folder / name).symlink_to(outside)
    drawn = bench("report", "--results", str(finished_grid), "--out", str(tmp_path / "reports"))
    assert drawn.exit_code == 0 and "Traceback" not in drawn.output, drawn.output
    said = " ".join(drawn.output.split())
    assert str(folder / name) in said and "symbolic link" in said
    if name == store.EPOCHS:
        epochs, _ = reading.read_results([finished_grid], notify=lambda message: None)
        assert (epochs[epochs["arch"] == "plain"]["train_error"] > 0).all()  # the checkpoint's rows, not 0%


def test_refuse_links_below_names_the_first_link_and_spares_the_root(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "root").symlink_to(tmp_path / "real")
    assert files.refuse_links_below(tmp_path / "root", tmp_path / "root" / "a" / "b") == tmp_path / "root" / "a" / "b"
    (tmp_path / "real" / "a").symlink_to(tmp_path)
    with pytest.raises(BenchError, match=f"^{tmp_path / 'root' / 'a'} is a symbolic link"):
        files.own_folder(tmp_path / "root", tmp_path / "root" / "a" / "b")
    assert not (tmp_path / "b").exists()


# --- bounds: names built from data, JSON nesting ---------------------------------------------------------------


def test_a_long_name_is_cut_to_a_stable_short_form():
    long = "AMD EPYC " * 20_000
    name = files.safe_name(long)
    assert len(name) == files.NAME_LIMIT and name == files.safe_name(long)
    assert name != files.safe_name(long + "x") and files.safe_name("Test CPU") == "Test-CPU"


@pytest.mark.slow
@pytest.mark.parametrize("name", [store.CONFIG, store.STATUS, store.DATA])
def test_json_nested_past_the_bound_is_refused_before_parsing(finished_grid, data_dir, tmp_path, name):
    folder = _run_folder(finished_grid)
    (folder / name).write_text('{"state": ' + "[" * 5_000 + "]" * 5_000 + "}")  # under the size bound
    with pytest.raises(BenchError, match="nests deeper than the 16 levels"):
        store.read_json(folder / name)
    drawn = bench("report", "--results", str(finished_grid), "--out", str(tmp_path / "reports"))
    assert drawn.exit_code == 0 and "Traceback" not in drawn.output, drawn.output
    one_line_exit_2(bench("run", *TINY_GRID, "--data-dir", str(data_dir), "--results", str(finished_grid)),
                    str(folder / name), "nests deeper")


def test_nesting_counts_brackets_outside_strings_only(tmp_path):
    shallow = json.dumps({"note": "[" * 50 + '\\"{' * 50, "a": [[[1]]]}).encode()
    files.check_nesting(shallow, tmp_path / "x.json", "fix")
    with pytest.raises(BenchError):
        files.check_nesting(json.dumps([[[[1]]]]).encode(), tmp_path / "x.json", "fix", limit=3)


# --- environment limits: one line, exit 2, the run resumable ---------------------------------------------------


def _bench_process(args: list[str], limit: tuple[int, int] | None = None) -> subprocess.CompletedProcess:
    """`bench` as its own process (a limit set by setrlimit holds for a process, not a CliRunner call)."""
    def apply() -> None:
        if limit is not None:
            resource.setrlimit(limit[0], (limit[1], limit[1]))

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "bench", *args], preexec_fn=apply, env=env, capture_output=True,
                          text=True, timeout=300)


def _one_line(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and all(f in last for f in fragments), result.stderr


@pytest.mark.slow
@pytest.mark.timeout(800)
def test_a_file_size_limit_stops_run_and_report_in_one_line_and_the_run_resumes(tmp_path, data_dir):
    results = tmp_path / "results"
    args = [*TINY_GRID, "--depths", "8", "--arch", "plain", "--data-dir", str(data_dir), "--results", str(results)]
    _one_line(_bench_process(["run", *args], (resource.RLIMIT_FSIZE, 4096)), "file size limit")
    resumed = _bench_process(["run", *args])
    assert resumed.returncode == 0, resumed.stderr
    assert store.run_state(_run_folder(results)) == store.FINISHED
    out = tmp_path / "reports"
    _one_line(_bench_process(["report", "--results", str(results), "--out", str(out)],
                             (resource.RLIMIT_FSIZE, 2048)), "file size limit")
    assert _bench_process(["report", "--results", str(results), "--out", str(out)]).returncode == 0


@pytest.mark.parametrize("where", ["results path", "data folder"])
def test_a_name_past_the_file_system_limit_is_one_line(tmp_path, data_dir, where):
    long = tmp_path / ("x" * 300)
    results, data = (long, data_dir) if where == "results path" else (tmp_path / "results", long / "data")
    result = bench("run", *TINY_GRID, "--data-dir", str(data), "--results", str(results))
    one_line_exit_2(result)
    assert "longer than the file system allows" in result.stderr or "File name too long" in result.stderr
