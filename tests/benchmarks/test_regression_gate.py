"""The documented workflow works: save a baseline, and a slower tree or another machine fails the comparison."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .harness import ACROSS_MACHINES_ENV, SLOWDOWN_ENV, fingerprint, machine_differences

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

    # 50% slower, well clear of the 15% gate and of the few per cent the normalised figure moves by.
    slowed = bench(tmp_path, "--benchmark-compare", "--benchmark-compare-fail=median:15%", slowdown="0.5")
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
