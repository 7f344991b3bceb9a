"""Where a number came from: versions, device, commit. Saved with every result and drawn on every figure."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import torch


def numerics() -> dict[str, bool]:
    """The global math settings in force, as results record them (config.json, bench time's rows)."""
    return {"cudnn_benchmark": torch.backends.cudnn.benchmark,
            "allow_tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "allow_tf32_cudnn": torch.backends.cudnn.allow_tf32}


def utc_now() -> str:
    """The current UTC time as an ISO-8601 string with a trailing Z."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    """Short commit of the checkout this package runs from (with '-dirty' for local changes), if any."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}-dirty" if dirty else sha or None


def cpu_name() -> str:
    """The CPU model name, as /proc/cpuinfo or the platform module gives it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# The instruction sets torch's CPU kernels choose between (oneDNN, the vectorised ATen ops): two CPUs with one
# model name ("AMD EPYC") can differ in them, and did: Zen 4 and Zen 5 trained the reference 1.6x apart.
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")


@lru_cache(maxsize=1)
def _cpuinfo() -> dict[str, str] | None:
    """The first processor's fields in /proc/cpuinfo (it says them for all), or None where there is none."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def cpu_flags() -> frozenset[str] | None:
    """Which of `CPU_FLAGS` this CPU has, or None where /proc/cpuinfo does not say."""
    fields = _cpuinfo()
    return None if fields is None else frozenset(CPU_FLAGS).intersection(fields.get("flags", "").split())


def cpu_model() -> tuple[str, str, str] | None:
    """(vendor, family, model) from /proc/cpuinfo, e.g. ('AuthenticAMD', '25', '1'): which CPU a measured
    default belongs to. None where there is no /proc/cpuinfo."""
    fields = _cpuinfo()
    if fields is None:
        return None
    return fields.get("vendor_id", "?"), fields.get("cpu family", "?"), fields.get("model", "?")


def cpu_id() -> str | None:
    """Which CPU exactly: vendor, family and model from /proc/cpuinfo, and which of `CPU_FLAGS` it has, e.g.
    'AuthenticAMD family 26 model 2; avx2 fma avx512f avx512_vnni avx512_bf16'. None where there is no
    /proc/cpuinfo."""
    model, flags = cpu_model(), cpu_flags()
    if model is None or flags is None:
        return None
    which = "{} family {} model {}".format(*model)
    return f"{which}; " + (" ".join(f for f in CPU_FLAGS if f in flags) or "none of " + " ".join(CPU_FLAGS))


def device_name(device: torch.device | str) -> str:
    """A human name for a device: the GPU model for CUDA, the CPU model otherwise."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def environment(device: torch.device | str = "cpu") -> dict[str, object]:
    """Everything about the machine and software that a result depends on."""
    device = torch.device(device)
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "numpy": _version("numpy"),
        "pandas": _version("pandas"),
        "resnet_bench": _version("resnet-bench"),
        "cuda": torch.version.cuda,
        # Asked on a GPU run only: on a CPU it would load cuDNN, which aborts the process under ulimit -v.
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "device": device.type,
        "device_name": device_name(device),
        # The GPU current while it ran (bench.run.step.device_settings makes cuda:N so): N, or None on the CPU.
        "cuda_device": torch.cuda.current_device() if device.type == "cuda" else None,
        "cpu": cpu_name(),
        "cpu_id": cpu_id(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "git_commit": git_commit(),
        **numerics(),  # cudnn autotuning and TF32: what "fp32" meant on a GPU
    }
