"""The checks of an option's value, each a one-line ModelConfigError naming what would do.

Defined here, below everything, because bench checks its own options with them too: bench.core.errors raises
the same messages as its BenchError.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


class ModelConfigError(ValueError):
    """An invalid model option; the message is one line naming the valid choices (the CLI prints it as is)."""


def check_choice(name: str, value: object, choices: Sequence[object]) -> None:
    """A ModelConfigError unless `value` is one of `choices`, naming them."""
    if value not in choices:
        raise ModelConfigError(f"unknown {name} {value!r}: choose one of {', '.join(map(str, choices))}")


def check_positive(name: str, value: object, *, integer: bool = False, detail: str = "", fix: str = "") -> None:
    """A ModelConfigError unless `value` is a positive number: finite, since nan and inf compare false with
    everything; with `integer` an int below 2**63, as torch sizes and parquet counts are int64. `detail`
    follows the kind in the message (" of minutes"), `fix` the value."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if integer:
        ok = number and isinstance(value, int) and 1 <= value < 2**63
    else:
        ok = number and math.isfinite(value) and value > 0  # type: ignore[arg-type]
    if not ok:
        kind = "integer" if integer else "finite number"
        raise ModelConfigError(f"{name} must be a positive {kind}{detail}, got {value!r}{fix}")
