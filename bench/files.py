"""Files written whole or not at all: the one way bench writes a file, shared by the results folder
(bench.store), the data cache (bench.data) and the report; and the one way it opens a file it did not write.

Every file is written to a new temporary file (random name, O_EXCL | O_NOFOLLOW) and renamed over the old one,
so readers never see half a file, and a link planted in a shared folder is never written through. Every file
read back (run files, timing files, images) is first asked what it is: a regular file under a size bound.
"""

from __future__ import annotations

import errno
import io
import os
import re
import secrets
import stat
from collections.abc import Callable
from pathlib import Path

from bench.errors import BenchError

# errno values that mean "this place cannot be written", as opposed to "the disk is full".
UNWRITABLE = (errno.EACCES, errno.EROFS, errno.EPERM, errno.ENOTDIR, errno.EEXIST, errno.EISDIR)
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def safe_name(text: str) -> str:
    """`text` as a file or folder name: every run of other characters than letters, digits, _ . - becomes -."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text)


def refuse_link(path: Path) -> None:
    """A link where a run file goes was planted (or made by hand): writing never goes through one."""
    if path.is_symlink():
        raise BenchError(f"{path} is a symbolic link, and bench never writes through one (in a shared folder it "
                         "may be planted): remove the link and run the same command again")


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


def open_regular(path: Path, limit: int, fix: str) -> io.BufferedReader:
    """`path` open for reading, once it is known to be a regular file of at most `limit` bytes; anything else
    is a BenchError naming the file and `fix`. Asked before a byte is read: a FIFO blocks its reader for ever,
    a device or a huge (or sparse) file fills memory. O_NONBLOCK, so that even a FIFO put there between the
    question and the open does not block; fstat then answers for what was opened."""
    path = Path(path)
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
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


def read_regular(path: Path, limit: int, fix: str) -> bytes:
    """The bytes of `path`, a regular file of at most `limit` bytes (open_regular); at most `limit` bytes are
    read even if it grows meanwhile."""
    with open_regular(path, limit, fix) as handle:
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
        raise


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
