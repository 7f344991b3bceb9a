"""Files written whole or not at all: the one way bench writes a file, shared by the results folder
(bench.results.store), the data cache (bench.data.data) and the report; and the one way it opens a file it did not write.

Every file is written to a new temporary file (random name, O_EXCL | O_NOFOLLOW) and renamed over the old one,
so readers never see half a file, and a link planted in a shared folder is never written through. Every file
read back (run files, timing files, the cache, images) is first asked what it is: a regular file under a size
bound, opened with O_NOFOLLOW (images alone may be links: see `open_regular`'s `follow`).

The link rule, in one place: the roots a user names (--results, --out, --data-dir) may be links; below them,
every folder bench makes, writes or reads as its own is checked by `refuse_links_below` (or made by
`own_folder`) and refused, in one line naming it, when it is a link. docs/links-and-bounds.md states the rule.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import re
import secrets
import stat
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.core.errors import BenchError

# errno values that mean "this place cannot be written", as opposed to "the disk is full".
UNWRITABLE = (errno.EACCES, errno.EROFS, errno.EPERM, errno.ENOTDIR, errno.EEXIST, errno.EISDIR)
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


# The longest name safe_name makes: far below the 255 bytes file systems allow, so a suffix (".parquet", a
# temporary name's ".<name>.<12 hex>.tmp") still fits.
NAME_LIMIT = 96
# The deepest JSON bench parses: its own files nest 3 deep; Python's parser recurses once per level.
JSON_DEPTH_LIMIT = 16
# Errors of the environment, not of the input: a clean stop with one line, the run resumable.
LIMITS = {errno.EFBIG: "the file size limit (ulimit -f) was reached", errno.ENAMETOOLONG:
          "a name or path is longer than the file system allows"}


def safe_name(text: str) -> str:
    """`text` as a file or folder name: every run of other characters than letters, digits, _ . - becomes -.
    A name longer than NAME_LIMIT is cut and ends in a hash of the whole `text`: short, and stable."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", text)
    if len(name) <= NAME_LIMIT:
        return name
    digest = hashlib.sha1(text.encode(errors="surrogateescape")).hexdigest()[:10]
    return f"{name[:NAME_LIMIT - 11]}-{digest}"


def refuse_link(path: Path) -> None:
    """A link where bench's own file or folder goes was planted (or made by hand): never written or read
    through."""
    if Path(path).is_symlink():
        raise BenchError(f"{path} is a symbolic link, and bench never writes or reads through one below its "
                         "results, report or data folder (in a shared folder it may be planted): remove the link "
                         "and run the same command again")


def refuse_links_below(root: Path, path: Path) -> Path:
    """`path`, once no part of it below `root` is a symbolic link (refuse_link names the first that is).
    `root` itself may be one: the user chose it. A `path` outside `root` is a programming error."""
    root, path = Path(root), Path(path)
    current = root
    for part in path.relative_to(root).parts:
        current = current / part
        refuse_link(current)
    return path


def own_folder(root: Path, folder: Path) -> Path:
    """`folder` below `root`, made (with its parents) where missing, once no part of it below `root` is a link."""
    refuse_links_below(root, folder)
    Path(folder).mkdir(parents=True, exist_ok=True)
    return Path(folder)


def check_nesting(raw: bytes, path: Path, fix: str, limit: int = JSON_DEPTH_LIMIT) -> None:
    """Refuse JSON text nested deeper than `limit` before a recursive parser sees it (a RefusedFile naming
    `fix`): brackets inside strings do not count."""
    text = re.sub(rb'"(?:[^"\\]|\\.)*"', b"", raw)
    steps = np.frombuffer(text.translate(_BRACKETS), dtype=np.uint8).astype(np.int8) - 1
    if len(steps) and int(np.cumsum(steps, dtype=np.int64).max()) > limit:
        raise RefusedFile(path, f"nests deeper than the {limit} levels such a file may", fix)


# '[' and '{' step one level in, ']' and '}' one out; every other byte stays (mapped to 1, then shifted to 0).
_BRACKETS = bytes(2 if chr(b) in "[{" else 0 if chr(b) in "]}" else 1 for b in range(256))


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def size_text(size: int) -> str:
    """A byte count for people: 64 KiB, 1 MiB, 4 GiB."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{size} bytes"


class RefusedFile(BenchError):
    """A file not read, and why (`reason`: "is a FIFO, not a regular file"); the message adds the fix."""

    def __init__(self, path: Path, reason: str, fix: str) -> None:
        super().__init__(f"{path} {reason}: {fix}")
        self.path, self.reason = path, reason


def open_regular(path: Path, limit: int, fix: str, *, follow: bool = False) -> io.BufferedReader:
    """`path` open for reading, once it is known to be a regular file of at most `limit` bytes; anything else
    is a BenchError naming the file and `fix`. Asked before a byte is read: a FIFO blocks its reader for ever,
    a device or a huge (or sparse) file fills memory. O_NONBLOCK, so that even a FIFO put there between the
    question and the open does not block; fstat then answers for what was opened. A symbolic link is refused
    (O_NOFOLLOW) unless `follow`: only the images of a data folder are read through links."""
    path = Path(path)
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        descriptor = os.open(path, flags)
    except OSError as error:
        if error.errno == errno.ELOOP and not follow and path.is_symlink():
            raise RefusedFile(path, "is a symbolic link, and bench never reads its own files through one",
                              f"remove the link; {fix}") from None
        raise RefusedFile(path, f"cannot be read ({error.strerror})", fix) from None
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            kind = next((name for test, name in _KINDS if test(info.st_mode)), "something else")
            raise RefusedFile(path, f"is {kind}, not a regular file", fix)
        if info.st_size > limit:
            raise RefusedFile(path, f"is {size_text(info.st_size)}, more than the {size_text(limit)} such a file "
                              "may be", fix)
        return open(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise


def read_regular(path: Path, limit: int, fix: str, *, follow: bool = False) -> bytes:
    """The bytes of `path`, a regular file of at most `limit` bytes (open_regular); at most `limit` bytes are
    read even if it grows meanwhile."""
    with open_regular(path, limit, fix, follow=follow) as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise RefusedFile(path, f"grew past {size_text(limit)} while it was read", fix)
    return data


def _create_temporary(path: Path) -> tuple[Path, int]:
    """A new file beside `path` under a random name, open for writing. O_EXCL and O_NOFOLLOW: a file or link
    planted at a name someone guessed is never written through; another name is drawn instead."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(16):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return tmp, os.open(tmp, flags, 0o666)  # the umask applies, as it did to open()
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(path))


def write_atomic(path: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Write through `write` into a new temporary file beside `path`, then rename it over `path`; a symbolic
    link at `path` is refused (BenchError), never followed or replaced."""
    path, tmp = Path(path), None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        refuse_link(path)
        tmp, descriptor = _create_temporary(path)
        with open(descriptor, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as error:  # a Ctrl-C mid-write must not leave a stray temporary file either
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if not isinstance(error, OSError):
            raise
        if error.errno in DISK_FULL:
            raise BenchError(f"disk full while writing {path}: free some space and run the same command "
                             "again (what was written before is kept)") from None
        if error.errno in UNWRITABLE:
            raise BenchError(f"cannot write {path} ({error.strerror}): make the folder writable or pass "
                             "--results DIR") from None
        if error.errno in LIMITS:
            raise BenchError(limit_message(error, path)) from None
        raise


def limit_message(error: OSError, path: object = None) -> str:
    """The one line for an environment limit met (an `error` whose errno is in LIMITS) at `path`."""
    where = path if path is not None else (error.filename or "a file")
    return (f"{LIMITS[error.errno]} at {str(where)[:300]}: raise the limit or choose a shorter folder, then run "
            "the same command again (what was written before is kept)")


def check_writable(results: Path, *, tidy: bool = False, option: str = "--results") -> None:
    """Fail early, in one line, if the results folder (or the folder `option` names) cannot be created or
    written. With `tidy`, the folders it had to create are removed again, for callers that may yet fail before
    they write anything."""
    results = Path(results)
    created = [folder for folder in (results, *results.parents) if not folder.exists()]  # deepest first
    try:
        results.mkdir(parents=True, exist_ok=True)
        probe, descriptor = _create_temporary(results / ".write-test")
        os.close(descriptor)
        probe.unlink()
    except OSError as error:
        # The words bench said before this check existed, for each option (its --out error was OSError's).
        head = "cannot write to results folder" if option == "--results" else "cannot access"
        raise BenchError(f"{head} {results} ({error.strerror}): pass {option} DIR with a writable folder") from None
    finally:
        for folder in created if tidy else ():
            try:
                folder.rmdir()
            except OSError:
                break
