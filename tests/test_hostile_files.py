"""Every file is read as a hostile one: run files, checkpoints and images that would hang, explode or lie are
refused in one line (exit 2) by `bench run` and `bench analyze`, and skipped with a warning by `bench report`,
which draws the rest. Each case is the one that showed the hole, on a tiny finished grid (conftest.finished_grid)."""

from __future__ import annotations

import io
import math
import os
import pty
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from bench.core.errors import BenchError
from bench.data.decoding import MAX_IMAGE_PIXELS, _header_size
from bench.results import checkpoints, store
from resnet.nets import MAX_CIFAR_DEPTH
from tests.conftest import TINY_GRID, bench, grid_folder, one_line_exit_2


def _report(results: Path):
    """`bench report` of `results`; it must draw (exit 0) with the residual run in it."""
    out = results.parent / "reports"
    drawn = bench("report", "--results", str(results), "--out", str(out))
    assert drawn.exit_code == 0, drawn.output
    assert "Traceback" not in drawn.output
    assert (out / "synthetic-quick" / "degradation.png").stat().st_size > 10_000
    return drawn


def _rerun(results: Path, data_dir: Path):
    return bench("run", *TINY_GRID, "--data-dir", str(data_dir), "--results", str(results))


# --- files that hang, files that are too big ------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(300, method="thread")  # a FIFO waited on blocks in open(): end the session
@pytest.mark.parametrize("name", [store.STATUS, store.CONFIG])
def test_a_fifo_run_file_is_skipped_by_report_and_refused_by_run_never_waited_on(finished_grid, data_dir, name):
    path = grid_folder(finished_grid, "plain") / name
    path.unlink()
    os.mkfifo(path)
    drawn = _report(finished_grid)
    assert f"skipped {path.parent}" in drawn.output and "is a FIFO, not a regular file" in drawn.output
    assert "residual-8" in (finished_grid.parent / "reports" / "README.md").read_text()
    one_line_exit_2(_rerun(finished_grid, data_dir), str(path), "is a FIFO")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_sparse_1_gib_status_json_is_refused_unread(finished_grid, data_dir):
    path = grid_folder(finished_grid, "plain") / store.STATUS
    os.truncate(path, 2**30)  # sparse: no disk, but read whole it is a gigabyte in memory
    started = time.monotonic()
    with pytest.raises(BenchError, match="is 1 GiB, more than the 64 KiB"):
        store.read_status(path.parent)
    assert time.monotonic() - started < 1
    assert "is 1 GiB, more than the 64 KiB such a file may be" in _report(finished_grid).output
    one_line_exit_2(_rerun(finished_grid, data_dir), str(path), "1 GiB")


def test_a_config_json_over_its_bound_is_refused_unread(finished_grid):
    path = grid_folder(finished_grid, "plain") / store.CONFIG
    with open(path, "a") as handle:
        handle.write(" " * store.FILE_LIMITS[store.CONFIG])  # still valid JSON
    with pytest.raises(BenchError, match=r"more than the 1 MiB such a file may be: delete it"):
        store.read_config(path.parent)


@pytest.mark.slow
@pytest.mark.timeout(300, method="thread")  # a FIFO waited on blocks in open(): end the session
def test_a_fifo_timing_file_is_skipped_by_report(finished_grid):
    timing = finished_grid / "timing" / "cpu.parquet"
    timing.parent.mkdir()
    os.mkfifo(timing)
    assert f"skipped timing file {timing} is a FIFO" in _report(finished_grid).output


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_depth_no_family_can_build_is_one_line_at_once(tmp_path):
    started = time.monotonic()
    result = bench("run", "--depths", "600002", "--dry-run", "--device", "cpu", "--results", str(tmp_path))
    one_line_exit_2(result, "depth 600002", f"at most {MAX_CIFAR_DEPTH} layers")
    assert time.monotonic() - started < 30  # it built for minutes before
    # The bound itself is buildable.
    assert bench("run", "--depths", str(MAX_CIFAR_DEPTH), "--arch", "plain", "--dry-run", "--device", "cpu",
               "--dataset", "synthetic", "--results", str(tmp_path)).exit_code == 0


def _png(path: Path, width: int, height: int) -> None:
    """A real, whole PNG of a black 1-bit image: a few kilobytes, whatever size it declares."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" * (1 + (width + 7) // 8)
    packer, body = zlib.compressobj(9), []
    for _ in range(height):
        body.append(packer.compress(row))
    body.append(packer.flush())
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", b"".join(body)) + chunk(b"IEND", b""))


def _image_folder(root: Path, classes: tuple[str, ...] = ("a", "b")) -> None:
    generator = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in classes:
            (root / split / cls).mkdir(parents=True)
            for i in range(4):
                Image.fromarray(generator.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
                    root / split / cls / f"{i}.png")


IMAGES = ["--depths", "8", "--arch", "plain", "--dataset", "imagefolder", "--width", "2", "--batch-size", "4",
          "--epochs", "1", "--train-subset", "0", "--test-subset", "0", "--no-progress", "--device", "cpu"]


def test_an_image_declaring_16000_x_16000_pixels_is_refused_before_any_decoder_sees_it(tmp_path, monkeypatch):
    import torchvision.io

    _image_folder(tmp_path / "data")
    bomb = tmp_path / "data" / "train" / "b" / "bomb.png"
    _png(bomb, 16000, 16000)  # 768 MiB as RGB
    assert bomb.stat().st_size < 300_000
    decoded = []
    real = torchvision.io.decode_image

    def decode_image(raw, *args, **kwargs):
        decoded.append(len(raw))
        return real(raw, *args, **kwargs)

    monkeypatch.setattr(torchvision.io, "decode_image", decode_image)
    result = bench("run", *IMAGES, "--data-dir", str(tmp_path / "data"), "--results", str(tmp_path / "results"))
    one_line_exit_2(result, str(bomb), "16000 x 16000", f"{MAX_IMAGE_PIXELS:,}", "delete the file")
    assert bomb.stat().st_size not in decoded and decoded  # the others were decoded; it never was


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P"])
def test_the_header_size_is_what_pil_reads(mode):
    generator = np.random.default_rng(0)
    image = Image.fromarray(generator.integers(0, 256, (37, 53, 3), dtype=np.uint8)).convert(mode)
    for form, options in (("PNG", {}), ("JPEG", {}), ("JPEG", {"progressive": True}), ("WEBP", {}),
                          ("WEBP", {"lossless": True}), ("WEBP", {"exif": b"Exif\0\0x"})):
        if form == "JPEG" and mode in ("RGBA", "P"):
            continue
        buffer = io.BytesIO()
        image.save(buffer, form, **options)
        assert _header_size(buffer.getvalue()) == (53, 37) == Image.open(buffer).size, (form, options)


def test_an_image_folder_of_one_class_is_one_line(tmp_path):
    _image_folder(tmp_path / "data", classes=("only",))
    result = bench("run", *IMAGES, "--data-dir", str(tmp_path / "data"), "--results", str(tmp_path / "results"))
    one_line_exit_2(result, str(tmp_path / "data" / "train"), "1 class folder", "two or more")


# --- files of the wrong shape ---------------------------------------------------------------------------------


def _analyze(folder: Path, data_dir: Path):
    return bench("analyze", str(folder), "--data-dir", str(data_dir), "--device", "cpu")


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["an empty directory", "other columns", "a negative value"])
def test_a_layers_file_of_the_wrong_shape_leaves_its_figures_out_and_stops_analyze(finished_grid, data_dir, damage):
    path = grid_folder(finished_grid, "plain") / store.LAYERS
    rows = pd.read_parquet(path)
    if damage == "an empty directory":
        path.unlink()
        path.mkdir()
    elif damage == "other columns":
        rows.rename(columns={"kind": "sort"}).to_parquet(path)
    else:
        rows.assign(value=-rows["value"]).to_parquet(path)
    drawn = _report(finished_grid)
    assert f"left out the per-layer figures of {path.parent.name}: {path}" in drawn.output
    assert (finished_grid.parent / "reports" / "synthetic-quick" / "figure7.png").exists()  # residual-8's
    fragment = {"an empty directory": "is a directory, not a regular file", "other columns": "no column kind",
                "a negative value": "not a finite number >= 0"}[damage]
    one_line_exit_2(_analyze(path.parent, data_dir), str(path), fragment, "bench analyze")


@pytest.mark.slow
@pytest.mark.timeout(200)
@pytest.mark.parametrize("column", ["train_error", "test_error"])
@pytest.mark.parametrize("value", [1e308, -5.0, math.nan, math.inf])
def test_an_error_that_is_no_fraction_is_named_not_drawn(finished_grid, column, value):
    path = grid_folder(finished_grid, "plain") / store.EPOCHS
    rows = pd.read_parquet(path)
    rows.loc[1, column] = value
    rows.to_parquet(path)
    drawn = _report(finished_grid)  # drawn from the run's checkpoint, which holds the true rows
    assert f"{path} is unreadable (ValueError: column {column} holds {value!r}" in drawn.output
    assert "using the rows of the run's checkpoint" in drawn.output
    (path.parent / store.CHECKPOINT).unlink()  # a committed run: nothing else holds its rows
    drawn = _report(finished_grid)
    assert f"skipped {path.parent}: cannot read {path} (ValueError: column {column}" in drawn.output


# --- checkpoints that lie -------------------------------------------------------------------------------------


def _lie(folder: Path, lie: str) -> None:
    path = folder / store.CHECKPOINT
    state = torch.load(path, weights_only=True)
    if lie == "no iteration":
        del state["iteration"]
    elif lie == "model as a list":
        state["model"] = list(state["model"].values())
    else:
        state["epoch"] = "abc"
    torch.save(state, path)


LIES = {"no iteration": "it has no 'iteration'", "model as a list": "its 'model' is a list",
        "epoch abc": "its 'epoch' is 'abc', not a count"}


@pytest.mark.parametrize("lie", list(LIES))
def test_analyze_refuses_a_checkpoint_that_lies(finished_grid, data_dir, lie):
    folder = grid_folder(finished_grid, "plain")
    _lie(folder, lie)
    one_line_exit_2(_analyze(folder, data_dir), str(folder / store.CHECKPOINT), LIES[lie], f"delete {folder}")


def test_resuming_a_checkpoint_whose_epoch_is_abc_never_marks_the_run_finished(finished_grid, data_dir):
    folder = grid_folder(finished_grid, "plain")
    _lie(folder, "epoch abc")
    store.write_status(folder, store.INTERRUPTED, epoch=2)  # so that `bench run` resumes it
    one_line_exit_2(_rerun(finished_grid, data_dir), str(folder / store.CHECKPOINT), LIES["epoch abc"])
    status = store.read_status(folder)
    assert status["state"] == store.INTERRUPTED and status.get("epoch") != "abc", status


def test_a_checkpoint_whose_rows_are_not_its_epochs_is_refused(finished_grid):
    folder = grid_folder(finished_grid, "plain")
    state = torch.load(folder / store.CHECKPOINT, weights_only=True)
    state["rows"][0]["test_error"] = math.nan
    torch.save(state, folder / store.CHECKPOINT)
    with pytest.raises(BenchError, match="column test_error holds nan"):
        checkpoints.load_checkpoint(folder, notify=lambda message: None)
    state["epoch"] = 5
    torch.save(state, folder / store.CHECKPOINT)
    with pytest.raises(BenchError, match="2 epoch rows at epoch 5"):
        checkpoints.load_checkpoint(folder, notify=lambda message: None)


def _drain(descriptor: int) -> None:
    """Read a terminal's other end until it closes, so that its writer never blocks on a full buffer."""
    try:
        while os.read(descriptor, 4096):
            pass
    except OSError:
        pass


# --- odd endings ----------------------------------------------------------------------------------------------


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs /proc")
def test_a_report_into_proc_is_one_line(finished_grid):
    one_line_exit_2(bench("report", "--results", str(finished_grid), "--out", "/proc/bench_out"), "/proc/bench_out",
                    "--out")


@pytest.mark.slow
@pytest.mark.timeout(700)
@pytest.mark.parametrize("terminal", ["a pipe", "a terminal that is gone"])
def test_sighup_saves_the_half_epoch_marks_the_run_interrupted_and_exits_129(tmp_path, data_dir, terminal):
    command = [sys.executable, "-m", "bench", "run", "--depths", "8", "--arch", "plain", "--epochs", "4",
               "--data-dir", str(data_dir), "--results", str(tmp_path), "--dataset", "synthetic", "--width", "8",
               "--batch-size", "32", "--train-subset", "1024", "--test-subset", "64", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    if terminal == "a pipe":
        process = subprocess.Popen([*command, "--no-progress"], env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)
    else:  # live progress bars on a terminal, whose other end then closes, as a dropped ssh connection's does
        master, slave = pty.openpty()
        process = subprocess.Popen(command, env=env, stdin=slave, stdout=slave, stderr=slave)
        os.close(slave)
        drain = threading.Thread(target=_drain, args=(master,), daemon=True)
        drain.start()
    deadline = time.time() + 300
    while not list(tmp_path.glob(f"*/*/{store.EPOCHS}")) and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    time.sleep(0.3)  # into epoch 2
    if terminal != "a pipe":
        os.close(master)  # every write to the terminal fails from now on (EIO)
    process.send_signal(signal.SIGHUP)  # what a closed terminal or a dropped ssh connection sends
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 129, stderr
    if terminal == "a pipe":
        assert "Traceback" not in stderr and "interrupted" in stderr
    [folder] = [path.parent for path in tmp_path.glob(f"*/*/{store.CONFIG}")]
    assert store.read_status(folder)["state"] == store.INTERRUPTED
    checkpoint = checkpoints.load_checkpoint(folder)
    assert checkpoint["partial"] is not None and checkpoint["epoch"] < 4  # the half epoch, saved
    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert store.read_status(folder)["state"] == store.FINISHED and len(pd.read_parquet(folder / store.EPOCHS)) == 4
