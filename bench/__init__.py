"""resnet-bench: train, time and draw plain vs residual networks (He et al., 2015).

The package is grouped by job, each subpackage importing only those before it (docs/architecture.md):
core (errors, files, records, config), data, results, run, timing, report, and cli on top.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

# Where each module stood before bench/ was grouped by job: `import bench.store` and `from bench.train import
# train_run` still give the very module they gave then (bench.data, bench.timing and bench.report are packages
# now, whose faces hand on the names the old modules were used for).
MOVED = {name: f"{package}.{name}" for package, names in {
    "core": "errors files provenance records interrupts allocator modes config",
    "data": "sources synthetic decoding cache loader views streaming",
    "results": "store chunks fitting prose",
    "run": "step distributed layers train progress planner grid workers summary",
    "timing": "measure timing_rows",
    "report": "tables plots styles analyze catalog"}.items() for name in names.split()}


class _OldPaths(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports `bench.<old name>` as the module now at `bench.<package>.<name>`, the same object."""

    def find_spec(self, fullname, path, target=None):
        package, _, name = fullname.rpartition(".")
        if package == __name__ and name in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return None  # a placeholder, replaced in sys.modules by the real module below

    def exec_module(self, module):
        # The import system hands on whatever sys.modules holds under the name once this returns.
        name = module.__name__.rpartition(".")[2]
        sys.modules[module.__name__] = importlib.import_module(f"{__name__}.{MOVED[name]}")


sys.meta_path.insert(0, _OldPaths())  # before an editable install's finder, which maps bench.* to its own folder
