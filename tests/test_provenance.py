"""bench.core.provenance on a CPU run: nothing asks cuDNN or CUDA (asking loads cuDNN's libraries, which aborted a
run under `ulimit -v`); and a memory limit met while a run starts is one line, exit 2, then a resume."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.core.provenance import environment
from bench.results import store
from tests.conftest import TINY_GRID

ROOT = Path(__file__).resolve().parents[1]

# Runs `bench` in a fresh process (argv after the code), then prints the cuDNN and CUDA driver libraries that
# process mapped. With LIMIT_MIB set, it first limits its address space to what it holds after importing
# bench and torch plus that many MiB: `ulimit -v` at a size this machine's own imports decide.
_CHILD = """
import os, resource, sys
from bench.cli import app, expand_lists
if os.environ.get("LIMIT_MIB"):
    size = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize")) * 1024
    limit = size + int(os.environ["LIMIT_MIB"]) * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
try:
    app(expand_lists(sys.argv[1:]), prog_name="bench")
except SystemExit as stop:
    code = stop.code or 0
libraries = sorted({line.split()[-1].rsplit("/", 1)[-1] for line in open("/proc/self/maps")
                    if "libcudnn" in line or "libcuda." in line})
print("mapped:", " ".join(libraries))
sys.exit(code)
"""


def _bench_child(*args: str, limit_mib: int | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    if limit_mib is not None:
        env["LIMIT_MIB"] = str(limit_mib)
    return subprocess.run([sys.executable, "-c", _CHILD, *args], env=env, capture_output=True, text=True,
                          timeout=300)


def test_a_cpu_environment_records_no_cudnn_or_cuda_device():
    recorded = environment("cpu")
    assert recorded["cudnn"] is None and recorded["cuda_device"] is None and recorded["device"] == "cpu"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_cpu_run_loads_none_of_cudnns_libraries(tmp_path, data_dir):
    """torch maps the cuDNN loader (libcudnn.so) at import; asking its version loads libcudnn_graph, whose
    mapping is what failed under the memory limit."""
    ran = _bench_child("run", *TINY_GRID, "--arch", "plain", "--data-dir", str(data_dir),
                       "--results", str(tmp_path / "results"))
    assert ran.returncode == 0, ran.stderr[-2000:]
    [mapped] = [line for line in ran.stdout.splitlines() if line.startswith("mapped:")]
    assert "libcudnn_graph" not in mapped and "libcuda." not in mapped, mapped
    [folder] = (tmp_path / "results").glob("synthetic/plain-8-*")
    assert store.read_config(folder)["environment"]["cudnn"] is None


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_memory_limit_while_a_run_starts_is_one_line_and_the_same_command_resumes(tmp_path):
    args = ["run", *TINY_GRID, "--arch", "plain", "--data-dir", str(tmp_path / "data"),
            "--results", str(tmp_path / "results")]
    # 32 MiB: less than the offline set's 20,000 images (60 MiB as uint8) take while they are drawn.
    limited = _bench_child(*args, limit_mib=32)
    assert limited.returncode == 2, limited.stdout + limited.stderr[-3000:]
    assert "Traceback" not in limited.stderr
    last = limited.stderr.strip().splitlines()[-1]
    assert last.startswith("error: out of host memory") and "ulimit -v" in last, limited.stderr
    resumed = _bench_child(*args)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    [folder] = (tmp_path / "results").glob("synthetic/plain-8-*")
    assert store.run_state(folder) == store.FINISHED
