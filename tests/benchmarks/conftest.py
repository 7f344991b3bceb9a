"""pytest-benchmark set-up for the throughput suite: run length, machine fingerprint, units.

    pytest                                   every benchmark runs a few rounds, so none of them rots
    pytest tests/benchmarks --benchmark-only --benchmark-autosave -p no:xdist
                                             the full run, saved under .benchmarks/
    pytest tests/benchmarks --benchmark-only -p no:xdist --benchmark-compare --benchmark-compare-fail=median:15%
                                             the full run, failed if any median is 15% above the last saved one

See docs/benchmarks.md.
"""

from __future__ import annotations

import json
import os

import pytest

from bench.core.provenance import environment

from .harness import ACROSS_MACHINES_ENV, baseline_problem, fingerprint, machine_differences

FULL_RUN_OPTIONS = ("benchmark_only", "benchmark_save", "benchmark_autosave", "benchmark_compare", "benchmark_json")


@pytest.fixture(scope="session")
def full_run(request: pytest.FixtureRequest) -> bool:
    """True when benchmarks are run to be saved or compared, False in the ordinary test run."""
    return any(request.config.getoption(name, None) for name in FULL_RUN_OPTIONS)


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    """Save what the times depend on with every run: the fingerprint compared below, and the rest."""
    machine_info["resnet_bench"] = now = fingerprint()
    # The commit is in pytest-benchmark's commit_info, and the thread count that matters is the
    # fingerprint's: leaving them out keeps machine_info equal across commits on one machine.
    details = environment("cuda" if now["gpu"] else "cpu")
    machine_info["resnet_bench_environment"] = {k: v for k, v in details.items() if k not in ("git_commit", "threads")}


def pytest_benchmark_compare_machine_info(config: pytest.Config, benchmarksession, machine_info: dict,
                                          compared_benchmark: dict) -> None:
    """Refuse a saved run the gate cannot compare against (baseline_problem), naming its file; refuse to
    compare against a run from another machine, unless asked to, and then say so."""
    if (problem := baseline_problem(compared_benchmark)) is not None:
        raise pytest.UsageError(f"{_saved_path(benchmarksession, compared_benchmark)}: {problem}, so no comparison "
                                "against it means anything: delete it and save a baseline again (--benchmark-autosave)")
    differences = machine_differences(machine_info["resnet_bench"],
                                      compared_benchmark["machine_info"].get("resnet_bench"))
    if not differences:
        return
    message = (f"the saved benchmark run was made on a different machine ({'; '.join(differences)}), "
               "so a comparison says little about the code")
    if os.environ.get(ACROSS_MACHINES_ENV) == "1":
        benchmarksession.logger.warning(f"{message}; comparing anyway because {ACROSS_MACHINES_ENV}=1")
    else:
        raise pytest.UsageError(f"{message}: save a baseline on this machine first, or set "
                                f"{ACROSS_MACHINES_ENV}=1 to compare anyway")


def _saved_path(benchmarksession, compared: dict) -> str:
    """The file `compared` was loaded from (pytest-benchmark's hook is not told): the stored run that dumps the
    same, NaN included."""
    text = json.dumps(compared, sort_keys=True)
    for path, data in benchmarksession.storage.load():
        if json.dumps(data, sort_keys=True) == text:
            return str(path)
    return "the saved benchmark run"


def pytest_benchmark_scale_unit(config, unit, benchmarks, best, worst, sort):
    """Label the suite's times as what they are: multiples of the reference workload, not seconds."""
    if unit == "seconds" and all(b["options"].get("timer") == "reference_clock" for b in benchmarks):
        return "reference unit", 1.0
    return None
