"""The one exception type the CLI turns into a one-line message and exit code 2."""


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


def first_line(error: BaseException, limit: int | None = None) -> str:
    """The first line of `error`'s message (at most `limit` characters), or its type's name when it has none:
    what a one-line message quotes of an exception."""
    text = str(error).strip()
    return text.splitlines()[0][:limit] if text else type(error).__name__
