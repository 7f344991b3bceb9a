"""bench.core.interrupts is the one module that handles signals, and each command catches a stop in one place
(docs/architecture.md): checked on the sources, so a handler added elsewhere fails here, not in a lost run."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import bench

SOURCES = sorted(Path(bench.__file__).parent.rglob("*.py"))

# Where a stop (Ctrl-C, SIGTERM, SIGHUP: a KeyboardInterrupt) is caught and not raised on: `bench run` in the
# run's life, then the CLI's one line and exit code; `bench time` in its sweep.
CATCHERS = {("train.py", "train_run"), ("cli.py", "wrapper"), ("timing.py", "sweep")}


def _handlers(path: Path) -> Iterator[tuple[str, ast.ExceptHandler]]:
    """Each except clause of `path` with the name of the function it lies in."""

    def walk(node: ast.AST, function: str) -> Iterator[tuple[str, ast.ExceptHandler]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ExceptHandler):
                yield function, child
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
            yield from walk(child, inner)

    yield from walk(ast.parse(path.read_text(), str(path)), "<module>")


def _names(handler: ast.ExceptHandler) -> set[str]:
    """The exception class names an except clause catches ('' for a bare `except:`)."""
    if handler.type is None:
        return {""}
    kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return {kind.id if isinstance(kind, ast.Name) else getattr(kind, "attr", "") for kind in kinds}


def test_no_module_but_interrupts_touches_signals():
    importers = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            modules = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                       else [node.module] if isinstance(node, ast.ImportFrom) else [])
            if "signal" in modules:
                importers.append(path.name)
    assert importers == ["interrupts.py"]


def test_a_stop_is_caught_only_where_each_command_saves_its_work():
    catchers, swallowers = set(), []
    for path in SOURCES:
        for function, handler in _handlers(path):
            names = _names(handler)
            if names & {"KeyboardInterrupt", "ForcedStop"}:
                catchers.add((path.name, function))
            # A clean-up (close a descriptor, remove a temporary file) may catch everything, if it raises it on.
            if names & {"", "BaseException"} and not any(isinstance(node, ast.Raise) and node.exc is None
                                                        for node in ast.walk(handler)):
                swallowers.append(f"{path.name}:{handler.lineno}")
    assert catchers == CATCHERS
    assert not swallowers
