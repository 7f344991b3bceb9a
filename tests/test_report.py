"""`bench report` on results written by the real store: figures exist, plot exactly the logged numbers, and
the tables match a pandas computation of the same thing."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image

from bench.report import markdown_tables, plots, report, schedule_plots, tables

from bench.results import prose

from bench.core.config import QUICK
from bench.core.errors import BenchError
from bench.report.plots import degradation_figure, figure1
from bench.report.timing_plots import timing_figure
from bench.results.fitting import NOISE_FLOOR
from bench.results.parquet import write_epochs
from bench.results.store import CONFIG, EPOCHS, read_json, run_dir, write_json, write_status
from bench.timing import timing_rows
from bench.timing.timing import TIMING_SCHEMA

EPOCHS_TOTAL = 6
NOTE = "CIFAR-10 re-encoded as JPEG (quality 95): errors are not exactly comparable to the paper's"


def write_run(root: Path, arch: str, depth: int, seed: int, *, done: int = EPOCHS_TOTAL, state: str = "finished",
              diverged_epoch: int | None = None, iterations: int | None = None, precision: str = "fp32",
              **changes: object) -> str:
    """One run folder as `bench run` leaves it: plain nets train worse the deeper they are (the degradation),
    residual nets better; a diverged epoch has NaN training loss and error. With `iterations`, a run of that
    schedule length (instead of EPOCHS_TOTAL epochs), which ends lower the longer it is."""
    schedule = {"iterations": iterations, "epochs": None} if iterations else {"epochs": EPOCHS_TOTAL}
    config = dataclasses.replace(QUICK, arch=arch, depth=depth, seed=seed, precision=precision, **schedule, **changes)
    run_id = config.run_id()
    width = config.width or 16  # what that config builds (bench.results.store checks config.json's model against it)
    directory = run_dir(root, "cifar10", run_id)
    rng = np.random.default_rng(depth * 100 + seed + (arch == "plain") * 7 + (iterations or 0))
    floor = (0.04 + 0.002 * depth if arch == "plain" else 0.09 - 0.0008 * depth) + rng.uniform(0, 0.03)
    floor *= 1000 / iterations if iterations else 1
    rows = []
    for epoch in range(1, done + 1):
        train = floor + 0.7 * math.exp(-epoch / 1.5) + rng.uniform(0, 0.01)
        diverged = epoch == diverged_epoch
        rows.append({
            "run_id": run_id, "dataset": "cifar10", "arch": arch, "depth": depth, "width": width,
            "shortcut": "A", "seed": seed, "preset": "quick", "epoch": epoch,
            "iteration": epoch * 157, "lr": 0.05, "train_loss": math.nan if diverged else 2 * train,
            "train_error": math.nan if diverged else train, "test_loss": 1.0,
            "test_error": 0.9 if diverged else train + 0.05 + rng.uniform(0, 0.01),
            "epoch_seconds": 10.0, "images_per_second": 1000.0, "device": "cpu", "precision": precision,
            "timestamp": dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(minutes=epoch),
        })
    write_epochs(directory / EPOCHS, rows)
    write_json(directory / CONFIG, {
        "run_id": run_id, "config": config.to_dict(),
        "dataset": {"name": "cifar10", "source": "test", "num_classes": 10, "image_size": 32,
                    "train_size": 10000, "test_size": 2000, "note": NOTE},
        "model": {"family": "cifar", "width": width, "shortcut": "A", "has_shortcuts": arch == "residual",
                  "stem": "cifar", "params": 1000 * depth},
        "environment": {"device_name": "Test CPU", "git_commit": "abc123def456", "torch": "2.14.1"},
        "started_at": "2025-01-01T00:00:00Z",
    })
    extra = {"diverged_epoch": diverged_epoch} if diverged_epoch else {}
    write_status(directory, state, epoch=done, epochs_total=EPOCHS_TOTAL, **extra)
    return run_id


def write_grid(root: Path, *, depths: tuple[int, ...] = (20, 56), seeds: tuple[int, ...] = (0, 1)) -> None:
    """2 depths x 2 archs x 2 seeds finished, plus plain-56 seed 2 still running at epoch 3 and residual-20
    seed 2 diverged at epoch 4."""
    for depth in depths:
        for arch in ("plain", "residual"):
            for seed in seeds:
                write_run(root, arch, depth, seed)
    write_run(root, "plain", depths[-1], 2, done=3, state="running")
    write_run(root, "residual", depths[0], 2, done=4, state="diverged", diverged_epoch=4)


def write_timing(root: Path, *, oom: bool = False) -> pd.DataFrame:
    """A `bench time` file: plain/residual at 18 and 34 layers (and torchvision's), three phases; with `oom`,
    also a plain-152 train step that ran out of memory."""
    rows = []
    for arch, depth in [(a, d) for a in ("plain", "residual", "torchvision") for d in (18, 34)]:
        for factor, phase in ((1.0, "forward"), (2.8, "forward_backward"), (3.0, "train_step")):
            ms = factor * depth * (1.0 if arch == "plain" else 1.1)
            rows.append({
                "model": f"{arch}-{depth}", "arch": arch, "depth": depth, "family": "imagenet", "device": "cpu",
                "device_name": "Test CPU", "batch_size": 32, "input_size": 224, "precision": "fp32",
                "channels_last": False, "compiled": False, "phase": phase, "median_ms": ms, "iqr_ms": 0.1 * ms,
                "images_per_second": 32 / ms * 1000, "peak_memory_bytes": 2**20 * depth, "params": 10**6 * depth,
                "flops_per_image": int(2e9 * depth / 18), "tflops": 0.1, "threads": 2, "torch_version": "2.14.1",
                "timestamp": dt.datetime(2025, 1, 2, tzinfo=dt.timezone.utc), "status": "ok", "width": 64,
                "git_commit": "abc123def456",
            })
    if oom:
        rows.append({**rows[-1], "model": "plain-152", "arch": "plain", "depth": 152, "status": "oom",
                     "median_ms": None, "iqr_ms": None, "images_per_second": None, "peak_memory_bytes": None,
                     "tflops": None})
    (root / "timing").mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=TIMING_SCHEMA)  # exactly what `bench time` writes
    pq.write_table(table, root / "timing" / "t1.parquet")
    return table.to_pandas()


@pytest.fixture
def results(tmp_path: Path) -> Path:
    root = tmp_path / "results"
    write_grid(root)
    return root


def lines_by_gid(fig) -> dict[str, object]:
    return {line.get_gid(): line for ax in fig.axes for line in ax.get_lines() if line.get_gid()}


@pytest.mark.slow
def test_degradation_figure_plots_the_mean_over_seeds(results: Path) -> None:
    epochs, runs, _ = report.load_results([results])
    fig = degradation_figure(epochs, runs)
    lines = lines_by_gid(fig)
    # An epoch whose loss is NaN has meaningless errors: the report masks them, and so does this check.
    finite = np.isfinite(epochs["train_loss"]) & np.isfinite(epochs["test_loss"])
    masked = epochs.assign(train_error=epochs["train_error"].where(finite),
                           test_error=epochs["test_error"].where(finite))
    expected = masked.groupby(["arch", "depth", "epoch"])[["train_error", "test_error"]].mean() * 100
    assert len(expected.groupby(level=[0, 1])) == 4
    for (arch, depth), frame in expected.groupby(level=[0, 1]):
        for kind in ("train", "test"):
            line = lines[f"{arch}-{depth}-{kind}"]
            np.testing.assert_array_equal(line.get_xdata(), frame.index.get_level_values("epoch"))
            np.testing.assert_allclose(line.get_ydata(), frame[f"{kind}_error"].to_numpy())
    # Plain on the left, residual on the right, one y range for both.
    left, right = fig.axes[:2]
    assert {g.split("-")[0] for g in lines if lines[g].axes is left} == {"plain"}
    assert left.get_ylim() == right.get_ylim()
    # The diverged epoch is skipped: residual-20 at epoch 4 is the mean of seeds 0 and 1 only.
    at4 = epochs[(epochs["arch"] == "residual") & (epochs["depth"] == 20) & (epochs["epoch"] == 4)]
    assert len(at4) == 3 and at4["train_error"].isna().sum() == 1
    seeds01 = at4[at4["seed"] < 2]
    assert lines["residual-20-train"].get_ydata()[3] == pytest.approx(seeds01["train_error"].mean() * 100)
    assert lines["residual-20-test"].get_ydata()[3] == pytest.approx(seeds01["test_error"].mean() * 100)


@pytest.mark.slow
def test_running_and_diverged_runs_are_marked_not_dropped(results: Path) -> None:
    epochs, runs, _ = report.load_results([results])
    fig = degradation_figure(epochs, runs)
    lines = lines_by_gid(fig)
    running = lines["plain-56-s2-running"]
    assert running.get_xdata()[0] == 3
    diverged = lines["residual-20-s2-diverged"]  # on the mean test line, where the seed dropped out
    assert diverged.get_xdata()[0] == 4
    assert diverged.get_ydata()[0] == lines["residual-20-test"].get_ydata()[3]
    legend = " ".join(t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts())
    assert "seed 2 running, 3/6 epochs" in legend
    assert "seed 2 diverged at epoch 4" in legend


@pytest.mark.slow
def test_figure1_shows_shallowest_and_deepest_plain(results: Path) -> None:
    epochs, runs, _ = report.load_results([results])
    lines = lines_by_gid(figure1(epochs, runs))
    assert {g for g in lines if not g.endswith(("running", "diverged"))} == {
        "plain-20-train", "plain-20-test", "plain-56-train", "plain-56-test"}
    plain56 = epochs[(epochs["arch"] == "plain") & (epochs["depth"] == 56)].groupby("epoch")["test_error"].mean()
    np.testing.assert_allclose(lines["plain-56-test"].get_ydata(), plain56.to_numpy() * 100)


def test_error_table_matches_pandas(results: Path) -> None:
    epochs, runs, _ = report.load_results([results])
    errors = tables.error_table(epochs, runs).set_index(["arch", "depth"])
    last = epochs.sort_values("epoch").groupby("run_id").tail(1).merge(runs[["run_id", "state"]], on="run_id")
    kept = last[last["state"] != "diverged"]
    final = kept.groupby(["arch", "depth"])["test_error"].agg(["mean", "std"]) * 100
    np.testing.assert_allclose(errors.loc[final.index, "final_test_mean"], final["mean"])
    np.testing.assert_allclose(errors.loc[final.index, "final_test_std"], final["std"])
    best = epochs.merge(runs[["run_id", "state"]], on="run_id").query("state != 'diverged'")
    best = best.groupby(["arch", "depth", "run_id"])["test_error"].min().groupby(["arch", "depth"]).mean() * 100
    np.testing.assert_allclose(errors.loc[best.index, "best_test_mean"], best)
    assert errors.loc[("residual", 20), "diverged"] == 1 and errors.loc[("residual", 20), "runs"] == 3
    assert "seed 2 running at 3/6 epochs" in errors.loc[("plain", 56), "note"]
    assert errors["paper_test"].isna().all()  # quick preset on a subset: nothing to compare with
    assert "final_top5_mean" not in errors  # rows without top-5 (written before it): no column, as before

    gaps = tables.gap_table(errors.reset_index()).set_index("depth")
    plain_minus_residual = final.loc[("plain", 56), "mean"] - final.loc[("residual", 56), "mean"]
    assert gaps.loc[56, "test_gap"] == pytest.approx(plain_minus_residual)
    plain = tables.degradation(errors.reset_index()).set_index("arch").loc["plain"]
    train = kept.groupby(["arch", "depth"])["train_error"].mean() * 100
    assert plain["train_gap"] == pytest.approx(train[("plain", 56)] - train[("plain", 20)])
    assert plain["train_gap"] > 0 and plain["provisional"]
    assert "degradation shown" in prose.degradation_verdict(pd.Series({**plain, "arch": "plain"}))


def test_the_error_table_gives_the_final_top5_error_where_the_runs_measured_it(results: Path) -> None:
    for path in results.glob("cifar10/*/" + EPOCHS):  # as runs of today's code write them
        frame = pd.read_parquet(path)
        write_epochs(path, frame.assign(test_top5_error=frame["test_error"] / 2).to_dict("records"))
    epochs, runs, _ = report.load_results([results])
    errors = tables.error_table(epochs, runs).set_index(["arch", "depth"])
    np.testing.assert_allclose(errors["final_top5_mean"], errors["final_test_mean"] / 2)
    markdown = markdown_tables.error_markdown(errors.reset_index())
    header = markdown.splitlines()[0]
    assert header.index("final test error") < header.index("final top-5 test error") < header.index("best test")


def test_negative_degradation_is_said_plainly() -> None:
    row = pd.Series({"arch": "plain", "shallow_depth": 18, "deep_depth": 34, "shallow_train": 10.0,
                     "deep_train": 8.0, "train_gap": -2.0, "test_gap": -1.0, "provisional": False})
    assert "NEGATIVE: no degradation shown" in prose.degradation_verdict(row)


@pytest.mark.parametrize(("deep", "verdict"), [(8.0, "trains better, as in the paper"),
                                               (10.0, "trains as well, no degradation"),
                                               (12.0, "trains worse here, unlike the paper")])
def test_the_residual_verdict_tells_better_level_and_worse(deep: float, verdict: str) -> None:
    row = pd.Series({"arch": "residual", "shallow_depth": 18, "deep_depth": 34, "shallow_train": 10.0,
                     "deep_train": deep, "train_gap": deep - 10.0, "test_gap": 0.0, "provisional": False})
    assert verdict in prose.degradation_verdict(row)


def test_paper_numbers_only_where_they_apply() -> None:
    assert tables.paper_test_error("cifar10", "paper", "residual", 56, paper_setup=True) == 6.97
    assert math.isnan(tables.paper_test_error("cifar10", "paper", "plain", 56, paper_setup=True))
    assert math.isnan(tables.paper_test_error("cifar10", "quick", "residual", 56, paper_setup=True))
    assert math.isnan(tables.paper_test_error("cifar100", "paper", "residual", 56, paper_setup=True))
    assert math.isnan(tables.paper_test_error("CIFAR-100", "paper", "residual", 56, paper_setup=True))
    assert tables.paper_test_error("cifar10-jpg", "paper", "residual", 110, paper_setup=True) == 6.43
    assert math.isnan(tables.paper_test_error("cifar10", "paper", "residual", 56, paper_setup=False))


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_make_report_writes_figures_tables_and_readme(results: Path, tmp_path: Path) -> None:
    write_timing(results)
    out = tmp_path / "reports"
    written = report.make_report([results], out, formats=("png", "svg"), notify=lambda _: None)
    names = {p.relative_to(out).as_posix() for p in written}
    for stem in ("degradation", "figure1"):
        for fmt in ("png", "svg"):
            assert f"cifar10-quick/{stem}.{fmt}" in names
    for table in ("errors", "gaps", "degradation"):
        assert {f"cifar10-quick/{table}.csv", f"cifar10-quick/{table}.md"} <= names
    assert any(n.startswith("timing/") and n.endswith("speed.png") for n in names)
    for path in written:
        assert path.stat().st_size > 0
    for png in out.rglob("*.png"):
        assert png.stat().st_size > 20_000
        with Image.open(png) as image:
            width, height = image.size
        assert width > 1200 and 600 < height < width
    csv = pd.read_csv(out / "cifar10-quick" / "errors.csv")
    assert set(zip(csv["arch"], csv["depth"])) == {("plain", 20), ("plain", 56), ("residual", 20), ("residual", 56)}
    text = (out / "README.md").read_text()
    assert "![degradation](cifar10-quick/degradation.png)" in text
    assert NOTE in text and "abc123def456" in text and "degradation shown" in text


def test_timing_figure_plots_throughput_and_breakdown(tmp_path: Path) -> None:
    frame = write_timing(tmp_path)
    timing = timing_rows.read_timing([tmp_path])
    (setting, rows), = tables.timing_settings(timing)
    fig = timing_figure(rows, setting)
    lines = lines_by_gid(fig)
    for arch in ("plain", "residual", "torchvision"):
        expected = frame[(frame["arch"] == arch) & (frame["phase"] == "train_step")].sort_values("depth")
        np.testing.assert_allclose(lines[f"{arch}-train_step"].get_ydata(), expected["images_per_second"])
    backward = [p for p in fig.axes[1].patches if p.get_gid() == "plain-backward"]
    assert [p.get_height() for p in backward] == pytest.approx([1.8 * 18, 1.8 * 34])
    train_step = frame[(frame["arch"] == "plain") & (frame["phase"] == "train_step")].sort_values("depth")
    np.testing.assert_allclose(lines["plain-total"].get_ydata(), train_step["median_ms"])


def test_out_of_memory_rows_are_named_not_drawn(tmp_path: Path) -> None:
    write_timing(tmp_path, oom=True)
    (setting, rows), = tables.timing_settings(timing_rows.read_timing([tmp_path]))
    fig = timing_figure(rows, setting)
    caption = next(t.get_text() for t in fig.texts if t.get_gid() == "caption")
    assert "out of memory" in caption and "plain-152" in caption
    assert np.isnan(lines_by_gid(fig)["plain-train_step"].get_ydata()[-1])


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_merging_folders_equals_one_folder(tmp_path: Path) -> None:
    one, a, b = tmp_path / "one", tmp_path / "a", tmp_path / "b"
    write_grid(one)
    write_grid(a, seeds=(0,))
    for depth in (20, 56):
        for arch in ("plain", "residual"):
            write_run(b, arch, depth, 1)
    shutil.copytree(a / "cifar10", b / "cifar10", dirs_exist_ok=True)  # a copy of a's runs is not counted twice
    written = report.make_report([a, b], tmp_path / "merged", notify=lambda _: None)
    assert {p.name for p in written} >= {"degradation.png", "figure1.png", "errors.csv"}
    merged = pd.read_csv(tmp_path / "merged" / "cifar10-quick" / "errors.csv")
    epochs, runs, _ = report.load_results([one])
    assert len(runs) == 10 and merged["runs"].sum() == 10
    single = tables.error_table(epochs, runs)
    pd.testing.assert_frame_equal(merged.drop(columns="note"), single.drop(columns="note"), check_dtype=False)
    assert list(merged["note"].fillna("")) == list(single["note"])


def test_no_results_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match="bench run --depths 18 34"):
        report.make_report([tmp_path], tmp_path / "reports")
    with pytest.raises(BenchError, match="does not exist"):
        report.make_report([tmp_path / "missing"], tmp_path / "reports")


@pytest.mark.slow
def test_dataset_filter_and_format_are_checked(results: Path, tmp_path: Path) -> None:
    with pytest.raises(BenchError, match="choose one of cifar10"):
        report.make_report([results], tmp_path / "r", dataset="mnist")
    with pytest.raises(BenchError, match="choose from png, svg, pdf"):
        report.make_report([results], tmp_path / "r", formats=("gif",))
    written = report.make_report([results], tmp_path / "r", dataset="cifar10", formats=("pdf",), notify=lambda _: None)
    assert any(p.suffix == ".pdf" for p in written)


def test_other_settings_of_a_preset_are_not_averaged_together(results: Path, tmp_path: Path) -> None:
    config = dataclasses.replace(QUICK, arch="plain", depth=20, seed=0, epochs=EPOCHS_TOTAL, lr=0.2)
    assert QUICK.lr != 0.2
    directory = run_dir(results, "cifar10", config.run_id())
    source = run_dir(results, "cifar10", dataclasses.replace(config, lr=QUICK.lr).run_id())
    shutil.copytree(source, directory)
    meta = read_json(directory / CONFIG)
    write_json(directory / CONFIG, {**meta, "run_id": config.run_id(), "config": config.to_dict()})
    rows = pd.read_parquet(directory / EPOCHS).assign(run_id=config.run_id())  # a folder's rows are its own run's
    write_epochs(directory / EPOCHS, rows.to_dict("records"))
    _, runs, _ = report.load_results([results])
    names = [name for name, _ in report.experiments(runs)]
    assert names == [f"cifar10-quick-lr-{QUICK.lr:g}", "cifar10-quick-lr-0.2"]


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_schedule_lengths_get_a_figure_of_final_error_against_length(tmp_path):
    root = tmp_path / "results"
    for iterations in (1000, 4000):
        for arch in ("plain", "residual"):
            for depth in (20, 56):
                write_run(root, arch, depth, 0, iterations=iterations)
    write_run(root, "residual", 56, 0, iterations=8000, done=3, state="running")  # unfinished: not a point
    out = tmp_path / "reports"
    report.make_report([root], out, notify=lambda message: None)
    # Each length is its own experiment (a mean over seeds never mixes schedules) ...
    assert {p.name for p in out.iterdir() if p.is_dir()} >= {
        "cifar10-quick-iterations-1000", "cifar10-quick-iterations-4000", "cifar10-quick-iterations-8000",
        "cifar10-quick-schedules"}
    # ... and the finished lengths are drawn against each other, numbers read back from the run folders.
    table = pd.read_csv(out / "cifar10-quick-schedules" / "final-error-vs-schedule.csv")
    epochs, runs = report.read_results([root])
    last = epochs.sort_values("epoch").groupby("run_id").tail(1).merge(runs[["run_id", "iterations", "state"]])
    last = last[last["state"] == "finished"]
    expected = last.assign(final_train=100 * last["train_error"]).groupby(["arch", "depth", "iterations"])["final_train"].mean()
    got = table.set_index(["arch", "depth", "iterations"])["final_train"]
    assert sorted(table["iterations"].unique()) == [1000, 4000]
    assert got.to_dict() == pytest.approx(expected.to_dict())
    fig = schedule_plots.schedule_figure(tables.schedule_table(epochs, runs), runs[runs["state"] == "finished"])
    line = next(l for ax in fig.axes for l in ax.lines if l.get_gid() == "plain-56-final_train")
    assert list(line.get_xdata()) == [1000, 4000]
    assert list(line.get_ydata()) == pytest.approx([expected["plain", 56, 1000], expected["plain", 56, 4000]])
    readme = (out / "README.md").read_text()
    assert "## cifar10-quick-schedules" in readme and "training error at 4,000" in readme


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_precisions_share_one_schedule_figure_and_the_table_tells_them_apart(tmp_path):
    root = tmp_path / "results"
    for arch in ("plain", "residual"):
        for depth in (20, 56):
            write_run(root, arch, depth, 0, iterations=4000)
            write_run(root, arch, depth, 0, iterations=16000, precision="bf16")
    write_run(root, "residual", 20, 0, iterations=4000, precision="bf16")
    out = tmp_path / "reports"
    report.make_report([root], out, notify=lambda message: None)
    # Each precision's lengths are experiments of their own; the lengths across precisions are one figure.
    assert [p.name for p in out.iterdir() if p.name.endswith("-schedules")] == ["cifar10-quick-schedules"]
    table = pd.read_csv(out / "cifar10-quick-schedules" / "final-error-vs-schedule.csv")
    assert sorted(set(zip(table["iterations"], table["precision"]))) == [(4000, "bf16"), (4000, "fp32"),
                                                                          (16000, "bf16")]
    markdown = (out / "cifar10-quick-schedules" / "final-error-vs-schedule.md").read_text()
    header = markdown.splitlines()[0]
    assert header.index("training error at 4,000 (fp32)") < header.index("training error at 4,000 (bf16)") \
        < header.index("training error at 16,000 (bf16)")
    epochs, runs = report.read_results([root])
    fig = schedule_plots.schedule_figure(tables.schedule_table(epochs, runs), runs)
    lines = {l.get_gid(): l for ax in fig.axes for l in ax.lines}
    # The line joins the mean over both precisions at 4,000; each precision keeps its own points.
    both = table[(table["arch"] == "residual") & (table["depth"] == 20) & (table["iterations"] == 4000)]
    assert lines["residual-20-final_train"].get_ydata()[0] == pytest.approx(both["final_train"].mean())
    assert list(lines["residual-20-final_train-bf16"].get_xdata()) == [4000, 16000]
    assert "Precisions mixed" in next(t for t in fig.texts if t.get_gid() == "caption").get_text()


def _gap_runs(deep_minus_shallow: list[float], seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A residual-20 at 30% training error throughout and a residual-56 at 30% plus the given gaps (points), one
    epoch of 100 iterations each, the lr dropping tenfold at the second half: epochs and runs as read back."""
    rows = []
    for depth, gaps in ((20, [0.0] * len(deep_minus_shallow)), (56, deep_minus_shallow)):
        for epoch, gap in enumerate(gaps, 1):
            rows.append({"run_id": f"r{depth}-s{seed}", "arch": "residual", "depth": depth, "seed": seed,
                         "epoch": epoch, "iteration": 100 * epoch, "lr": 0.1 if epoch <= len(gaps) // 2 else 0.01,
                         "train_error": 0.30 + gap / 100, "test_error": 0.35, "train_loss": 1.0, "test_loss": 1.0,
                         "precision": "fp32"})
    runs = pd.DataFrame([{**QUICK.to_dict(), "run_id": f"r{depth}-s{seed}", "arch": "residual", "depth": depth,
                          "seed": seed, "state": "finished", "iterations": 100 * len(deep_minus_shallow),
                          "epochs": None}
                         for depth in (20, 56)])
    return pd.DataFrame(rows), runs


@pytest.mark.parametrize("gaps, first_below, below_from, lr", [
    ([5, 2, -0.5, 0.3, -0.2, -0.4], 300, 500, 0.01),  # dips, comes back, then stays below from the fifth epoch
    ([5, 2, -0.5, 0.3, 0.2, 0.1], 300, None, None),  # dips once, ends above: no crossing
    ([3, 2, 1, 0.5, 0.2, 0.0], None, None, None),  # a tie is not below
    ([-1, -2, -3, -1], 100, 100, 0.1),  # below from the first epoch
])
def test_a_crossing_is_where_the_deeper_net_stays_below_to_the_end(gaps, first_below, below_from, lr):
    epochs, runs = _gap_runs(gaps)
    gap_curve = tables.training_gaps(epochs, runs)
    assert gap_curve["gap"].to_numpy() == pytest.approx(gaps)
    crossed = tables.crossings(gap_curve)
    (row,) = crossed.itertuples()
    assert (row.shallow, row.deep, row.final_gap) == (20, 56, pytest.approx(gaps[-1]))
    for got, want in ((row.first_below, first_below), (row.below_from, below_from), (row.lr_then, lr)):
        assert (math.isnan(got) if want is None else got == pytest.approx(want))
    fig = schedule_plots.crossing_figure(gap_curve, crossed, runs)
    lines = {line.get_gid(): line for ax in fig.axes for line in ax.lines}
    assert list(lines[f"residual-56-20-{100 * len(gaps)}-fp32-s0"].get_ydata()) == pytest.approx(gaps)
    dots = [line for gid, line in lines.items() if gid and gid.endswith("-crossing")]
    assert [list(dot.get_xdata()) for dot in dots] == ([[below_from]] if below_from else [])
    words = "\n".join(markdown_tables.crossing_lines(crossed))
    assert ("crosses;" in words) == (below_from is not None)
    # A final gap within the noise floor (one seed) is a tie, never "ends below".
    assert ("ends below residual-20, beyond the noise, in none" in words) == (gaps[-1] > -NOISE_FLOOR)
    assert ("a tie" in words) == (abs(gaps[-1]) < NOISE_FLOOR)


def test_the_crossing_over_seeds_gives_the_mean_spread_and_how_many_seeds_cross():
    seeds = {0: [5, 2, -0.5, 0.3, -0.2, -0.4], 1: [5, 2, -1, -1, -1, -1.6], 2: [5, 2, 1, 0.5, 0.2, 0.1]}
    parts = [_gap_runs(gaps, seed) for seed, gaps in seeds.items()]
    epochs, runs = (pd.concat(frames, ignore_index=True) for frames in zip(*parts))
    crossed = tables.crossings(tables.training_gaps(epochs, runs))
    assert list(crossed["below_from"].fillna(0)) == [500, 300, 0]
    words = markdown_tables.crossing_lines(crossed)
    finals = [-0.4, -1.6, 0.1]
    assert words[-1] == (f"    - 600 iterations (fp32) over 3 seeds: final gap {np.mean(finals):.2f} ± "
                         f"{np.std(finals, ddof=1):.2f} points (-1.60 to +0.10); residual-56 crosses in 2 of 3; "
                         f"below from iteration 400 ± 141.")
    # One seed per schedule: nothing over seeds to say.
    assert not any("over" in line for line in markdown_tables.crossing_lines(crossed[crossed["seed"] == 0]))


@pytest.mark.slow
def test_every_arch_at_a_depth_three_archs_share_is_one_figure(tmp_path):
    root = tmp_path / "results"
    for arch in ("plain", "residual", "dirac"):
        for seed in (0, 1):
            write_run(root, arch, 56, seed)
    for arch in ("plain", "residual"):
        write_run(root, arch, 20, 0)
    epochs, runs = report.read_results([root])
    fig = plots.depth_figure(epochs, runs, 56)
    lines = {line.get_gid(): line for ax in fig.axes for line in ax.lines}
    archs = ("plain", "residual", "dirac")
    assert sorted(gid for gid in lines if gid) == sorted(f"{a}-56-{kind}" for a in archs for kind in ("train", "test"))
    for arch in archs:
        mine = epochs[(epochs["arch"] == arch) & (epochs["depth"] == 56)]
        assert list(lines[f"{arch}-56-train"].get_ydata()) == pytest.approx(
            list(mine.groupby("epoch")["train_error"].mean() * 100))
    out = tmp_path / "reports"
    report.make_report([root], out, notify=lambda message: None)
    assert [p.name for p in out.rglob("archs-*.png")] == ["archs-56.png"]  # 20 layers has two archs only
    assert "### Every arch at 56 layers" in (out / "README.md").read_text()


def test_how_a_run_executes_never_splits_an_experiment():
    base = {**QUICK.to_dict(), "dataset": "cifar10", "arch": "plain", "depth": 20, "seed": 0, "family": "cifar"}
    runs = pd.DataFrame([{**base, "run_id": "eager"}, {**base, "compile": True, "run_id": "compiled"},
                         {**base, "cuda_graph": True, "run_id": "graphed"}])
    assert [(name, sorted(group["run_id"])) for name, group in report.experiments(runs)] == [
        ("cifar10-quick", ["compiled", "eager", "graphed"])]


def test_the_schedule_line_says_when_a_run_did_not_augment():
    runs = pd.DataFrame([{**QUICK.to_dict(), "width": 8}])
    assert "no augmentation" not in prose.schedule_text(runs.assign(augment=True))
    assert "no augmentation" in prose.schedule_text(runs.assign(augment=False))


def _drawn(fig) -> None:
    """Lay the figure out as saving it would, so that extents can be compared."""
    FigureCanvasAgg(fig).draw()


@pytest.mark.slow
def test_legends_sit_below_their_panels_and_cover_no_line(results: Path) -> None:
    epochs, runs, _ = report.load_results([results])
    for fig in (degradation_figure(epochs, runs), figure1(epochs, runs), plots.depth_figure(epochs, runs, 56)):
        _drawn(fig)
        legends = [ax for ax in fig.axes if ax.get_legend()]
        assert legends
        for ax in legends:
            assert ax.get_legend().get_window_extent().y1 <= ax.get_window_extent().y0 + 1


@pytest.mark.slow
def test_no_axis_cuts_off_a_point_and_one_name_per_net(results: Path) -> None:
    epochs, runs, _ = report.load_results([results])
    for fig in (degradation_figure(epochs, runs), figure1(epochs, runs)):
        for ax in fig.axes:
            low, high = ax.get_ylim()
            for line in ax.get_lines():
                values = np.asarray(line.get_ydata(), dtype=float)
                assert np.all(values[np.isfinite(values)] <= high) and np.all(values[np.isfinite(values)] >= low)
        texts = [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
        assert texts and not any("ResNet" in text for text in texts)


@pytest.mark.slow
def test_a_curve_ends_on_the_pooled_final_error_the_tables_give(tmp_path: Path) -> None:
    # A schedule of 4,000 iterations ends on a short epoch of 100 iterations: its own error is a few batches.
    rows = []
    for depth, last in ((20, 0.40), (56, 0.10)):
        for epoch, (iteration, error) in enumerate(zip([390 * e for e in range(1, 11)] + [4000],
                                                       [0.5] * 9 + [0.2, last]), start=1):
            rows.append({"run_id": f"r{depth}", "arch": "residual", "depth": depth, "seed": 0, "epoch": epoch,
                         "iteration": iteration, "lr": 0.1, "train_error": error, "test_error": 0.3,
                         "train_loss": 1.0, "test_loss": 1.0})
    epochs = pd.DataFrame(rows)
    runs = pd.DataFrame([{**QUICK.to_dict(), "run_id": f"r{d}", "arch": "residual", "depth": d, "seed": 0,
                          "state": "finished", "epochs_done": 11, "epochs_total": 11, "diverged_epoch": None,
                          "iterations": 4000, "epochs": None, "dataset": "cifar10", "family": "cifar",
                          "augment": True, "params": 1000 * d} for d in (20, 56)])
    finals = tables.final_errors(epochs, runs).set_index("depth")["final_train"]
    assert finals[20] == pytest.approx(100 * (390 * 0.2 + 100 * 0.40) / 490)
    lines = lines_by_gid(degradation_figure(epochs, runs))
    for depth in (20, 56):
        assert lines[f"residual-{depth}-train"].get_ydata()[-1] == pytest.approx(finals[depth])
    # The gap panel draws the deeper net minus the shallower, ending on the tables' final gap.
    gap = lines["residual-56-20-gap"].get_ydata()
    assert gap[-1] == pytest.approx(finals[56] - finals[20]) and gap[0] == pytest.approx(0.0)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_figure_of_every_arch_wraps_to_page_width(tmp_path: Path) -> None:
    root = tmp_path / "results"
    for arch in ("plain", "residual", "preact", "zero-init", "dirac"):
        write_run(root, arch, 56, 0)
    for arch in ("plain", "residual"):
        write_run(root, arch, 20, 0)
    out = tmp_path / "reports"
    report.make_report([root], out, notify=lambda message: None)
    for png in out.rglob("*.png"):
        with Image.open(png) as image:
            assert image.size[0] <= 2000, png.name
    epochs, runs = report.read_results([root])
    fig = degradation_figure(epochs, runs)
    titles = [ax.get_title() for ax in fig.axes]
    assert len(titles) == 6 and titles[-1] == "training error, deeper minus shallower"
    assert len({round(ax.get_position().y0, 3) for ax in fig.axes}) == 2  # two rows of three


@pytest.mark.slow
def test_a_schedule_line_never_runs_through_a_length_not_run(tmp_path: Path) -> None:
    root = tmp_path / "results"
    for iterations in (1000, 2000, 4000):
        write_run(root, "residual", 20, 0, iterations=iterations)
    for iterations in (1000, 4000):  # plain-20 was never run at 2,000
        write_run(root, "plain", 20, 0, iterations=iterations)
    write_run(root, "dirac", 20, 0, iterations=1000)  # one length only: in the table, not drawn
    epochs, runs = report.read_results([root])
    table = tables.schedule_table(epochs, runs)
    fig = schedule_plots.schedule_figure(table, runs)
    lines = lines_by_gid(fig)
    y = lines["plain-20-final_train"].get_ydata()
    assert list(lines["plain-20-final_train"].get_xdata()) == [1000, 2000, 4000] and np.isnan(y[1])
    assert not any(gid.startswith("dirac") for gid in lines)
    assert "dirac-20" in next(t.get_text() for t in fig.texts if t.get_gid() == "caption")
    legend = fig.axes[1].get_legend()
    markers = {h.get_label(): h.get_marker() for h in legend.legend_handles}
    assert markers == {"plain-20": "s", "residual-20": "o"}
    _drawn(fig)
    assert legend.get_window_extent().y1 <= fig.axes[1].get_window_extent().y0 + 1


@pytest.mark.slow
def test_the_input_size_and_optimizer_are_named_and_split_experiments(tmp_path: Path) -> None:
    root = tmp_path / "results"
    for arch in ("plain", "residual"):
        write_run(root, arch, 20, 0)
        write_run(root, arch, 20, 0, input_size=224, optimizer="adam", lr=1e-3, momentum=0.0)
    out = tmp_path / "reports"
    report.make_report([root], out, formats=("png",), notify=lambda _: None)
    readme = (out / "README.md").read_text()
    assert "32x32 inputs;" not in readme  # named once per experiment, in its data line
    assert "- Data: cifar10 (" in readme and "; 32x32 inputs" in readme
    assert "; 224x224 inputs (stored 32x32, resized on the device)" in readme
    assert "adam lr 0.001" in readme
    folders = {path.name for path in out.iterdir() if path.is_dir()}
    assert {"cifar10-quick-input-size-224-optimizer-adam-lr-0.001-momentum-0.0",
            "cifar10-quick-input-size-None-optimizer-sgd-lr-0.1-momentum-0.9"} <= folders, folders
