"""Ctrl-C and SIGTERM while a run trains: the first one stops the loop between iterations, a second one at once.

Between iterations a run's state is whole, so a checkpoint made there resumes exactly; a stop that lands
anywhere else (half-way through an optimizer step) is not saved, and the last whole checkpoint stays the
resume point.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class StopFlag:
    """Set by Ctrl-C or SIGTERM while a run trains; the loop stops at the next iteration boundary."""

    def __init__(self) -> None:
        self.requested = False


class ForcedStop(KeyboardInterrupt):
    """A second Ctrl-C or SIGTERM: it may land half-way through an iteration, so nothing is saved and the
    last whole checkpoint stays the resume point."""


@contextmanager
def deferred_interrupts(flag: StopFlag) -> Iterator[None]:
    """While training, the first Ctrl-C or SIGTERM only sets `flag`, so the run stops between iterations
    (where its state is whole and resumes exactly); a second one stops at once, as ForcedStop. A first one
    that the block never acted on (it landed after the last iteration) is raised as the block ends: the run
    ended whole and is recorded as it ended, but the job must stop."""
    if threading.current_thread() is not threading.main_thread():  # signal handlers live in the main thread
        yield
        return

    def handler(signum: int, frame: object) -> None:
        if flag.requested:
            raise ForcedStop
        flag.requested = True

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
    if flag.requested:
        raise KeyboardInterrupt


@contextmanager
def signals_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait (pending) for the block to end, then are delivered."""
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
