"""Ctrl-C, SIGTERM and SIGHUP: the one module that installs or masks signal handlers. While a run trains, the
first one stops the loop between iterations, a second one at once; elsewhere SIGTERM and SIGHUP raise
KeyboardInterrupt as Ctrl-C does (stop_like_ctrl_c), caught where a command saves its work.

Between iterations a run's state is whole, so a checkpoint made there resumes exactly; a stop that lands
anywhere else (half-way through an optimizer step) is not saved, and the last whole checkpoint stays the
resume point. SIGTERM (a scheduler's stop) and SIGHUP (a closed terminal, a dropped ssh connection) are
Ctrl-C to bench; only the exit code says which it was (129 for SIGHUP, as a shell reports it).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


# The signals that stop bench as Ctrl-C does.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_received: list[int] = []  # the stop signals this process has received, first first


def stop_like_ctrl_c() -> None:
    """From now on SIGTERM and SIGHUP raise KeyboardInterrupt, as Ctrl-C does (outside a run's training, where
    deferred_interrupts takes them): the work saves, the run is recorded interrupted, the user is told how to
    resume. Without it SIGHUP ends the process where it stands, the run left `running`."""

    def handler(signum: int, frame: object) -> None:
        _received.append(signum)
        raise KeyboardInterrupt

    for sig in STOP_SIGNALS[1:]:
        signal.signal(sig, handler)


def hung_up() -> bool:
    """Whether this process has received SIGHUP: its terminal may be gone, and writing to it fails (EIO)."""
    return signal.SIGHUP in _received


def exit_code() -> int:
    """The exit code of a process stopped by a stop signal: 129 after SIGHUP, else 130 (Ctrl-C and SIGTERM
    alike, as bench has always said)."""
    return 128 + signal.SIGHUP if hung_up() else 130


class StopFlag:
    """Set by Ctrl-C, SIGTERM or SIGHUP while a run trains; the loop stops at the next iteration boundary."""

    def __init__(self) -> None:
        self.requested = False


class ForcedStop(KeyboardInterrupt):
    """A second Ctrl-C, SIGTERM or SIGHUP: it may land half-way through an iteration, so nothing is saved and the
    last whole checkpoint stays the resume point."""


@contextmanager
def deferred_interrupts(flag: StopFlag) -> Iterator[None]:
    """While training, the first Ctrl-C, SIGTERM or SIGHUP only sets `flag`, so the run stops between
    iterations (where its state is whole and resumes exactly); a second one stops at once, as ForcedStop. A
    first one that the block never acted on (it landed after the last iteration) is raised as the block ends:
    the run ended whole and is recorded as it ended, but the job must stop."""
    if threading.current_thread() is not threading.main_thread():  # signal handlers live in the main thread
        yield
        return

    def handler(signum: int, frame: object) -> None:
        _received.append(signum)
        if flag.requested:
            raise ForcedStop
        flag.requested = True

    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
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
    """Ctrl-C, SIGTERM and SIGHUP wait (pending) for the block to end, then are delivered."""
    held = set(STOP_SIGNALS)
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
