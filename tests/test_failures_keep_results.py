"""What README's "Nothing lost" promises when things fail: a full disk, a read-only or occupied folder, torn
files, bad values, out of memory, each one line naming the fix, and no finished work lost.

Disk full is a link to /dev/full handed to `store.write_atomic` as its temporary file (every write there
fails with ENOSPC); a read-only folder is `chattr +i` (root ignores chmod), skipped where that is not possible.
"""

from __future__ import annotations

import os
import struct
import subprocess
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from bench.core.config import default_threads
from bench.core import files
from bench.core.config import RunConfig
from bench.core.errors import BenchError, is_out_of_memory, out_of_memory_on
from bench.data import data as data_module
from bench.data import sources
from bench.data.data import load_dataset
from bench.results import checkpoints, reading, store
from bench.run.train import train_run
from bench.timing.timing import TimeConfig
from tests.conftest import bench, one_line_exit_2, run_timing

TINY = ["--device", "cpu", "--dataset", "synthetic", "--preset", "quick", "--width", "2", "--batch-size", "32",
        "--train-subset", "128", "--test-subset", "32", "--epochs", "1", "--arch", "plain", "--no-progress"]


def tiny_run(results: Path, data_dir: Path, *args: str):
    result = bench("run", "--depths", "8", "--data-dir", str(data_dir), "--results", str(results), *TINY, *args)
    assert result.exit_code == 0, result.output
    return result


def run_folders(results: Path) -> list[Path]:
    return sorted(path for path in results.glob("*/*") if path.is_dir())


@pytest.fixture
def read_only(tmp_path):
    """A folder nothing can be written into, not even by root; made writable again afterwards."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    os.chmod(folder, 0o555)
    try:
        (folder / "probe").write_bytes(b"")
    except OSError:
        yield folder
        os.chmod(folder, 0o755)
        return
    (folder / "probe").unlink()
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        os.chmod(folder, 0o755)
        pytest.skip("cannot make a folder read-only here (root without chattr)")
    yield folder
    subprocess.run(["chattr", "-i", str(folder)], check=True)
    os.chmod(folder, 0o755)


@pytest.fixture
def full_disk_at(monkeypatch):
    """`full_disk_at(path)` makes the next `store.write_atomic(path)` fail as on a full disk: its temporary
    file is a link to /dev/full (temporary names are random and opened O_NOFOLLOW, so it is handed over)."""
    real, full = files._create_temporary, set()

    def create(path: Path) -> tuple[Path, int]:
        if path not in full:
            return real(path)
        full.discard(path)
        tmp = path.with_name(f".{path.name}.full.tmp")
        tmp.symlink_to("/dev/full")
        return tmp, os.open(tmp, os.O_WRONLY)

    monkeypatch.setattr(files, "_create_temporary", create)
    return full.add


# --- 1: the same folder name with other images ----------------------------------------------------------------


def _image_folder(root: Path, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for split, per_class in (("train", 16), ("test", 4)):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(per_class):
                image = torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8, generator=generator)
                Image.fromarray(image.numpy()).save(root / split / cls / f"{seed}-{i}.png")


@pytest.mark.slow
def test_other_images_under_the_same_folder_name_are_refused(tmp_path):
    _image_folder(tmp_path / "a" / "good", seed=1)
    _image_folder(tmp_path / "b" / "good", seed=2)
    results = tmp_path / "results"
    args = ["--dataset", "imagefolder", "--width", "2", "--batch-size", "8", "--epochs", "1", "--arch", "plain",
            "--train-subset", "0", "--test-subset", "0", "--no-progress", "--results", str(results), "--device", "cpu"]
    first = bench("run", "--depths", "8", "--data-dir", str(tmp_path / "a" / "good"), *args)
    assert first.exit_code == 0, first.output
    [folder] = run_folders(results)
    recorded = store.read_json(folder / store.CONFIG)["dataset"]
    assert recorded["fingerprint"] and recorded["source"] == str(tmp_path / "a" / "good")

    other = bench("run", "--depths", "8", "--data-dir", str(tmp_path / "b" / "good"), *args)
    one_line_exit_2(other, "other data", "--results")
    # The same images again (copied: other modification times) are the same data: skipped as finished.
    (tmp_path / "c").mkdir()
    subprocess.run(["cp", "-r", str(tmp_path / "a" / "good"), str(tmp_path / "c" / "good")], check=True)
    again = bench("run", "--depths", "8", "--data-dir", str(tmp_path / "c" / "good"), *args)
    assert again.exit_code == 0 and "finished (earlier)" in again.output, again.output
    # A run folder from before fingerprints records none (and has no data.json), and is accepted as before.
    meta = store.read_json(folder / store.CONFIG)
    del meta["dataset"]["fingerprint"]
    store.write_json(folder / store.CONFIG, meta)
    (folder / store.DATA).unlink()
    assert bench("run", "--depths", "8", "--data-dir", str(tmp_path / "b" / "good"), *args).exit_code == 0


def test_fingerprints_tell_data_apart_and_ignore_file_times(tmp_path):
    _image_folder(tmp_path / "one" / "x", seed=1)
    _image_folder(tmp_path / "two" / "x", seed=2)
    one = load_dataset("imagefolder", tmp_path / "one" / "x", progress=False).info
    two = load_dataset("imagefolder", tmp_path / "two" / "x", progress=False).info
    assert one.name == two.name and one.fingerprint != two.fingerprint
    os.utime(next((tmp_path / "one" / "x" / "train" / "a").iterdir()), (1, 1))
    assert load_dataset("imagefolder", tmp_path / "one" / "x", progress=False).info.fingerprint == one.fingerprint
    small = load_dataset("synthetic", tmp_path, synthetic_train=20, synthetic_test=10, progress=False).info
    assert small.fingerprint and small.fingerprint != load_dataset(
        "synthetic", tmp_path, synthetic_train=30, synthetic_test=10, progress=False).info.fingerprint


# --- 2: a torn epochs.parquet ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_torn_epochs_parquet_is_rebuilt_from_the_checkpoint_and_blocks_nothing(tmp_path, data_dir):
    results = tmp_path / "results"
    tiny_run(results, data_dir)
    [folder] = run_folders(results)
    whole = pd.read_parquet(folder / store.EPOCHS)
    torn = folder / store.EPOCHS
    torn.write_bytes(torn.read_bytes()[:50])

    notes: list[str] = []
    epochs, runs = reading.read_results([results], notify=notes.append)  # what `bench report` reads
    assert len(runs) == 1 and len(epochs) == 1 and "checkpoint" in notes[0]

    rerun = tiny_run(results, data_dir, "--seeds", "0", "1")  # the remaining run trains
    assert "rewrote it from the run's checkpoint" in rerun.output
    assert len(run_folders(results)) == 2
    pd.testing.assert_frame_equal(pd.read_parquet(torn), whole)

    for name in (store.CHECKPOINT, store.PREVIOUS_CHECKPOINT):
        (folder / name).unlink(missing_ok=True)
    torn.write_bytes(b"PAR1 torn")
    notes.clear()
    epochs, runs = reading.read_results([results], notify=notes.append)
    assert len(runs) == 1 and len(notes) == 1 and "skipped" in notes[0] and "\n" not in notes[0]
    assert tiny_run(results, data_dir, "--seeds", "0", "1").exit_code == 0


# --- 4: 16-bit PNGs --------------------------------------------------------------------------------------------


def _png16(pixels: np.ndarray) -> bytes:
    """A 16-bit RGB PNG (PIL cannot write one)."""
    height, width, _ = pixels.shape
    raw = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def test_16_bit_pngs_are_scaled_not_wrapped(tmp_path):
    pixels = {}
    for split in ("train", "test"):
        for c, cls in enumerate(("a", "b")):
            (tmp_path / "deep" / split / cls).mkdir(parents=True)
            pixels[split, cls] = np.random.default_rng(c).integers(0, 65536, (32, 32, 3), dtype=np.uint16)
            (tmp_path / "deep" / split / cls / "0.png").write_bytes(_png16(pixels[split, cls]))
    data = load_dataset("imagefolder", tmp_path / "deep", progress=False)
    expected = torch.from_numpy((pixels["train", "b"] >> 8).astype(np.uint8)).permute(2, 0, 1)
    assert torch.equal(data.train_images[1], expected)


# --- 5: a cache that cannot be written -------------------------------------------------------------------------


def test_a_full_disk_or_read_only_folder_costs_the_cache_only(tmp_path, read_only, full_disk_at):
    sizes = dict(synthetic_train=20, synthetic_test=10, progress=False)
    key, _ = data_module._synthetic_source(20, 10, 32, False)
    full_disk_at(tmp_path / ".cache" / f"synthetic-{key}.pt")
    notes: list[str] = []
    data = load_dataset("synthetic", tmp_path, notify=notes.append, **sizes)
    assert len(data.train_images) == 20
    [note] = notes
    assert "could not write the data cache" in note and "decodes again" in note and "\n" not in note
    assert not list((tmp_path / ".cache").iterdir())  # no stray temporary file

    notes.clear()
    assert len(load_dataset("synthetic", read_only, notify=notes.append, **sizes).train_images) == 20
    assert len(notes) == 1 and "could not write the data cache" in notes[0]


# --- 6: outputs that cannot be written -------------------------------------------------------------------------


TIME = ["time", "--depths", "8", "--arch", "plain", "--width", "2", "--input-size", "16", "--batch-size", "2",
        "--threads", "1", "--no-progress"]


def test_bench_time_checks_its_results_folder_before_the_sweep(read_only):
    one_line_exit_2(bench(*TIME, "--results", str(read_only)), "cannot write", "--results")


@pytest.mark.slow
def test_bench_time_keeps_its_rows_when_the_final_write_fails(tmp_path):
    results = tmp_path / "results"

    def fill_up(message: str) -> None:  # called before the sweep, after the folder was checked
        (results / "timing").mkdir(parents=True, exist_ok=True)
        os.chmod(results / "timing", 0o555)
        subprocess.run(["chattr", "+i", str(results / "timing")], check=False)

    config = TimeConfig(depths=(8,), archs=("plain",), reference=True, results=results, width=2, input_size=16,
                        batch_sizes=(2,), warmup=1, repeats=2, min_time=0.0, threads=1)
    try:
        frame = run_timing(config, progress=False, notify=fill_up)
    finally:
        subprocess.run(["chattr", "-i", str(results / "timing")], check=False)
        os.chmod(results / "timing", 0o755)
    if not frame.attrs.get("error"):
        pytest.skip("cannot make a folder read-only here")
    kept = Path(frame.attrs["path"])
    assert kept.parent == Path(tempfile.gettempdir()) and str(kept) in frame.attrs["error"]
    assert len(pd.read_parquet(kept)) == len(frame) == 3
    kept.unlink()


@pytest.mark.slow
def test_report_into_a_file_or_read_only_folder_is_one_line(tmp_path, data_dir, read_only):
    tiny_run(tmp_path / "results", data_dir)
    (tmp_path / "file").write_text("")
    for out in (tmp_path / "file", read_only):
        result = bench("report", "--results", str(tmp_path / "results"), "--out", str(out))
        one_line_exit_2(result, "cannot access", "--out")


def test_a_file_where_the_dataset_folder_goes_is_one_line(tmp_path, data_dir):
    (tmp_path / "synthetic").write_text("")
    result = bench("run", "--depths", "8", "--data-dir", str(data_dir), "--results", str(tmp_path), *TINY)
    one_line_exit_2(result, "--results")


# --- 7: JSON of the wrong shape --------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name, text", [(store.STATUS, "[]"), (store.STATUS, '{"state": 3}'), (store.CONFIG, "[]"),
                                        (store.CONFIG, "{}")])
def test_json_of_the_wrong_shape_is_one_line(tmp_path, data_dir, name, text):
    results = tmp_path / "results"
    tiny_run(results, data_dir)
    [folder] = run_folders(results)
    (folder / name).write_text(text)
    one_line_exit_2(bench("run", "--depths", "8", "--data-dir", str(data_dir), "--results", str(results), *TINY),
                    name, "delete it")
    notes: list[str] = []
    _, runs = reading.read_results([results], notify=notes.append)  # `bench report` skips it, saying why
    assert runs.empty and len(notes) == 1 and name in notes[0]


# --- 8: bad values ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("option, value, fix", [("--lr", "nan", "--lr"), ("--lr", "inf", "--lr"),
                                                ("--time-limit", "-5", "--time-limit"),
                                                ("--time-limit", "0", "--time-limit"), ("--threads", "0", "--threads")])
def test_bad_values_are_one_line(tmp_path, data_dir, option, value, fix):
    result = bench("run", "--depths", "8", "--data-dir", str(data_dir), "--results", str(tmp_path), *TINY,
                   option, value)
    one_line_exit_2(result, fix)
    assert not list(tmp_path.iterdir())


# --- 9: out of memory ------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(Path("/proc/sys/vm/overcommit_memory").exists()
                    and Path("/proc/sys/vm/overcommit_memory").read_text().strip() == "1",
                    reason="with overcommit always on, a huge request might be granted and then touched")
def test_out_of_memory_names_the_run_and_the_grid_goes_on(tmp_path, data_dir):
    # Width 3,000,000: the second convolution asks for ~300 TB, refused at once (more than any address
    # space), so nothing is really exhausted; the first takes ~300 MB for a moment.
    args = [a for a in TINY if a not in ("--arch", "plain")]
    result = bench("run", "--depths", "8", "--data-dir", str(data_dir), "--results", str(tmp_path), *args,
                   "--width", "3000000")
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    for arch in ("plain", "residual"):  # the second run was tried too
        assert f"{arch}-8-s0-" in result.output
    assert result.output.count("out of memory on cpu") == 2 and "lower --width" in result.output
    assert not run_folders(tmp_path)  # no empty run folder left behind


def test_out_of_memory_says_which_memory_ran_out():
    # A model is built in host memory before it moves to the GPU, so the CPU allocator's
    # error during a CUDA run is the host's, not the GPU's.
    try:
        torch.empty(2**62, dtype=torch.uint8)  # more than any address space: refused at once
    except RuntimeError as error:
        host = error
    gpu = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 1 has a total capacity of 80 GiB")
    assert is_out_of_memory(host) and is_out_of_memory(gpu)
    assert out_of_memory_on(host, torch.device("cuda", 1)) == "cpu"
    assert out_of_memory_on(gpu, torch.device("cuda", 1)) == "cuda:1"


# --- 10: a deleted config.json ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_deleted_config_json_is_rewritten_and_never_dropped_silently(tmp_path, data_dir):
    tiny_run(tmp_path, data_dir)
    [folder] = run_folders(tmp_path)
    before = store.read_json(folder / store.CONFIG)
    (folder / store.CONFIG).unlink()
    notes: list[str] = []
    _, runs = reading.read_results([tmp_path], notify=notes.append)
    assert runs.empty and "no config.json" in notes[0]
    rerun = tiny_run(tmp_path, data_dir)
    assert "rewrote it" in rerun.output
    after = store.read_json(folder / store.CONFIG)
    assert {k: after[k] for k in ("run_id", "config", "dataset", "model", "schedule")} == \
           {k: before[k] for k in ("run_id", "config", "dataset", "model", "schedule")}
    _, runs = reading.read_results([tmp_path], notify=notes.append)
    assert len(runs) == 1 and runs.loc[0, "state"] == store.FINISHED


# --- 12: the smaller ones ----------------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_bench_time_on_a_missing_gpu_is_one_line(tmp_path):
    one_line_exit_2(bench(*TIME, "--device", "cuda", "--results", str(tmp_path)), "--device cpu")


def test_disk_full_messages_speak_of_the_file_not_of_epochs(tmp_path, full_disk_at):
    full_disk_at(tmp_path / "rows.parquet")
    with pytest.raises(BenchError, match="disk full while writing") as error:
        store.write_json(tmp_path / "rows.parquet", {})
    assert "epoch" not in str(error.value) and not list(tmp_path.iterdir())


@pytest.mark.slow
def test_a_disk_full_error_leaves_the_run_interrupted_not_running(tmp_path, tiny_data, full_disk_at):
    config = RunConfig(arch="plain", depth=8, width=2, preset="test", dataset="synthetic", iterations=None,
                       epochs=1, batch_size=64, lr=0.05)
    full_disk_at(tmp_path / f"{store.CHECKPOINT}.new")
    with pytest.raises(BenchError, match="disk full"):
        train_run(config, tiny_data, tmp_path, torch.device("cpu"), notify=lambda message: None)
    status = store.read_json(tmp_path / store.STATUS)
    assert status["state"] == store.INTERRUPTED and "disk full" in status["error"]


def test_no_older_checkpoint_is_promised_when_there_is_none(tmp_path):
    (tmp_path / store.CHECKPOINT).write_bytes(b"torn")
    messages: list[str] = []
    with pytest.raises(BenchError, match="corrupt checkpoint"):
        checkpoints.load_checkpoint(tmp_path, messages.append)
    assert messages and not any("trying an older one" in m for m in messages)


def test_a_batch_larger_than_the_data_leaves_no_run_folder(tmp_path, data_dir):
    result = bench("run", "--depths", "8", "--data-dir", str(data_dir), "--results", str(tmp_path), *TINY,
                   "--batch-size", "100000")
    one_line_exit_2(result, "--batch-size")
    assert not run_folders(tmp_path)


@pytest.mark.slow
def test_logs_get_whole_tables_epoch_lines_and_notices_apart(tmp_path, data_dir, monkeypatch):
    args = [a for a in TINY if a != "--no-progress"]
    result = bench("run", "--depths", "8", "--data-dir", str(data_dir), "--results", str(tmp_path), *args,
                   "--epochs", "2")
    assert result.exit_code == 0, result.output
    [folder] = run_folders(tmp_path)
    run_id = folder.name
    assert f"{run_id} epoch 2/2:" in result.stdout  # not a terminal: one line per epoch, no live bar
    assert any(run_id in line and "finished" in line for line in result.stdout.splitlines())  # not cut to 80
    assert not (folder / store.PREVIOUS_CHECKPOINT).exists() and (folder / store.CHECKPOINT).exists()

    monkeypatch.setattr(sources, "_reachable", lambda host, *rest, **kw: False)
    dry = bench("run", "--depths", "8", "20", "--dataset", "auto", "--data-dir", str(tmp_path / "empty"),
                "--results", str(tmp_path / "r"), "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert len(dry.stdout.strip().splitlines()) == 4  # one line per run, the notice apart
    assert "synthetic" in dry.stderr and "cifar10-jpg/" in dry.stderr


@pytest.mark.slow
def test_threads_are_set_and_recorded(tmp_path, data_dir, monkeypatch):
    tiny_run(tmp_path, data_dir, "--threads", "1")
    [folder] = run_folders(tmp_path)
    assert store.read_json(folder / store.CONFIG)["environment"]["threads"] == 1
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert default_threads(1) == len(os.sched_getaffinity(0)) and default_threads(4) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_threads(1) == 3
