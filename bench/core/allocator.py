"""The host allocator kept in steady state, so that a loop of same-sized tensors is timed and trained warm.

glibc's malloc hands a freed block back to the OS when it was mmapped (blocks above a threshold that adapts only
up to 32 MiB) or lies at the top of a heap above the trim threshold. A loop that allocates and frees the same
activations then faults freshly zeroed pages in on every call, and never settles: the first net of a `bench time`
sweep was timed cold. With the thresholds raised below the faults stop after the first few calls (the counts and
the cost are in docs/benchmarks.md). A `bench run` evaluation (batches of 1,000 images: 64 MiB per activation
of a width-16 net, past the 32 MiB where the threshold stops adapting) pays it on every batch by glibc's rules.

The price: nothing freed goes back, and a large block freed between smaller ones that stay is not always
reused by the next one of its size, so a loop of large transients can grow the heap by one each time. Set it
where the pattern is steady (a run's steps, once its data is loaded; a timing sweep), not before a phase of
one-off large blocks (docs/benchmarks.md, "A streamed `bench run`").

Elsewhere than glibc (macOS, musl) nothing is changed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
_KEEP = 1 << 30  # bytes: no block of a training or timing step comes near it


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def keep_freed_memory() -> bool:
    """Keep freed blocks in the process instead of giving them back to the OS at every free (process-wide, for
    the rest of the process). Returns whether the allocator took the setting (False off glibc)."""
    libc = _libc()
    if libc is None:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, _KEEP)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _KEEP))


def release_freed_memory() -> None:
    """Give the blocks kept so far back to the OS now (malloc_trim): between measurements, so that one net's
    peak resident memory does not start from what the previous one left."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
