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
