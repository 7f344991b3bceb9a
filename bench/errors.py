"""The one exception type the CLI turns into a one-line message and exit code 2."""


class BenchError(Exception):
    """A problem the user can fix (bad input, missing data, unwritable folder).

    The message is shown as-is on one line, so it should say what is wrong and how to fix it.
    """
