"""Data: finding a dataset, decoding and caching it (or streaming it from disk), and batches on the device.

`bench.data.load_dataset` and the names beside it are bench.data.data's, as they were before the package."""

from bench.data.data import *  # noqa: F403
from bench.data.data import __all__  # noqa: F401

