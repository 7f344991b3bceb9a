"""bench/ is grouped by job, and imports point one way (docs/architecture.md): a module imports its own
package's modules and those of the packages below it, never one above. Checked on the sources, lazy imports
inside functions included, so a climbing import fails here rather than as a circle at run time."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import bench

ROOT = Path(bench.__file__).parent
# From the ground up; `cli` (and `__main__`) stand on top of all of them.
FLOORS = ("core", "data", "results", "run", "timing", "report")


def _floor(module: str) -> int:
    """The floor of a bench module's dotted name: its package's place in FLOORS, the top for cli."""
    parts = module.split(".")
    return FLOORS.index(parts[1]) if len(parts) > 2 and parts[1] in FLOORS else len(FLOORS)


def _bench_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every bench module `path` imports, `from bench.x import y` naming bench.x.y where y is
    a module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.startswith("bench.")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "bench":
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                is_module = (ROOT.parent / (sub.replace(".", "/") + ".py")).exists()
                found.append((node.lineno, sub if is_module else node.module))
    return found


def test_every_module_of_bench_lies_in_a_package_of_its_job():
    loose = sorted(p.name for p in ROOT.glob("*.py"))
    assert loose == ["__init__.py", "__main__.py", "cli.py"]
    assert sorted(p.name for p in ROOT.iterdir() if p.is_dir() and p.name != "__pycache__") == sorted(FLOORS)


def test_no_import_climbs_to_a_package_above():
    climbs = []
    for path in sorted(ROOT.rglob("*.py")):
        module = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts)
        for line, imported in _bench_imports(path):
            if _floor(imported) > _floor(module):
                climbs.append(f"{path.relative_to(ROOT.parent)}:{line} imports {imported}")
    assert not climbs


@pytest.mark.parametrize("old, new", sorted(bench.MOVED.items()))
def test_an_old_import_path_gives_the_module_now_in_its_package(old, new):
    assert importlib.import_module(f"bench.{old}") is importlib.import_module(f"bench.{new}")
