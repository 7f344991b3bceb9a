"""The data layer of `bench run`: find, download or make a dataset, decode it once, cache it.

Datasets (the `--dataset` names):

- ``cifar10`` / ``cifar100``: any form torchvision reads (``cifar-10-batches-py/``,
  ``cifar-10-python.tar.gz``, ``cifar-100-python/``...) or an ImageFolder copy (``cifar10-jpg/`` or
  ``cifar10/`` holding ``train/<class>/*`` and ``test/<class>/*``), under the data folder; downloaded by
  torchvision into it when it is missing and the internet is reachable.
- ``imagefolder`` (the data folder itself) or ``imagefolder:<path>``: any ``train/`` + ``test/`` (or
  ``val/``) ImageFolder, resized (shorter side) and centre-cropped to ``image_size``.
- ``synthetic``: shapes drawn by `bench.synthetic`, no download needed.
- ``auto``: CIFAR-10 when it is on disk or can be downloaded, else ``synthetic`` with a loud notice.

Files are decoded once into uint8 tensors and cached as ``<folder holding the dataset>/.cache/<name>-<key>.pt``,
keyed by the source's file names, sizes and modification times, so the next start loads in about a second;
a digest of its tensors, checked at every load (`_cache_digest`), makes a damaged or edited cache decode again.
Each dataset also gets a content fingerprint (DataInfo.fingerprint) that a run folder records.
The whole set then lives on the training device (`ImageData.to`), where bench/loader.py batches and augments it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import pickle
import re
import socket
import tarfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
from torch import Tensor
from torchvision.datasets import CIFAR10, CIFAR100

from bench import synthetic
from bench.errors import BenchError, Notify, first_line
from bench.files import write_atomic

Builder = Callable[[], dict]  # decodes or draws a dataset into the dict of tensors that is cached

DATASETS = ("auto", "cifar10", "cifar100", "imagefolder", "synthetic")
SYNTHETIC_SEED = 0
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")  # single-frame formats torchvision.io.decode_image reads
REACH_TIMEOUT_S = 3.0  # an offline machine (CI) must fall back quickly, not hang on a download
_CACHE_VERSION = 1  # bump when the cached tensors' meaning changes, so old caches are not trusted
_CIFAR = {"cifar10": CIFAR10, "cifar100": CIFAR100}
_CIFAR_TITLE = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}
_CIFAR_FOLDERS = {"cifar10": ("cifar10-jpg", "cifar10"), "cifar100": ("cifar100-jpg", "cifar100")}
_JPEG_NOTE = ("decoded from JPEG files (lossy re-encoding): errors run higher than on the original {title}")
_SYNTHETIC_NOTE = ("offline synthetic shapes (bench/synthetic.py), not CIFAR-10: errors are not comparable "
                   "to the paper's")


@dataclasses.dataclass(frozen=True)
class DataInfo:
    """What a run was trained on; saved into every run's config.json and drawn on figures."""

    name: str  # "cifar10" | "cifar100" | "synthetic" | "imagefolder:<folder name>"
    source: str  # path it was read from, or "generated (seed N)"
    num_classes: int
    image_size: int
    train_size: int
    test_size: int
    note: str  # caveat for readers; "" if none
    # What the data is, not where it lies: a hash of the file list (names, sizes, labels), of the decoded
    # tensors for CIFAR's pickles, or of the synthetic set's parameters. Saved in each run's config.json so a
    # run folder found again with other data under the same name is refused (bench.store.check_same_data).
    fingerprint: str = ""


@dataclasses.dataclass
class ImageData:
    """A whole dataset as tensors: uint8 images [N,3,H,W], int64 labels [N], and the training per-pixel mean."""

    info: DataInfo
    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    mean: Tensor  # float32 [3,H,W], per-pixel mean of the training images in [0,1] units

    def to(self, device: torch.device | str) -> ImageData:
        """The same data on `device` (the point: the training loop then never copies from the host)."""
        return dataclasses.replace(
            self, train_images=self.train_images.to(device), train_labels=self.train_labels.to(device),
            test_images=self.test_images.to(device), test_labels=self.test_labels.to(device),
            mean=self.mean.to(device),
        )


def default_data_dir() -> Path:
    """$BENCH_DATA if set, else data/ under the current directory."""
    return Path(os.environ.get("BENCH_DATA") or "data")


# --- finding the data ------------------------------------------------------------------------------------------


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


def resolve_dataset(name: str, data_dir: Path | None = None) -> tuple[str, Path | None, str | None]:
    """Pin a dataset name to what will really be used; returns (name, path, notice).

    'auto' becomes 'cifar10' when CIFAR-10 is under `data_dir` or downloadable (a 3 s connect test decides),
    else 'synthetic'; imagefolder names become 'imagefolder:<folder name>'. `path` is what to pass to
    `load_dataset` as its data_dir: the dataset's own folder or archive when it is on disk, else the data
    folder (it is downloaded into, or caches the synthetic set in). `notice` is a sentence for the user
    (printed loudly by the CLI) when the choice is not the obvious one, else None. Unknown names and missing
    data are a BenchError.
    """
    name = _canonical(name)
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    if name == "synthetic":
        return name, data_dir, None
    if name.startswith("imagefolder"):
        root = _imagefolder_root(name, data_dir)
        return f"imagefolder:{root.resolve().name}", root, None
    wanted = "cifar10" if name == "auto" else name
    found = _find_cifar(wanted, data_dir)
    if found is not None:
        return wanted, found, None
    title, host = _CIFAR_TITLE[wanted], _download_host(wanted)
    if _reachable(host):
        return wanted, data_dir, (f"{title} not found under {data_dir}/: it will be downloaded from {host} "
                                  f"into {data_dir}/")
    where = (f"put {_CIFAR[wanted].filename}, {_CIFAR[wanted].base_folder}/ or an ImageFolder "
             f"{_CIFAR_FOLDERS[wanted][0]}/{{train,test}}/<class>/ in {data_dir}/ (or set $BENCH_DATA)")
    if name == "auto":
        return "synthetic", data_dir, (f"CIFAR-10 not found under {data_dir}/ and {host} is unreachable: using "
                                       f"the offline synthetic set, whose errors are not comparable to the "
                                       f"paper's. For CIFAR-10, {where}")
    raise BenchError(f"{title} not found under {data_dir}/ and {host} is unreachable: {where}")


# --- decoding and the cache --------------------------------------------------------------------------------------


def _file_key(files: Iterable[tuple[str, os.stat_result]], extra: str) -> str:
    """A short hash of (relative name, stat) pairs' names, sizes and mtimes: it changes when the data does."""
    digest = hashlib.sha1(f"v{_CACHE_VERSION} {extra}".encode())
    for name, stat in files:
        digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode(errors="surrogateescape"))
    return digest.hexdigest()[:16]


def _fingerprint(parts: Iterable[str | bytes | memoryview]) -> str:
    """A short content hash of `parts` (see DataInfo.fingerprint). A file name that is not UTF-8 (os.fsdecode
    keeps its bytes as surrogates) is hashed as those bytes."""
    digest = hashlib.sha1()
    for part in parts:
        digest.update(part.encode(errors="surrogateescape") if isinstance(part, str) else part)
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def _tensor_fingerprint(tensors: dict) -> str:
    """The fingerprint of decoded tensors: exact, for sources whose decoding is (CIFAR's pickles)."""
    arrays = [tensors[f"{split}_{kind}"].contiguous().numpy() for split in ("train", "test")
              for kind in ("images", "labels")]
    return _fingerprint([f"tensors {tensors['num_classes']}", *(memoryview(a).cast("B") for a in arrays)])


def _cache_digest(tensors: dict) -> str:
    """A hash of every tensor and field of a cache, stored in it when it is built and checked whenever it is
    loaded, so a cache of the right shape holding other pixels or labels is not trusted. It costs 0.15 s for
    CIFAR-10's 60,000 images (176 MiB, sha1; AMD EPYC, on a loaded 2-core machine) beside 0.35 s to load the
    cache. The cache is tied to its source by its key (file names, sizes and times): checking the source's
    bytes at every start would cost 1.5 s for the 60,000 JPEG files with the page cache warm, a minute cold."""
    mean = tensors["mean"].contiguous().numpy()
    return _fingerprint([_tensor_fingerprint(tensors), memoryview(mean).cast("B"), tensors["note"]])


def _load_cache(path: Path, notify: Notify) -> dict | None:
    """The cached tensors, or None when there is no cache or it is unreadable, damaged or edited (its digest or
    its labels are off): then it is rebuilt."""
    if not path.is_file():
        return None
    try:
        cached = torch.load(path, map_location="cpu", weights_only=True)
        for split in ("train", "test"):
            images, labels = cached[f"{split}_images"], cached[f"{split}_labels"]
            if images.dtype != torch.uint8 or images.dim() != 4 or len(images) != len(labels):
                raise ValueError(f"bad {split} tensors")
        if cached["mean"].dtype != torch.float32 or cached["mean"].shape != cached["train_images"].shape[1:]:
            raise ValueError("bad mean")
        if not isinstance(cached["note"], str) or not isinstance(cached["num_classes"], int):
            raise ValueError("bad metadata")
        for split in ("train", "test"):  # a label outside the classes would fail deep in the loss
            labels = cached[f"{split}_labels"]
            if labels.dtype != torch.int64 or labels.dim() != 1 or (
                    len(labels) and not 0 <= labels.min() <= labels.max() < cached["num_classes"]):
                raise ValueError(f"{split} labels outside the {cached['num_classes']} classes")
        if cached.get("digest") != _cache_digest(cached):
            raise ValueError("its tensors do not match its digest: damaged, edited, or from before digests")
    except Exception as error:  # any damage (truncated file, foreign pickle, wrong keys) means: decode again
        reason = f"{type(error).__name__}: {error}" if isinstance(error, ValueError) else type(error).__name__
        notify(f"cache {path} is unreadable ({reason}); decoding the data again")
        return None
    return cached


def _save_cache(path: Path, tensors: dict, notify: Notify) -> bool:
    """Write atomically, so a killed process never leaves half a cache behind; a cache that cannot be written
    only costs the next start a decode."""
    try:
        write_atomic(path, lambda handle: torch.save(tensors, handle))
        return True
    except Exception as error:  # torch.save raises RuntimeError for some write failures, OSError for others
        reason = first_line(error, 200)
        notify(f"could not write the data cache {path} ({reason}); the next start decodes again")
        return False


@contextmanager
def _progress(enabled: bool, total: int, description: str) -> Iterator[Callable[[int], None]]:
    """A transient rich progress bar (hidden when not enabled); yields `advance(n)`."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  transient=True, disable=not enabled) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


def _images_in(folder: Path) -> list[os.DirEntry]:
    with os.scandir(folder) as entries:
        return sorted((e for e in entries if e.is_file() and not e.name.startswith(".")
                       and e.name.lower().endswith(IMAGE_EXTENSIONS)), key=lambda e: e.name)


def _class_files(split_dir: Path, notify: Notify) -> dict[str, list[os.DirEntry]]:
    """{class name: image files sorted by name} of one split; a class folder without images is a BenchError.
    A folder whose name starts with '.' is hidden, not a class (.ipynb_checkpoints, .git); one that holds
    images is named in a notice, since it may be a class someone named so.

    os.scandir, not pathlib: listing and stat-ing 60,000 files through Path objects takes seconds.
    """
    folders = [p for p in split_dir.iterdir() if p.is_dir()]
    for hidden in sorted(p for p in folders if p.name.startswith(".") and _images_in(p)):
        notify(f"{hidden} is left out: a folder whose name starts with '.' is hidden, not a class; rename it "
               "without the dot if it is one")
    classes = sorted(p.name for p in folders if not p.name.startswith("."))
    if not classes:
        raise BenchError(f"{split_dir} has no class folders: put the images in {split_dir}/<class>/")
    files = {}
    for cls in classes:
        found = _images_in(split_dir / cls)
        if not found:
            raise BenchError(f"{split_dir / cls} has no images ({', '.join(IMAGE_EXTENSIONS)}): add some or "
                             f"remove the folder")
        files[cls] = found
    return files


def _decode_files(files: list[os.DirEntry], size: int, advance: Callable[[int], None]) -> tuple[Tensor, bool]:
    """Decode image files into uint8 [N,3,size,size]; returns it and whether any image had to be resized."""
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.transforms.v2.functional import center_crop, resize, to_dtype

    out = torch.empty(len(files), 3, size, size, dtype=torch.uint8)
    resized = False
    # One file at a time in this process: decode_image on 32x32 JPEGs runs ~15k images/s per core, faster
    # than a thread or process pool once their overhead is counted, and ~5x faster than PIL.
    with warnings.catch_warnings():
        # torchvision 0.29 marks its codecs deprecated (in favour of TorchCodec) on every call; they still work.
        warnings.simplefilter("ignore", DeprecationWarning)
        for i, entry in enumerate(files):
            try:
                with open(entry.path, "rb") as handle:
                    raw = torch.frombuffer(bytearray(handle.read()), dtype=torch.uint8)
                image = decode_image(raw, mode=ImageReadMode.RGB)
            except (OSError, RuntimeError, ValueError) as error:
                reason = first_line(error)
                raise BenchError(f"cannot decode image {entry.path} ({reason}): replace or delete the file") from None
            if image.dtype != torch.uint8:  # 16-bit PNGs decode to uint16: scale, or the values wrap mod 256
                image = to_dtype(image, torch.uint8, scale=True)
            if image.shape[-2:] != (size, size):
                image = center_crop(resize(image, [size], antialias=True), [size, size])
                resized = True
            out[i] = image
            if i % 512 == 511:
                advance(512)
    advance(len(files) % 512)
    return out, resized


def _imagefolder_source(root: Path, size: int, progress: bool, title: str | None,
                        notify: Notify) -> tuple[str, Builder, str]:
    """Check an ImageFolder root; returns its cache key, the function that decodes it and its fingerprint.

    `title` ("CIFAR-10") marks a copy of a known set, whose JPEG files get the lossy-copy note.
    """
    test_dir = root / "test" if (root / "test").is_dir() else root / "val"
    splits = {"train": _class_files(root / "train", notify), "test": _class_files(test_dir, notify)}
    if list(splits["train"]) != list(splits["test"]):
        differ = sorted(set(splits["train"]) ^ set(splits["test"]))
        raise BenchError(f"{root / 'train'} and {test_dir} have different class folders ({', '.join(differ[:5])}): "
                         f"give both splits the same classes")
    files = {split: [f for entries in per_class.values() for f in entries] for split, per_class in splits.items()}
    named = [(f"{split}/{cls}/{e.name}", e.stat()) for split, per_class in splits.items()
             for cls, entries in per_class.items() for e in entries]
    # PNGs decoded before 16-bit images were scaled may sit in the cache wrapped: key them anew.
    png = " png16" if any(name.lower().endswith(".png") for name, _ in named) else ""
    key = _file_key(named, f"imagefolder {test_dir.name} {size}{png}")
    # Names (with their class folders, so labels), sizes and the image size; not modification times, so a
    # copy of the same files on another machine is the same data.
    fingerprint = _fingerprint([f"imagefolder {size}", *(f"{name} {stat.st_size}" for name, stat in named)])

    def build() -> dict:
        tensors: dict = {"num_classes": len(splits["train"])}
        resized = False
        with _progress(progress, len(files["train"]) + len(files["test"]), f"decoding {root}") as advance:
            for split, per_class in splits.items():
                tensors[f"{split}_images"], split_resized = _decode_files(files[split], size, advance)
                counts = torch.tensor([len(entries) for entries in per_class.values()])
                tensors[f"{split}_labels"] = torch.repeat_interleave(torch.arange(len(per_class)), counts)
                resized |= split_resized
        notes = []
        if title and any(f.name.lower().endswith((".jpg", ".jpeg")) for f in files["train"]):
            notes.append(_JPEG_NOTE.format(title=title))
        if resized:
            notes.append(f"images resized (shorter side) and centre-cropped to {size}x{size}")
        tensors["note"] = "; ".join(notes)
        return tensors

    return key, build, fingerprint


# Every global a CIFAR batch pickle names: numpy's array and scalar reconstructors (numpy 1 pickles say
# numpy.core, numpy 2 ones numpy._core; protocol 5 frombuffer), and _codecs.encode, which Python 3's protocol 2
# writes bytes as. Dicts, lists, str, int and bytes are pickle opcodes, not globals.
_CIFAR_GLOBALS = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
                  *((f"numpy.{core}.multiarray", name) for core in ("core", "_core")
                    for name in ("_reconstruct", "scalar")),
                  *((f"numpy.{core}.numeric", "_frombuffer") for core in ("core", "_core"))}


class _CifarUnpickler(pickle.Unpickler):
    """Reads CIFAR's python pickles and nothing else: a global outside _CIFAR_GLOBALS (os.system, any
    class's constructor) is refused before it is imported, so a planted batch cannot run code."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _CIFAR_GLOBALS:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which no CIFAR batch holds")
        if module.startswith("numpy.core") and hasattr(np, "_core"):  # numpy 2 warns on numpy.core
            module = module.replace("numpy.core", "numpy._core", 1)
        return super().find_class(module, name)


def _unpickle(raw: bytes, where: str) -> dict:
    try:
        return _CifarUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except pickle.UnpicklingError as error:
        raise BenchError(f"refused to read {where} ({error}): it is not a CIFAR python pickle; delete it "
                         f"and download the archive again") from None
    except Exception as error:  # the format has many ways to be broken; each means the same to the user
        raise BenchError(f"cannot read {where} ({type(error).__name__}): it is not a CIFAR python pickle; "
                         f"delete it and download the archive again") from None


def _cifar_pickle_source(name: str, source: Path) -> tuple[str, Builder]:
    """The cache key of a CIFAR python-pickle copy (folder or .tar.gz) and the function that reads it."""
    files = [source] if source.is_file() else sorted(p for p in source.iterdir() if p.is_file())
    return _file_key(((p.name, p.stat()) for p in files), name), lambda: _read_cifar_pickles(name, source)


def _read_cifar_pickles(name: str, source: Path) -> dict:
    """Read the python-pickle batches torchvision's CIFAR10/CIFAR100 use, from their folder or .tar.gz.

    Not through torchvision's CIFAR10/CIFAR100 classes, which read the same pickles into the same pixels: they
    refuse any file whose md5 differs from the official release's ("Dataset not found or corrupted", measured
    with torchvision 0.29.1 on the small fake copies tests/test_data.py builds), they say neither which file
    is missing or broken, and they read a folder only, so a .tar.gz would first be extracted to disk.
    """
    cls = _CIFAR[name]
    wanted = [f for f, _ in cls.train_list] + [f for f, _ in cls.test_list] + [cls.meta["filename"]]
    raw: dict[str, bytes] = {}
    if source.is_file():
        try:
            with tarfile.open(source, "r:*") as archive:
                # Stream the archive once: random access into a .tar.gz would decompress it again per member.
                for member in archive:
                    path = Path(member.name)
                    if member.isfile() and path.name in wanted and path.parent.name == cls.base_folder:
                        raw[path.name] = archive.extractfile(member).read()  # type: ignore[union-attr]
        except (tarfile.TarError, OSError, EOFError) as error:
            raise BenchError(f"cannot read archive {source} ({error}): delete it and download it again") from None
    else:
        for f in wanted:
            if (source / f).is_file():
                raw[f] = (source / f).read_bytes()
    missing = [f for f in wanted if f not in raw]
    if missing:
        raise BenchError(f"{source} lacks {', '.join(missing)}: it is not a complete {_CIFAR_TITLE[name]} "
                         f"copy; delete it and download it again")

    def split(files: list) -> tuple[Tensor, Tensor]:
        entries = [_unpickle(raw[f], f"{source}/{f}") for f, _ in files]
        try:
            data = np.concatenate([np.asarray(e["data"], dtype=np.uint8) for e in entries]).reshape(-1, 3, 32, 32)
            labels = np.concatenate([e["labels"] if "labels" in e else e["fine_labels"] for e in entries])
        except (KeyError, ValueError, TypeError) as error:
            raise BenchError(f"{source} has a malformed batch ({type(error).__name__}: {error}): delete it and "
                             f"download it again") from None
        return torch.from_numpy(data), torch.from_numpy(labels.astype(np.int64))

    train_images, train_labels = split(cls.train_list)
    test_images, test_labels = split(cls.test_list)
    classes = _unpickle(raw[cls.meta["filename"]], f"{source}/{cls.meta['filename']}")[cls.meta["key"]]
    if max(train_labels.max(), test_labels.max()) >= len(classes) or min(train_labels.min(), test_labels.min()) < 0:
        raise BenchError(f"{source} has labels outside its {len(classes)} classes: delete it and download it again")
    return {"train_images": train_images, "train_labels": train_labels, "test_images": test_images,
            "test_labels": test_labels, "num_classes": len(classes), "note": ""}


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


def _train_mean(images: Tensor) -> Tensor:
    """Per-pixel mean in [0,1] units. Summed in chunks of 4096, where float32 sums of uint8 are exact, so
    no float copy of the whole set is made."""
    total = torch.zeros(images.shape[1:], dtype=torch.float64)
    for start in range(0, len(images), 4096):
        total += images[start:start + 4096].float().sum(0)
    return (total / (255.0 * max(len(images), 1))).float()


def _synthetic_source(train: int, test: int, size: int, progress: bool) -> tuple[str, Builder]:
    """The offline set's cache key and builder: train and test drawn from separate seeds of one generator."""
    if min(train, test) < len(synthetic.CLASSES):
        raise BenchError(f"the synthetic set needs at least {len(synthetic.CLASSES)} train and test images "
                         f"(one per class): raise its sizes")

    def build() -> dict:
        with _progress(progress, train + test, "drawing the synthetic set") as advance:
            train_images, train_labels = synthetic.generate(train, seed=2 * SYNTHETIC_SEED, image_size=size)
            advance(train)
            test_images, test_labels = synthetic.generate(test, seed=2 * SYNTHETIC_SEED + 1, image_size=size)
            advance(test)
        return {"train_images": train_images, "train_labels": train_labels, "test_images": test_images,
                "test_labels": test_labels, "num_classes": len(synthetic.CLASSES), "note": ""}

    key = f"v{_CACHE_VERSION} {synthetic.VERSION} {train} {test} {size} {SYNTHETIC_SEED}"
    return hashlib.sha1(key.encode()).hexdigest()[:16], build


def load_dataset(name: str, data_dir: Path | None = None, *, image_size: int = 32, synthetic_train: int = 20000,
                 synthetic_test: int = 4000, progress: bool = True, notify: Notify | None = None) -> ImageData:
    """Load a dataset as CPU tensors (call `.to(device)` next), decoding it on first use and caching it.

    `name` is any `--dataset` value or what `resolve_dataset` returned; `data_dir` is the data folder
    (default `default_data_dir()`) or the dataset's own folder/archive (the path `resolve_dataset` returns).
    `progress` shows a bar while decoding or drawing; `notify` receives sentences worth telling the user
    (auto's choice, a download, decode time, cache trouble). Bad or missing data is a BenchError naming
    the file and the fix.
    """
    notify = notify or (lambda message: None)
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    name = _canonical(name)
    if name == "auto":
        name, data_dir, notice = resolve_dataset(name, data_dir)  # type: ignore[assignment]
        if notice:
            notify(notice)

    fingerprint = None  # None: hash the decoded tensors
    if name == "synthetic":
        source, cache_dir = f"generated (seed {SYNTHETIC_SEED})", data_dir
        key, build = _synthetic_source(synthetic_train, synthetic_test, image_size, progress)
        fingerprint = _fingerprint([f"synthetic {synthetic.VERSION} {synthetic_train} {synthetic_test} {image_size} "
                                    f"{SYNTHETIC_SEED}"])
    elif name.startswith("imagefolder"):
        root = _imagefolder_root(name, data_dir)
        name, source, cache_dir = f"imagefolder:{root.resolve().name}", str(root), root.parent
        key, build, fingerprint = _imagefolder_source(root, image_size, progress, title=None, notify=notify)
    else:
        if image_size != 32:
            raise BenchError(f"{_CIFAR_TITLE[name]} images are 32x32: use --image-size 32 (or leave it out)")
        root = _find_cifar(name, data_dir)
        if root is None:
            _, data_dir, notice = resolve_dataset(name, data_dir)  # a BenchError when it cannot be downloaded
            if notice:
                notify(notice)
            root = _download_cifar(name, data_dir)
        source, cache_dir = str(root), root.parent
        if _is_imagefolder(root):
            key, build, fingerprint = _imagefolder_source(root, image_size, progress, title=_CIFAR_TITLE[name],
                                                          notify=notify)
        else:
            key, build = _cifar_pickle_source(name, root)

    cache = cache_dir / ".cache" / f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', name)}-{key}.pt"
    tensors = _load_cache(cache, notify)
    if tensors is None:
        started = time.perf_counter()
        tensors = build()
        tensors["mean"] = _train_mean(tensors["train_images"])
        tensors["digest"] = _cache_digest(tensors)
        if _save_cache(cache, tensors, notify):
            notify(f"{name}: built in {time.perf_counter() - started:.1f} s and cached as {cache}")
    num_classes = int(tensors["num_classes"])
    expected = {"cifar10": 10, "cifar100": 100}.get(name, num_classes)
    if num_classes != expected:
        raise BenchError(f"{source} has {num_classes} classes, not {_CIFAR_TITLE[name]}'s {expected}: "
                         f"use --dataset imagefolder for other image sets")
    info = DataInfo(name=name, source=source, num_classes=num_classes, image_size=image_size,
                    train_size=len(tensors["train_images"]), test_size=len(tensors["test_images"]),
                    note=_SYNTHETIC_NOTE if name == "synthetic" else tensors["note"],
                    fingerprint=fingerprint or _tensor_fingerprint(tensors))
    return ImageData(info, tensors["train_images"], tensors["train_labels"], tensors["test_images"],
                     tensors["test_labels"], tensors["mean"])


# --- the subset a run trains on ---------------------------------------------------------------------------------


def take_subset(data: ImageData, train: int | None, test: int | None) -> ImageData:
    """The same fixed random subset for every run (seed 0, not the run's seed), so runs compare.

    Here, not in bench/loader.py: it chooses which data a run trains on (its sizes go into DataInfo and
    config.json), once per run on the whole ImageData, like load_dataset and unlike the per-epoch batching.
    """
    generator = torch.Generator().manual_seed(0)

    def pick(images: torch.Tensor, labels: torch.Tensor, n: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        if n is None or n >= len(images):
            return images, labels
        index = torch.randperm(len(images), generator=generator)[:n].sort().values.to(images.device)
        return images[index], labels[index]

    train_images, train_labels = pick(data.train_images, data.train_labels, train)
    test_images, test_labels = pick(data.test_images, data.test_labels, test)
    info = dataclasses.replace(data.info, train_size=len(train_images), test_size=len(test_images))
    # The per-pixel mean stays the full training set's: it is a property of the data, not of the subset.
    return dataclasses.replace(data, info=info, train_images=train_images, train_labels=train_labels,
                               test_images=test_images, test_labels=test_labels)
