"""Untrusted files never run code, writes never follow a planted link, a run folder's files are checked against
each other, and signals are honoured wherever they land. Each case is reproduced as it was reported and checked
closed."""

from __future__ import annotations

import os
import pickle
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.core import files

from bench.core.errors import BenchError
from bench.data.data import load_dataset
from bench.results import checkpoints, parquet, reading, store
from tests.conftest import bench, one_line_exit_2


# --- a CIFAR batch pickle that carries code ------------------------------------------------------------------


class _Payload:
    """Unpickles as a call of os.mkdir: what any code in a downloaded batch could be."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def _dumps(value: object, protocol: int | str) -> bytes:
    if protocol == "numpy-1":  # the real files were pickled by Python 2 and numpy 1, which say numpy.core
        return pickle.dumps(value, protocol=2).replace(b"cnumpy._core.", b"cnumpy.core.")
    return pickle.dumps(value, protocol=protocol)


def _cifar10_batches(folder: Path, protocol: int | str, poison: object = None) -> None:
    """A tiny cifar-10-batches-py folder pickled as the real one is (numpy arrays, lists, str keys)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"batch_label": name, "data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
                 "labels": rng.integers(0, 10, 4).tolist(), "filenames": [f"{i}.png".encode() for i in range(4)]}
        if name == "data_batch_3" and poison is not None:
            batch["extra"] = poison
        (folder / name).write_bytes(_dumps(batch, protocol))
    meta = {"label_names": [f"c{i}" for i in range(10)], "num_vis": 3072, "num_cases_per_batch": np.int64(4)}
    (folder / "batches.meta").write_bytes(_dumps(meta, protocol))


@pytest.mark.parametrize("protocol", ["numpy-1", 2, 5])
def test_cifar_pickles_in_the_real_format_still_load(tmp_path, protocol):
    _cifar10_batches(tmp_path / "cifar-10-batches-py", protocol)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy 2 warns when numpy.core is imported
        data = load_dataset("cifar10", tmp_path, progress=False)
    assert (data.info.train_size, data.info.test_size, data.info.num_classes) == (20, 4, 10)


def test_a_cifar_pickle_that_carries_code_does_not_run_it(tmp_path):
    marker = tmp_path / "ran"
    _cifar10_batches(tmp_path / "folder" / "cifar-10-batches-py", 2, poison=_Payload(marker))
    with pytest.raises(BenchError, match="data_batch_3.*posix.mkdir") as error:
        load_dataset("cifar10", tmp_path / "folder", progress=False)
    assert "\n" not in str(error.value) and not marker.exists()

    archived = tmp_path / "archived"
    archived.mkdir()
    with tarfile.open(archived / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "folder" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    result = bench("run", "--depths", "8", "--dataset", "auto", "--data-dir", str(archived), "--results",
                   str(tmp_path / "results"), "--epochs", "1", "--no-progress", "--device", "cpu")
    one_line_exit_2(result, "data_batch_3", "not a CIFAR")
    assert not marker.exists()


# --- links planted in a shared results folder -----------------------------------------------------------------


@pytest.fixture
def victim(tmp_path) -> Path:
    """A file outside the results folder that a planted link points at."""
    path = tmp_path / "victim.txt"
    path.write_text("precious\n")
    return path


def test_writes_never_follow_a_link_planted_at_the_temporary_name(tmp_path, victim):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / f".{store.CONFIG}.{os.getpid()}.tmp").symlink_to(victim)  # the name writes used to go through
    store.write_json(folder / store.CONFIG, {"run_id": "x"})
    assert victim.read_text() == "precious\n"
    assert not (folder / store.CONFIG).is_symlink() and store.read_json(folder / store.CONFIG) == {"run_id": "x"}

    (tmp_path / "results").mkdir()
    (tmp_path / "results" / f".write-test-{os.getpid()}").symlink_to(victim)
    files.check_writable(tmp_path / "results")
    assert victim.read_text() == "precious\n"
    assert [p.name for p in (tmp_path / "results").iterdir()] == [f".write-test-{os.getpid()}"]  # no probe left


def test_a_link_at_the_destination_is_refused_not_replaced_or_followed(tmp_path, victim):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / store.STATUS).symlink_to(victim)
    with pytest.raises(BenchError, match="status.json is a symbolic link") as error:
        store.write_status(folder, store.RUNNING)
    assert "\n" not in str(error.value) and victim.read_text() == "precious\n"
    assert (folder / store.STATUS).is_symlink() and not list(folder.glob(".*tmp"))

    (folder / ".lock").symlink_to(tmp_path / "made-through-the-link")
    with pytest.raises(BenchError, match=".lock is a symbolic link"):
        with store.run_lock(folder):
            pass
    assert not (tmp_path / "made-through-the-link").exists()


# --- bench report killed mid-write -----------------------------------------------------------------------------


@pytest.mark.slow
def test_a_report_killed_mid_write_leaves_every_old_file_whole(tmp_path, monkeypatch):
    import signal

    from matplotlib.figure import Figure

    from bench.report import report
    from tests.test_report import write_grid

    write_grid(tmp_path / "results")
    out = tmp_path / "reports"
    report.make_report([tmp_path / "results"], out, notify=lambda message: None)
    before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    real = Figure.savefig

    def killed_in_the_second_figure(self, target, *args, **kwargs):
        calls.append(target)
        if len(calls) == 2:  # figure1.png, after degradation.png was written anew
            handle = target if hasattr(target, "write") else open(target, "wb")
            handle.write(b"\x89PNG half")
            handle.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return real(self, target, *args, **kwargs)

    calls: list = []
    pid = os.fork()
    if pid == 0:  # the child is killed -9 half-way through a figure, as the report was
        try:
            monkeypatch.setattr(Figure, "savefig", killed_in_the_second_figure)
            report.make_report([tmp_path / "results"], out, notify=lambda message: None)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    for path, content in before.items():
        assert path.read_bytes() == content, path


# --- a run folder checked against itself ---------------------------------------------------------------

TINY = ["--dataset", "synthetic", "--preset", "quick", "--width", "2", "--batch-size", "32", "--train-subset", "128",
        "--test-subset", "32", "--epochs", "1", "--no-progress"]
IMAGES = ["--dataset", "imagefolder", "--width", "2", "--batch-size", "8", "--arch", "plain", "--train-subset", "0",
          "--test-subset", "0", "--no-progress"]


def _run(results: Path, data_dir: Path, *args: str):
    return bench("run", "--depths", "8", "--data-dir", str(data_dir), "--results", str(results), *args,
                 "--device", "cpu")


@pytest.mark.slow
@pytest.mark.parametrize("finished", [True, False])
def test_deleting_config_json_does_not_lose_the_data_fingerprint(tmp_path, finished):
    from tests.test_failures_keep_results import _image_folder

    _image_folder(tmp_path / "a" / "good", seed=1)
    _image_folder(tmp_path / "b" / "good", seed=2)
    results = tmp_path / "results"
    schedule = ["--epochs", "2"] if finished else ["--epochs", "2", "--time-limit", "0.00001"]
    assert _run(results, tmp_path / "a" / "good", *IMAGES, *schedule).exit_code == 0
    [folder] = [path for path in results.glob("*/*") if path.is_dir()]
    assert store.run_state(folder) == (store.FINISHED if finished else store.INTERRUPTED)
    (folder / store.CONFIG).unlink()  # as the error for a damaged config.json advises
    one_line_exit_2(_run(results, tmp_path / "b" / "good", *IMAGES, *schedule), "other data", "--results")
    assert not (folder / store.CONFIG).exists()  # neither rewritten with the other data's source
    assert len(pd.read_parquet(folder / store.EPOCHS)) == (2 if finished else 1)  # nor trained on
    rerun = _run(results, tmp_path / "a" / "good", *IMAGES, "--epochs", "2")  # the same data: rewritten, resumed
    assert rerun.exit_code == 0, rerun.output
    assert store.read_json(folder / store.CONFIG)["dataset"]["source"] == str(tmp_path / "a" / "good")


@pytest.mark.slow
def test_a_config_json_that_does_not_give_its_own_run_id_is_refused(tmp_path, data_dir):
    results = tmp_path / "results"
    assert _run(results, data_dir, *TINY).exit_code == 0  # plain-8 and residual-8
    [plain] = results.glob("synthetic/plain-8-*")
    meta = store.read_json(plain / store.CONFIG)
    meta["config"].update(arch="residual", depth=56)  # relabelled by hand
    store.write_json(plain / store.CONFIG, meta)
    notes: list[str] = []
    _, runs = reading.read_results([results], notify=notes.append)
    assert runs["arch"].tolist() == ["residual"] and runs["depth"].tolist() == [8]
    [note] = notes
    assert plain.name in note and "run_id" in note and "\n" not in note
    one_line_exit_2(_run(results, data_dir, *TINY), str(plain / store.CONFIG), "run_id")

    # A consistent config.json copied into another run's folder is refused as well.
    [residual] = results.glob("synthetic/residual-8-*")
    store.write_json(plain / store.CONFIG, store.read_json(residual / store.CONFIG))
    one_line_exit_2(_run(results, data_dir, *TINY), "run_id", plain.name)


@pytest.mark.slow
def test_a_finished_run_whose_epochs_are_lost_is_named_not_dropped(tmp_path, data_dir):
    results = tmp_path / "results"
    assert _run(results, data_dir, *TINY, "--epochs", "2").exit_code == 0
    [plain] = results.glob("synthetic/plain-8-*")
    (plain / store.CHECKPOINT).unlink()  # as every committed run: weights are not in git
    rows = pd.read_parquet(plain / store.EPOCHS)
    for damage in ("lost", "one epoch short"):
        if damage == "lost":
            (plain / store.EPOCHS).unlink()
        else:
            parquet.write_epochs(plain / store.EPOCHS, rows.iloc[:1].to_dict("records"))
        notes: list[str] = []
        _, runs = reading.read_results([results], notify=notes.append)
        assert runs["arch"].tolist() == ["residual"], damage
        assert len(notes) == 1 and str(plain) in notes[0] and "delete" in notes[0], notes
        again = _run(results, data_dir, *TINY, "--epochs", "2")
        assert again.exit_code == 0 and str(plain / store.EPOCHS) in again.stderr, again.output


# --- a data cache of the right shape holding other pixels or labels ----------------------------------------


def _cache_file(folder: Path) -> Path:
    [cache] = (folder / ".cache").glob("*.pt")
    return cache


def test_a_cache_with_other_pixels_or_labels_is_noticed_and_rebuilt(tmp_path):
    import torch

    from bench.data import cache as cache_module

    sizes = dict(synthetic_train=20, synthetic_test=10, progress=False)
    first = load_dataset("synthetic", tmp_path, **sizes)
    cache = _cache_file(tmp_path)
    for damage in ("zeroed pixels", "labels out of range, digest forged"):
        cached = torch.load(cache, weights_only=True)
        if damage == "zeroed pixels":
            cached["train_images"].zero_()
        else:
            cached["train_labels"] += 100
            cached["digest"] = cache_module.cache_digest(cached)
        torch.save(cached, cache)
        notes: list[str] = []
        again = load_dataset("synthetic", tmp_path, notify=notes.append, **sizes)
        assert torch.equal(again.train_images, first.train_images), damage
        assert torch.equal(again.train_labels, first.train_labels), damage
        assert any(str(cache) in note and "decoding the data again" in note for note in notes), notes
    notes.clear()
    load_dataset("synthetic", tmp_path, notify=notes.append, **sizes)
    assert notes == []  # the rebuilt cache is trusted again


# --- class folders that start with '.', file names that are not UTF-8 ---------------------------------------


def _png(path: Path, value: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(path)


def test_a_class_folder_starting_with_a_dot_is_named_not_dropped_silently(tmp_path):
    root = tmp_path / "shapes"
    for split in ("train", "test"):
        for i, cls in enumerate(("a", "b", ".c")):
            _png(root / split / cls / "0.png", 40 * i)
    (root / "train" / ".ipynb_checkpoints").mkdir()  # no images: what a notebook leaves, not a class
    notes: list[str] = []
    data = load_dataset("imagefolder", root, image_size=8, notify=notes.append, progress=False)
    assert data.info.num_classes == 2
    [note] = [n for n in notes if str(root / "train" / ".c") in n]
    assert "rename" in note and "\n" not in note and not any(".ipynb_checkpoints" in n for n in notes)


def test_a_file_name_that_is_not_utf8_is_read_and_fingerprinted(tmp_path):
    root = tmp_path / "shapes"
    for split in ("train", "test"):
        for cls in ("a", "b"):
            _png(root / split / cls / os.fsdecode(b"caf\xe9.png"), 100)  # Latin-1, as old archives name files
            _png(root / split / cls / "plain.png", 200)
    first = load_dataset("imagefolder", root, image_size=8, progress=False)
    assert (first.info.train_size, first.info.num_classes) == (4, 2)
    assert load_dataset("imagefolder", root, image_size=8, progress=False).info.fingerprint == first.info.fingerprint


# --- a wrong-typed epochs column, a torn timing file --------------------------------------------------------


@pytest.mark.slow
def test_report_skips_a_wrong_typed_epochs_file_and_a_torn_timing_file(tmp_path):
    from tests.test_report import write_grid, write_timing

    results = tmp_path / "results"
    write_grid(results)
    write_timing(results)
    damaged = sorted(results.glob("cifar10/plain-20-*"))[0]
    rows = pd.read_parquet(damaged / store.EPOCHS)
    rows["test_error"] = rows["test_error"].map(lambda value: f"{value:.1%}")  # as a spreadsheet saves it
    rows.to_parquet(damaged / store.EPOCHS)
    (results / "timing" / "t2.parquet").write_bytes(b"PAR1 torn")
    result = bench("report", "--results", str(results), "--out", str(tmp_path / "reports"))
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    text = " ".join(result.output.split())
    assert f"skipped {damaged}" in text and "test_error" in text
    assert "t2.parquet" in text and "skipped" in text
    assert list((tmp_path / "reports" / "timing").rglob("speed.png"))  # the good timing file is drawn


# --- signals wherever they land; checkpoints that do not fit ------------------------------------------


def test_a_sigterm_in_the_last_evaluation_stops_the_grid(tmp_path, data_dir, monkeypatch):
    import signal

    import bench.run.train

    real, calls = bench.run.train.evaluate, []

    def evaluate_then_sigterm(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:  # the first run's only (so last) evaluation: the job is told to stop
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(bench.run.train, "evaluate", evaluate_then_sigterm)
    results = tmp_path / "results"
    result = _run(results, data_dir, *TINY)  # plain-8, then residual-8
    assert result.exit_code == 130 and "Traceback" not in result.output, result.output
    assert len(calls) == 1 and not list(results.glob("synthetic/residual-8-*/" + store.STATUS))  # not trained
    [plain] = results.glob("synthetic/plain-8-*")
    assert store.run_state(plain) == store.FINISHED  # its last epoch was whole and saved before the stop


def test_a_second_sigterm_inside_save_checkpoint_leaves_the_run_interrupted(tmp_path, tiny_data, monkeypatch):
    import signal

    from bench.core.interrupts import ForcedStop
    from bench.run.train import train_run
    from tests.conftest import CPU, TINY_RUN as CONFIG

    real = checkpoints.write_atomic

    def write_atomic(path, write):
        def half_then_sigterm(handle):  # the second SIGTERM lands half-way through the checkpoint
            handle.write(b"half")
            os.kill(os.getpid(), signal.SIGTERM)
            write(handle)
        real(path, half_then_sigterm if path.name == f"{store.CHECKPOINT}.new" else write)

    def first_sigterm(iteration, total, stats):
        if iteration == 3:
            monkeypatch.setattr(checkpoints, "write_atomic", write_atomic)
            os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # as `bench run` sets it
    with pytest.raises(ForcedStop):
        train_run(CONFIG, tiny_data, tmp_path, CPU, on_step=first_sigterm, notify=lambda message: None)
    assert store.read_status(tmp_path)["state"] == store.INTERRUPTED
    assert not list(tmp_path.glob(".*tmp")) and not (tmp_path / store.CHECKPOINT).exists()


@pytest.mark.parametrize("damage", ["weights of another net", "unknown half-epoch key"])
def test_a_checkpoint_that_does_not_fit_is_one_line_and_leaves_no_running_status(tmp_path, tiny_data, damage):
    import torch

    from bench.run.train import train_run
    from tests.conftest import CPU, TINY_RUN as CONFIG

    def stop_mid_epoch(iteration, total, stats):
        if iteration == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_run(CONFIG, tiny_data, tmp_path, CPU, on_step=stop_mid_epoch, notify=lambda message: None)
    state = torch.load(tmp_path / store.CHECKPOINT, weights_only=True)
    if damage == "weights of another net":
        state["model"] = {name: torch.zeros(1) for name in state["model"]}
    else:
        state["partial"]["bogus"] = 1
    torch.save(state, tmp_path / store.CHECKPOINT)
    store.write_status(tmp_path, store.RUNNING)  # as a run killed with -9 leaves it
    with pytest.raises(BenchError, match="checkpoint .* does not fit this run") as error:
        train_run(CONFIG, tiny_data, tmp_path, CPU, notify=lambda message: None)
    assert "\n" not in str(error.value) and f"delete {tmp_path}" in str(error.value)
    assert store.read_status(tmp_path)["state"] == store.INTERRUPTED


# --- bench time interrupted, asked for more than any memory, or for more threads than cores -----------

TIME = ["time", "--depths", "8", "--arch", "plain", "residual", "--width", "2", "--input-size", "16", "--batch-size",
        "2", "--threads", "1", "--no-progress"]


@pytest.mark.slow
@pytest.mark.parametrize(("batches", "stopped_at", "kept"), [
    (["2"], 2, 0),  # in plain-8's phases: nothing measured whole
    (["2"], 5, 3),  # in residual-8's, after plain-8's three
    (["2", "3"], 5, 3),  # in plain-8's second batch size: its first batch's three are kept (they were lost)
])
def test_ctrl_c_in_bench_time_saves_what_was_measured_or_says_nothing_was(tmp_path, monkeypatch, batches,
                                                                            stopped_at, kept):
    from bench.timing import timing

    real, calls = timing.measure, []

    def measure_then_ctrl_c(*args, **kwargs):
        calls.append(1)
        if len(calls) == stopped_at:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(timing, "measure", measure_then_ctrl_c)
    monkeypatch.setattr(timing, "TimeConfig", _quick_time_config(timing.TimeConfig))
    at = TIME.index("--batch-size") + 1
    result = bench(*TIME[:at], *batches, *TIME[at + 1:], "--results", str(tmp_path))
    assert result.exit_code == 130 and "Traceback" not in result.output, result.output
    saved = list((tmp_path / "timing").glob("*.parquet"))
    message = " ".join(result.stderr.split())
    if not kept:
        assert not saved and "nothing was saved" in message and "saved in" not in message
    else:
        [path] = saved
        rows = pd.read_parquet(path)
        assert len(rows) == kept and set(rows["model"]) == {"plain-8"} and set(rows["batch_size"]) == {2}
        assert str(path) in message and "again" in message


@pytest.mark.slow
def test_bf16_on_a_cpu_without_bf16_instructions_is_said_by_both_commands(tmp_path, data_dir, monkeypatch):
    from bench.core import provenance
    from bench.timing import timing

    monkeypatch.setattr(provenance, "cpu_flags", lambda: frozenset({"avx2", "fma"}))  # as a Zen 3 EPYC's
    monkeypatch.setattr(timing, "TimeConfig", _quick_time_config(timing.TimeConfig))
    args = [a for a in TIME if a != "residual"]
    timed = bench(*args, "--precision", "bf16", "--results", str(tmp_path))
    ran = _run(tmp_path / "results", data_dir, *TINY, "--arch", "plain", "--precision", "bf16")
    for result in (timed, ran):
        assert result.exit_code == 0, result.output
        assert "without avx512_bf16 or amx_bf16" in " ".join(result.stderr.split())


def _quick_time_config(cls):
    """TimeConfig with warm-up and timing cut to the bone: what is checked here is what is kept, not speed."""
    import dataclasses

    return lambda **kwargs: dataclasses.replace(cls(**kwargs), warmup=0, repeats=1, min_time=0.0)


@pytest.mark.slow
def test_bench_time_asked_for_more_than_any_memory_is_one_line_or_an_oom_row(tmp_path, monkeypatch):
    from bench.timing import timing

    monkeypatch.setattr(timing, "TimeConfig", _quick_time_config(timing.TimeConfig))
    args = [a for a in TIME if a not in ("residual",)]
    args[args.index("--input-size") + 1] = "1099511627776"  # no batch of such images fits: bad input
    one_line_exit_2(bench(*args, "--results", str(tmp_path)), "--input-size 1099511627776", "memory")
    args = [a for a in TIME if a not in ("residual",)]
    args[args.index("--batch-size") + 1:args.index("--batch-size") + 2] = ["2", "4611686018427387904"]
    result = bench(*args, "--results", str(tmp_path))  # a batch too large: out of memory, as any other
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    assert "batch 4611686018427387904 fp32 ran out of memory on cpu" in " ".join(result.stderr.split())
    [path] = (tmp_path / "timing").glob("*.parquet")
    rows = pd.read_parquet(path)
    assert set(rows.loc[rows["batch_size"] == 2, "status"]) == {"ok"}
    assert set(rows.loc[rows["batch_size"] == 4611686018427387904, "status"]) == {"oom"}


@pytest.mark.slow
def test_more_threads_than_cpus_is_said(tmp_path, data_dir, monkeypatch):
    from bench.timing import timing

    monkeypatch.setattr(timing, "TimeConfig", _quick_time_config(timing.TimeConfig))
    cpus = len(os.sched_getaffinity(0))
    args = [a for a in TIME if a not in ("residual",)]
    args[args.index("--threads") + 1] = str(cpus + 7)
    timed = bench(*args, "--results", str(tmp_path))
    assert timed.exit_code == 0, timed.output
    assert f"--threads {cpus + 7}" in timed.stderr and f"{cpus} CPU" in timed.stderr
    ran = _run(tmp_path / "results", data_dir, *TINY, "--arch", "plain", "--threads", str(cpus + 7))
    assert ran.exit_code == 0 and f"--threads {cpus + 7}" in ran.stderr and f"{cpus} CPU" in ran.stderr
