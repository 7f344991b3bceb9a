"""Finding a dataset: what a `--dataset` name means on this machine, pinned once as a DataSource.

`resolve_dataset` turns a name into the dataset that will really be used and where it lies: a CIFAR copy in
the data folder (any form bench.data.decoding reads), an ImageFolder, the offline synthetic set, or CIFAR to be
downloaded when the internet is reachable (a 3 s connect test). `bench run` resolves once, in its plan,
and hands the DataSource to `bench.data.data.load_dataset`, which loads it without resolving again. The helpers
keep their leading underscore: bench.data.data's and bench.data.decoding's, not an API of their own.
"""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlparse

from torchvision.datasets import CIFAR10, CIFAR100

from bench.core.errors import BenchError

DATASETS = ("auto", "cifar10", "cifar100", "imagefolder", "synthetic")

REACH_TIMEOUT_S = 3.0  # an offline machine (CI) must fall back quickly, not hang on a download

_CIFAR = {"cifar10": CIFAR10, "cifar100": CIFAR100}

_CIFAR_TITLE = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}

_CIFAR_FOLDERS = {"cifar10": ("cifar10-jpg", "cifar10"), "cifar100": ("cifar100-jpg", "cifar100")}

class DataSource(NamedTuple):
    """A dataset pinned to what will really be used: its name ('auto' resolved, imagefolder names as
    'imagefolder:<folder name>'), the path to load it from (the dataset's own folder or archive when it is
    on disk, else the data folder it is downloaded into, or caches the synthetic set in) and a sentence for
    the user when the choice is not the obvious one (None otherwise). A tuple, so it unpacks as one."""

    name: str
    path: Path
    notice: str | None


def default_data_dir() -> Path:
    """$BENCH_DATA if set, else data/ under the current directory."""
    return Path(os.environ.get("BENCH_DATA") or "data")

@lru_cache(maxsize=None)
def _reachable(host: str, port: int = 443, timeout: float = REACH_TIMEOUT_S) -> bool:
    """Whether a TCP connection to host:port opens within `timeout` seconds (asked once per process)."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False

def _download_host(name: str) -> str:
    return urlparse(_CIFAR[name].url).hostname or ""

def _is_imagefolder(path: Path) -> bool:
    return (path / "train").is_dir() and ((path / "test").is_dir() or (path / "val").is_dir())

def _is_cifar_copy(name: str, path: Path) -> bool:
    """Whether `path` itself holds cifar10/cifar100 in a form this module reads."""
    cls = _CIFAR[name]
    if path.name == cls.filename:
        return path.is_file()
    if path.name == cls.base_folder:
        return path.is_dir()
    return path.name in _CIFAR_FOLDERS[name] and _is_imagefolder(path)

def _find_cifar(name: str, data_dir: Path) -> Path | None:
    """The CIFAR copy in `data_dir`, or `data_dir` itself when it is one; decoded forms first.

    Also looks one level down in cifar10/ (cifar100/), where torchvision's own `root=data/cifar10` puts it.
    """
    if _is_cifar_copy(name, data_dir) or _is_imagefolder(data_dir):
        return data_dir
    cls = _CIFAR[name]
    candidates = [data_dir / folder for folder in _CIFAR_FOLDERS[name]]
    for parent in (data_dir, data_dir / _CIFAR_FOLDERS[name][1]):
        candidates += [parent / cls.base_folder, parent / cls.filename]
    return next((path for path in candidates if _is_cifar_copy(name, path)), None)

def _imagefolder_root(name: str, data_dir: Path) -> Path:
    """The folder `imagefolder[:<path>]` names: data_dir itself, or <path> (as given, or under data_dir)."""
    _, _, given = name.partition(":")
    if not given or (_is_imagefolder(data_dir) and data_dir.resolve().name == Path(given).name):
        root = data_dir  # plain 'imagefolder', or the (name, path) pair resolve_dataset returned
    else:
        root = Path(given).expanduser()
        if not root.is_dir() and not root.is_absolute():
            root = data_dir / given
    if not root.is_dir():
        raise BenchError(f"image folder {root} does not exist: give --dataset imagefolder:<folder with train/ "
                         f"and test/> or point --data-dir at it")
    if not (root / "train").is_dir():
        raise BenchError(f"{root} has no train/ folder: an image folder needs train/<class>/* and test/<class>/*")
    if not _is_imagefolder(root):
        raise BenchError(f"{root} has train/ but no test/ (or val/) folder: add the test split as test/<class>/*")
    return root

def _canonical(name: str) -> str:
    name = name.strip()
    base = name.partition(":")[0].lower()
    if base not in DATASETS or (":" in name and base != "imagefolder"):
        raise BenchError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}, or imagefolder:<path>")
    return name if base == "imagefolder" else base

def resolve_dataset(name: str, data_dir: Path | None = None) -> DataSource:
    """Pin a dataset name to what will really be used: a DataSource (name, path, notice).

    'auto' becomes 'cifar10' when CIFAR-10 is under `data_dir` or downloadable (a 3 s connect test decides),
    else 'synthetic'; imagefolder names become 'imagefolder:<folder name>'. `path` is the dataset's own
    folder or archive when it is on disk, else the data folder (it is downloaded into, or caches the
    synthetic set in). `notice` is a sentence for the user (printed loudly by the CLI) when the choice is
    not the obvious one, else None. Unknown names and missing data are a BenchError.
    """
    name = _canonical(name)
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    if name == "synthetic":
        return DataSource(name, data_dir, None)
    if name.startswith("imagefolder"):
        root = _imagefolder_root(name, data_dir)
        folder = root.resolve().name
        try:  # the name goes into every epoch row, as parquet text: UTF-8 or nothing
            folder.encode()
        except UnicodeEncodeError:
            raise BenchError(f"the image folder's name {folder.encode(errors='surrogateescape')!r} is not UTF-8, "
                             "and results name the dataset after it: rename the folder (or link it under a UTF-8 "
                             "name) and pass that") from None
        return DataSource(f"imagefolder:{folder}", root, None)
    wanted = "cifar10" if name == "auto" else name
    found = _find_cifar(wanted, data_dir)
    if found is not None:
        return DataSource(wanted, found, None)
    title, host = _CIFAR_TITLE[wanted], _download_host(wanted)
    if _reachable(host):
        return DataSource(wanted, data_dir, f"{title} not found under {data_dir}/: it will be downloaded from "
                                            f"{host} into {data_dir}/")
    where = (f"put {_CIFAR[wanted].filename}, {_CIFAR[wanted].base_folder}/ or an ImageFolder "
             f"{_CIFAR_FOLDERS[wanted][0]}/{{train,test}}/<class>/ in {data_dir}/ (or set $BENCH_DATA)")
    if name == "auto":
        return DataSource("synthetic", data_dir, f"CIFAR-10 not found under {data_dir}/ and {host} is unreachable: "
                                                 f"using the offline synthetic set, whose errors are not comparable "
                                                 f"to the paper's. For CIFAR-10, {where}")
    raise BenchError(f"{title} not found under {data_dir}/ and {host} is unreachable: {where}")


def _download_cifar(name: str, data_dir: Path) -> Path:
    """Fetch the canonical archive with torchvision (md5-checked) into data_dir; returns its path."""
    from torchvision.datasets.utils import download_url

    cls = _CIFAR[name]
    try:
        download_url(cls.url, str(data_dir), cls.filename, cls.tgz_md5)
    except Exception as error:  # urllib, SSL, disk and md5 failures all leave the user the same fix
        raise BenchError(f"downloading {cls.url} into {data_dir}/ failed ({error}): download it by hand into "
                         f"{data_dir}/ or use --dataset synthetic") from None
    return data_dir / cls.filename
