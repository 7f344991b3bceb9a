"""Decoding a dataset once and caching it: ImageFolder files, CIFAR's python pickles, the synthetic set.

Each source gives a cache key (its file names, sizes and modification times, or the synthetic set's
parameters), a function that decodes or draws it into a dict of uint8 tensors, and a content fingerprint
(bench.data.data.DataInfo.fingerprint); an ImageFolder also gives the labels its listing implies, which the cache
(bench.data.cache) is checked against. Images are the one thing bench reads through links: a link that resolves
outside the data folder is followed, and counted in a notice.
The names with a leading underscore are bench.data.data's helpers; `class_files`, `check_pixels`, `read_image` and
`fingerprint` are shared with bench.data.streaming, which reads the same folders a batch at a time.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import struct
import tarfile
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from bench.core.errors import BenchError, Notify, first_line
from bench.core.files import read_regular, size_text
from bench.data import synthetic
from bench.data.sources import _CIFAR, _CIFAR_TITLE

Builder = Callable[[], dict]  # decodes or draws a dataset into the dict of tensors that is cached

SYNTHETIC_SEED = 0

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")  # single-frame formats torchvision.io.decode_image reads

# The most pixels an image may declare in its header, and the most bytes its file may hold, checked before any
# decoder sees it: 64 megapixels is 192 MiB decoded as RGB (8192 x 8192), while a 250 KB PNG can declare
# 16000 x 16000 (768 MiB as RGB); a decoder handed a hostile header may do worse than fill memory.
MAX_IMAGE_PIXELS = 64 * 2**20
MAX_IMAGE_BYTES = 256 * 2**20

_CACHE_VERSION = 1  # bump when the cached tensors' meaning changes, so old caches are not trusted

_JPEG_NOTE = ("decoded from JPEG files (lossy re-encoding): errors run higher than on the original {title}")


def _file_key(files: Iterable[tuple[str, os.stat_result]], extra: str) -> str:
    """A short hash of (relative name, stat) pairs' names, sizes and mtimes: it changes when the data does."""
    digest = hashlib.sha1(f"v{_CACHE_VERSION} {extra}".encode())
    for name, stat in files:
        digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode(errors="surrogateescape"))
    return digest.hexdigest()[:16]

def fingerprint(parts: Iterable[str | bytes | memoryview]) -> str:
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
    return fingerprint([f"tensors {tensors['num_classes']}", *(memoryview(a).cast("B") for a in arrays)])

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

def class_files(split_dir: Path, notify: Notify) -> dict[str, list[os.DirEntry]]:
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


def _train_images(root: Path) -> int:
    """How many training images an ImageFolder's listing holds, nothing opened or decoded (its notices are
    said when it loads): `bench run`'s plan checks each batch against it before the data is loaded."""
    return sum(len(files) for files in class_files(root / "train", lambda message: None).values())


_JPEG_FRAMES = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}  # SOFn, not DHT/JPG/DAC


def _header_size(raw: bytes) -> tuple[int, int] | None:
    """(width, height) as a PNG, JPEG or WebP file's header declares it, read from the bytes without decoding
    anything and without PIL's cost per file, which a decode of 60,000 images would feel; None when the header
    is not one of these or is cut short."""
    if raw[:8] == b"\x89PNG\r\n\x1a\n" and raw[12:16] == b"IHDR" and len(raw) >= 24:
        return struct.unpack(">II", raw[16:24])
    if raw[:4] == b"RIFF" and raw[8:12] == b"WEBP" and len(raw) >= 30:
        chunk = raw[12:16]
        if chunk == b"VP8X":
            return 1 + int.from_bytes(raw[24:27], "little"), 1 + int.from_bytes(raw[27:30], "little")
        if chunk == b"VP8L":
            bits = int.from_bytes(raw[21:25], "little")
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        if chunk == b"VP8 ":
            return int.from_bytes(raw[26:28], "little") & 0x3FFF, int.from_bytes(raw[28:30], "little") & 0x3FFF
        return None
    if raw[:2] == b"\xff\xd8":  # JPEG: walk the segments to the first frame header
        i = 2
        while i + 9 <= len(raw) and raw[i] == 0xFF:
            marker = raw[i + 1]
            if marker == 0xFF:  # fill byte
                i += 1
            elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
                i += 2
            elif marker in _JPEG_FRAMES:
                height, width = struct.unpack(">HH", raw[i + 5:i + 9])
                return width, height
            else:
                i += 2 + int.from_bytes(raw[i + 2:i + 4], "big")
    return None


def check_pixels(raw: bytes, path: str) -> None:
    """Refuse an image whose header declares more than MAX_IMAGE_PIXELS, before any decoder sees it. Headers
    _header_size does not know are read by PIL, whose Image.open reads the header and decodes nothing."""
    size = _header_size(raw)
    if size is None:
        from PIL import Image

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(raw)) as image:
                    size = image.size
        except Image.DecompressionBombError:  # PIL's own bound, at twice its MAX_IMAGE_PIXELS: far above ours
            size = (MAX_IMAGE_PIXELS + 1, 1)
        except Exception:  # not an image PIL knows: the decoder says what is wrong with it
            return
    width, height = size
    if width * height > MAX_IMAGE_PIXELS:
        bound = f"{MAX_IMAGE_PIXELS:,} ({MAX_IMAGE_PIXELS / 2**20:g} megapixels, {size_text(3 * MAX_IMAGE_PIXELS)} as RGB)"
        raise BenchError(f"image {path} declares {width} x {height} pixels, more than the {bound} bench decodes: "
                         "shrink it or delete the file")


class Undecodable(Exception):
    """An image the decoder cannot read (corrupt, truncated, not an image). bench.data.data refuses the set (one
    line naming the file); bench.data.streaming skips the image and counts it."""


def read_image(path: str, *, follow: bool = False) -> Tensor:
    """The image at `path` as uint8 RGB [3, H, W]. A file that is not a regular file under MAX_IMAGE_BYTES, or
    whose header declares more than MAX_IMAGE_PIXELS, is a BenchError before any decoder sees it; an image the
    decoder cannot read is `Undecodable`. `follow`: read through a link (counted by _links_outside)."""
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.transforms.v2.functional import to_dtype

    raw = read_regular(Path(path), MAX_IMAGE_BYTES, "replace or delete the file", follow=follow)
    check_pixels(raw, path)
    try:
        with warnings.catch_warnings():
            # torchvision 0.29 marks its codecs deprecated (in favour of TorchCodec) on every call; they still work.
            warnings.simplefilter("ignore", DeprecationWarning)
            image = decode_image(torch.frombuffer(bytearray(raw), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except (OSError, RuntimeError, ValueError) as error:
        raise Undecodable(first_line(error, 200)) from None
    if image.dtype != torch.uint8:  # 16-bit PNGs decode to uint16: scale, or the values wrap mod 256
        image = to_dtype(image, torch.uint8, scale=True)
    return image


def _decode_files(files: list[os.DirEntry], size: int, advance: Callable[[int], None]) -> tuple[Tensor, bool]:
    """Decode image files into uint8 [N,3,size,size]; returns it and whether any image had to be resized."""
    from torchvision.transforms.v2.functional import center_crop, resize

    out = torch.empty(len(files), 3, size, size, dtype=torch.uint8)
    resized = False
    # One file at a time in this process: decode_image on 32x32 JPEGs runs ~15k images/s per core, faster
    # than a thread or process pool once their overhead is counted, and ~5x faster than PIL.
    for i, entry in enumerate(files):
        try:  # not a FIFO; read through a link, as torchvision's ImageFolder does
            image = read_image(entry.path, follow=True)
        except Undecodable as error:
            raise BenchError(f"cannot decode image {entry.path} ({error}): replace or delete the file") from None
        if image.shape[-2:] != (size, size):
            image = center_crop(resize(image, [size], antialias=True), [size, size])
            resized = True
        out[i] = image
        if i % 512 == 511:
            advance(512)
    advance(len(files) % 512)
    return out, resized

def _imagefolder_source(root: Path, size: int, progress: bool, title: str | None,
                        notify: Notify) -> tuple[str, Builder, str, dict[str, Tensor]]:
    """Check an ImageFolder root; returns its cache key, the function that decodes it, its fingerprint and
    the labels of each split that its listing gives (a cache is checked against them).

    `title` ("CIFAR-10") marks a copy of a known set, whose JPEG files get the lossy-copy note.
    """
    test_dir = root / "test" if (root / "test").is_dir() else root / "val"
    splits = {"train": class_files(root / "train", notify), "test": class_files(test_dir, notify)}
    if len(splits["train"]) < 2:  # one class: every net is right on every image, and "fits" at once
        raise BenchError(f"{root / 'train'} has {len(splits['train'])} class folder ({', '.join(splits['train'])}): "
                         "a classifier needs two or more; add a folder per class")
    if list(splits["train"]) != list(splits["test"]):
        differ = sorted(set(splits["train"]) ^ set(splits["test"]))
        raise BenchError(f"{root / 'train'} and {test_dir} have different class folders ({', '.join(differ[:5])}): "
                         f"give both splits the same classes")
    files = {split: [f for entries in per_class.values() for f in entries] for split, per_class in splits.items()}
    outside = sum(_links_outside(root, (root / "train" if split == "train" else test_dir) / cls, entries)
                  for split, per_class in splits.items() for cls, entries in per_class.items())
    if outside:
        notify(f"{outside} images of {root} are links (or lie in linked class folders) that resolve outside it: "
               "they are read as its images, and its fingerprint counts their names and sizes")
    labels = {split: torch.repeat_interleave(torch.arange(len(per_class)),
                                             torch.tensor([len(entries) for entries in per_class.values()]))
              for split, per_class in splits.items()}
    named = [(f"{split}/{cls}/{e.name}", e.stat()) for split, per_class in splits.items()
             for cls, entries in per_class.items() for e in entries]
    # PNGs decoded before 16-bit images were scaled may sit in the cache wrapped: key them anew.
    png = " png16" if any(name.lower().endswith(".png") for name, _ in named) else ""
    key = _file_key(named, f"imagefolder {test_dir.name} {size}{png}")
    # Names (with their class folders, so labels), sizes and the image size; not modification times, so a
    # copy of the same files on another machine is the same data.
    digest = fingerprint([f"imagefolder {size}", *(f"{name} {stat.st_size}" for name, stat in named)])

    def build() -> dict:
        tensors: dict = {"num_classes": len(splits["train"])}
        resized = False
        with _progress(progress, len(files["train"]) + len(files["test"]), f"decoding {root}") as advance:
            for split in splits:
                tensors[f"{split}_images"], split_resized = _decode_files(files[split], size, advance)
                tensors[f"{split}_labels"] = labels[split].clone()
                resized |= split_resized
        notes = []
        if title and any(f.name.lower().endswith((".jpg", ".jpeg")) for f in files["train"]):
            notes.append(_JPEG_NOTE.format(title=title))
        if resized:
            notes.append(f"images resized (shorter side) and centre-cropped to {size}x{size}")
        tensors["note"] = "; ".join(notes)
        return tensors

    return key, build, digest, labels


def _links_outside(root: Path, folder: Path, entries: list[os.DirEntry]) -> int:
    """How many of `entries` (images of `folder`, below `root`) resolve outside `root`: all of them when the
    class folder is a link out, else those that are links out themselves. realpath only for links: 60,000
    plain files cost nothing."""
    base = os.path.realpath(root)
    if os.path.commonpath([base, os.path.realpath(folder)]) != base:
        return len(entries)
    return sum(entry.is_symlink() and os.path.commonpath([base, os.path.realpath(entry.path)]) != base
               for entry in entries)

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
