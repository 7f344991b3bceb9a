"""`bench time`: one phase measured (measure), the sweep over nets, devices and precisions (timing), its rows.

`bench.timing.sweep(TimeConfig(...))` is bench.timing.timing's, as it was before the package."""

from bench.timing.timing import *  # noqa: F403
from bench.timing.timing import __all__  # noqa: F401
