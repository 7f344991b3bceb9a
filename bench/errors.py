"""The one exception type the CLI turns into a one-line message and exit code 2, and the checks that raise it.

Also `Notify`, what every layer is handed to say one-line things to the user, so that no layer prints.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

Notify = Callable[[str], None]  # takes one sentence for the user (a notice, a warning); prints nothing itself


class BenchError(Exception):
    """A problem the user can fix (bad input, missing data, unwritable folder).

    The message is shown as-is on one line, so it should say what is wrong and how to fix it.
    """


def is_out_of_memory(error: BaseException) -> bool:
    """Whether `error` is torch running out of memory: torch.OutOfMemoryError (CUDA) or the CPU allocator's
    RuntimeError. Told apart by message, so this module need not import torch."""
    text = str(error)
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def out_of_memory_on(error: BaseException, device: object) -> str:
    """Which memory ran out in `error` (an `is_out_of_memory` one) during work meant for `device`: the CPU
    allocator's message means host memory whatever the device (a model is built on the CPU, then moved),
    so "cpu"; anything else is `device`'s."""
    return "cpu" if "can't allocate memory" in str(error) else str(device)


def check_choice(name: str, value: object, choices: Sequence[str]) -> None:
    """A BenchError unless `value` is one of `choices`, for the plain-function API: the CLI's enums refuse
    other values before any of this runs, and the networks' own names are resnet's to check."""
    if value not in choices:
        raise BenchError(f"unknown {name} {value!r}: choose one of {', '.join(choices)}")


def check_positive(name: str, value: object, *, integer: bool = False, detail: str = "", fix: str = "") -> None:
    """A BenchError unless `value` is None (the default applies) or a positive number: finite, since nan and
    inf compare false with everything; with `integer` an int below 2**63. `detail` follows the kind in the message
    (" of minutes"), `fix` the value."""
    if value is None:
        return
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if integer:  # below 2**63: parquet stores counts as int64
        ok = number and isinstance(value, int) and 1 <= value < 2**63
    else:
        ok = number and math.isfinite(value) and value > 0  # type: ignore[arg-type]
    if not ok:
        kind = "integer" if integer else "finite number"
        raise BenchError(f"{name} must be a positive {kind}{detail}, got {value!r}{fix}")


def first_line(error: BaseException, limit: int | None = None) -> str:
    """The first line of `error`'s message (at most `limit` characters), or its type's name when it has none:
    what a one-line message quotes of an exception."""
    text = str(error).strip()
    return text.splitlines()[0][:limit] if text else type(error).__name__
