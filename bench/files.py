"""Files written whole or not at all: the one way bench writes a file, shared by the results folder
(bench.store), the data cache (bench.data) and the report.

Every file is written to a new temporary file (random name, O_EXCL | O_NOFOLLOW) and renamed over the old one,
so readers never see half a file, and a link planted in a shared folder is never written through.
"""

from __future__ import annotations

import errno
import io
import os
import re
import secrets
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


def check_writable(results: Path, *, tidy: bool = False) -> None:
    """Fail early, in one line, if the results folder cannot be created or written. With `tidy`, the folders
    it had to create are removed again, for callers that may yet fail before they write anything."""
    results = Path(results)
    created = [folder for folder in (results, *results.parents) if not folder.exists()]  # deepest first
    try:
        results.mkdir(parents=True, exist_ok=True)
        probe, descriptor = _create_temporary(results / ".write-test")
        os.close(descriptor)
        probe.unlink()
    except OSError as error:
        raise BenchError(f"cannot write to results folder {results} ({error.strerror}): "
                         "pass --results DIR with a writable folder") from None
    finally:
        for folder in created if tidy else ():
            try:
                folder.rmdir()
            except OSError:
                break
