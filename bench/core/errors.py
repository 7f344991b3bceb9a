"""The one exception type the CLI turns into a one-line message and exit code 2, and the checks that raise it.

Also `Notify`, what every layer is handed to say one-line things to the user, so that no layer prints.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from resnet import checks

Notify = Callable[[str], None]  # takes one sentence for the user (a notice, a warning); prints nothing itself


class BenchError(Exception):
    """A problem the user can fix (bad input, missing data, unwritable folder).

    The message is shown as-is on one line, so it should say what is wrong and how to fix it.
    """


def is_out_of_memory(error: BaseException) -> bool:
    """Whether `error` is torch running out of memory: torch.OutOfMemoryError (CUDA) or the CPU allocator's
    RuntimeError. Told apart by message: the CPU allocator's is a plain RuntimeError."""
    text = str(error)
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def out_of_memory_on(error: BaseException, device: object) -> str:
    """Which memory ran out in `error` (an `is_out_of_memory` one) during work meant for `device`: the CPU
    allocator's message means host memory whatever the device (a model is built on the CPU, then moved),
    so "cpu"; anything else is `device`'s."""
    return "cpu" if "can't allocate memory" in str(error) else str(device)


@contextmanager
def model_errors() -> Iterator[None]:
    """resnet's ModelConfigError (an invalid option, one line naming what would do) as a BenchError."""
    try:
        yield
    except checks.ModelConfigError as error:
        raise BenchError(str(error)) from None


def check_choice(name: str, value: object, choices: Sequence[str]) -> None:
    """A BenchError unless `value` is one of `choices` (resnet.checks.check_choice), for the plain-function
    API: the CLI's enums refuse other values before any of this runs, and the networks' own names are
    resnet's to check."""
    with model_errors():
        checks.check_choice(name, value, choices)


def check_positive(name: str, value: object, *, integer: bool = False, detail: str = "", fix: str = "") -> None:
    """A BenchError unless `value` is None (the default applies) or a positive number
    (resnet.checks.check_positive: `integer`, `detail` and `fix` are its)."""
    if value is not None:
        with model_errors():
            checks.check_positive(name, value, integer=integer, detail=detail, fix=fix)


def first_line(error: BaseException, limit: int | None = None) -> str:
    """The first line of `error`'s message (at most `limit` characters), or its type's name when it has none:
    what a one-line message quotes of an exception."""
    text = str(error).strip()
    return text.splitlines()[0][:limit] if text else type(error).__name__
