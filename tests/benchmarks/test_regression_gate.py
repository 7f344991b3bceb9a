"""The documented workflow works: save a baseline, and a slower tree or another machine fails the comparison."""

from __future__ import annotations

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


def bench(workdir: Path, *options: str, slowdown: str | None = None) -> subprocess.CompletedProcess:
    """Run the throughput suite's selected benchmark in a fresh pytest, as a user would.

    It runs in `workdir`, so runs are saved under workdir/.benchmarks: pytest-benchmark cannot report
    on a storage folder outside the working directory.
    """
    env = {k: v for k, v in os.environ.items() if k not in (SLOWDOWN_ENV, ACROSS_MACHINES_ENV)}
    if slowdown is not None:
        env[SLOWDOWN_ENV] = slowdown
    command = [sys.executable, "-m", "pytest", str(ROOT / "tests/benchmarks/test_throughput.py"),
               f"--rootdir={ROOT}", "-c", str(ROOT / "pyproject.toml"), "-k", SELECT,
               "-p", "no:xdist", "-p", "no:cacheprovider", "-q", "--benchmark-only", *options]
    return subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_a_slowdown_fails_the_comparison_and_another_machine_is_refused(tmp_path: Path) -> None:
    baseline = bench(tmp_path, "--benchmark-autosave")
    assert baseline.returncode == 0, baseline.stdout + baseline.stderr
    [saved] = tmp_path.glob(".benchmarks/*/0001_*.json")
    assert json.loads(saved.read_text())["machine_info"]["resnet_bench"] == fingerprint()

    # Three times slower: clear of the 15% gate and of the baseline's own noise, whose median was seen 40% high
    # on a 2-core CI run (a 50% slowdown then compared only 10% slower).
    slowed = bench(tmp_path, "--benchmark-compare", "--benchmark-compare-fail=median:15%", slowdown="2")
    output = slowed.stdout + slowed.stderr
    assert slowed.returncode != 0, output
    assert "Performance has regressed" in output and "residual-18-w8-32px-b8-cpu-forward" in output

    data = json.loads(saved.read_text())
    data["machine_info"]["resnet_bench"]["cpu"] = "Some Other CPU"
    saved.write_text(json.dumps(data))
    other = bench(tmp_path, "--benchmark-compare", "--benchmark-compare-fail=median:15%")
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
