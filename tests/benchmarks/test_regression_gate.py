"""The documented workflow works: save a baseline, and a slower tree fails the comparison, a faster one passes it,
and a baseline from another machine is refused."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .harness import ACROSS_MACHINES_ENV, SLOWDOWN_ENV, baseline_problem, fingerprint, machine_differences

ROOT = Path(__file__).resolve().parents[2]
# One small benchmark is enough to show the gate works; the full suite would take a minute.
SELECT = "residual-18-w8 and forward"


def bench(workdir: Path, *options: str) -> subprocess.CompletedProcess:
    """Run the throughput suite's selected benchmark in a fresh pytest, as a user would.

    It runs in `workdir`, so runs are saved under workdir/.benchmarks: pytest-benchmark cannot report
    on a storage folder outside the working directory.
    """
    env = {k: v for k, v in os.environ.items() if k not in (SLOWDOWN_ENV, ACROSS_MACHINES_ENV)}
    command = [sys.executable, "-m", "pytest", str(ROOT / "tests/benchmarks/test_throughput.py"),
               f"--rootdir={ROOT}", "-c", str(ROOT / "pyproject.toml"), "-k", SELECT,
               "-p", "no:xdist", "-p", "no:cacheprovider", "-q", "--benchmark-only", *options]
    return subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=300)


# How far the test moves a measured baseline, each way: far beyond the noise between two runs of one machine (medians
# were seen 40% apart on a 2-core CI runner), so the gate's verdict cannot depend on the machine's load.
SCALE = 10
# The stats of a saved benchmark that are times; `ops` is their inverse.
TIME_STATS = ("min", "max", "mean", "stddev", "median", "iqr", "q1", "q3", "ld15iqr", "hd15iqr", "total")


def scaled(saved: dict, factor: float) -> dict:
    """A saved benchmark run as if every call had taken `factor` times as long."""
    run = copy.deepcopy(saved)
    for benchmark in run["benchmarks"]:
        stats = benchmark["stats"]
        for stat in TIME_STATS:
            stats[stat] *= factor
        stats["ops"] /= factor
    return run


@pytest.mark.slow
@pytest.mark.timeout(800)
def test_the_gate_fails_a_slower_tree_passes_a_faster_one_and_refuses_another_machine(tmp_path: Path) -> None:
    baseline = bench(tmp_path, "--benchmark-autosave")
    assert baseline.returncode == 0, baseline.stdout + baseline.stderr
    [saved] = tmp_path.glob(".benchmarks/*/0001_*.json")
    measured = json.loads(saved.read_text())
    assert measured["machine_info"]["resnet_bench"] == fingerprint()
    gate = "--benchmark-compare-fail=median:15%"

    # The measured baseline, saved again as if it had been SCALE times faster: this tree is then far slower.
    (saved.parent / "0002_faster.json").write_text(json.dumps(scaled(measured, 1 / SCALE)))
    slower = bench(tmp_path, "--benchmark-compare=0002", gate)
    output = slower.stdout + slower.stderr
    assert slower.returncode == 1, output
    assert "Performance has regressed" in output and "residual-18-w8-32px-b8-cpu-forward" in output

    # And as if it had been SCALE times slower: the same tree, now far faster, passes.
    (saved.parent / "0003_slower.json").write_text(json.dumps(scaled(measured, SCALE)))
    faster = bench(tmp_path, "--benchmark-compare=0003", gate)
    output = faster.stdout + faster.stderr
    assert faster.returncode == 0 and "Performance has regressed" not in output, output

    # Another machine's baseline is refused before any comparison: with numbers the tree would pass.
    measured["machine_info"]["resnet_bench"]["cpu"] = "Some Other CPU"
    saved.write_text(json.dumps(scaled(measured, SCALE)))
    other = bench(tmp_path, "--benchmark-compare=0001", gate)
    assert other.returncode == pytest.ExitCode.USAGE_ERROR, other.stdout + other.stderr
    assert "different machine" in other.stderr and "Some Other CPU" in other.stderr


def test_machine_differences_name_what_changed() -> None:
    now = fingerprint()
    assert machine_differences(now, dict(now)) == []
    changed = machine_differences(now, {**now, "threads": 64, "torch": "2.0.0"})
    assert len(changed) == 2 and changed[0].startswith("threads: 64 -> ")
    assert machine_differences(now, None) == ["the saved run has no resnet_bench machine fingerprint"]


def _saved_run(median: object = 1.5) -> dict:
    """A saved run as pytest-benchmark writes it, cut to what the gate reads."""
    stats = {"min": 1.0, "max": 2.0, "mean": 1.5, "stddev": 0.1, "median": median, "iqr": 0.2}
    return {"machine_info": {"resnet_bench": fingerprint()},
            "benchmarks": [{"fullname": "tests/benchmarks/test_throughput.py::test_x", "stats": stats}]}


BASELINE_DAMAGES = {
    "a NaN median": (lambda run: run["benchmarks"][0]["stats"].update(median=float("nan")), "median is nan"),
    "a median that is text": (lambda run: run["benchmarks"][0]["stats"].update(median="1.5"), "median is '1.5'"),
    "no median": (lambda run: run["benchmarks"][0]["stats"].pop("median"), "median is None"),
    "no stats": (lambda run: run["benchmarks"][0].pop("stats"), "no fullname or stats"),
    "a fingerprint that is a list": (lambda run: run["machine_info"].update(resnet_bench=["x"]), "not a mapping"),
    "a fingerprint without its cpu": (lambda run: run["machine_info"]["resnet_bench"].pop("cpu"), "no plain 'cpu'"),
    "a fingerprint cpu that is a dict": (lambda run: run["machine_info"]["resnet_bench"].update(cpu={}),
                                         "no plain 'cpu'"),
}


def test_a_baseline_the_gate_can_compare_has_no_problem() -> None:
    assert baseline_problem(_saved_run()) is None


@pytest.mark.parametrize("damage", list(BASELINE_DAMAGES))
def test_a_baseline_the_gate_cannot_compare_is_named(damage: str) -> None:
    run = _saved_run()
    change, said = BASELINE_DAMAGES[damage]
    change(run)
    problem = baseline_problem(run)
    assert problem is not None and said in problem


@pytest.mark.timeout(600)
@pytest.mark.slow
def test_the_gate_refuses_a_baseline_it_cannot_compare_in_one_line_naming_the_file(tmp_path: Path) -> None:
    baseline = bench(tmp_path, "--benchmark-autosave")
    assert baseline.returncode == 0, baseline.stdout + baseline.stderr
    [saved] = tmp_path.glob(".benchmarks/*/0001_*.json")
    good = saved.read_text()
    for change, said in (BASELINE_DAMAGES["a NaN median"], BASELINE_DAMAGES["a fingerprint that is a list"]):
        data = json.loads(good)
        change(data)
        saved.write_text(json.dumps(data))  # NaN as pytest-benchmark's json writes it
        compared = bench(tmp_path, "--benchmark-compare", "--benchmark-compare-fail=median:15%")
        assert compared.returncode != 0, compared.stdout + compared.stderr
        assert "Traceback" not in compared.stderr and "AttributeError" not in compared.stderr
        [line] = [line for line in compared.stderr.splitlines() if saved.name in line]  # as pytest-benchmark names it
        assert said in line and "save a baseline again" in line
