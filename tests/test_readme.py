"""The README as a newcomer reads it: short, every docs page linked, and every `bench` command in it runs as
written (`bench run` with --dry-run on the synthetic set, the other commands with --help, which still refuses an
option that does not exist)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from tests.conftest import bench

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
# What the README's Slurm example reads from the environment, as one array task would have it.
ENVIRONMENT = {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "8"}


def readme_commands() -> list[str]:
    """Every `bench` command line in the README's fenced code blocks, continuation lines joined, trailing comments
    and `$VARIABLES` resolved."""
    commands = []
    for block in re.findall(r"^```[a-z]*\n(.*?)^```", README.read_text(), flags=re.M | re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line.startswith("bench "):
                commands.append(re.sub(r"\$\{?(\w+)\}?", lambda m: ENVIRONMENT[m.group(1)], line))
    return commands


def test_the_readme_is_short_and_has_commands() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= 250
    assert {"run", "report", "time", "models"} <= {shlex.split(c)[1] for c in readme_commands()}


def test_every_docs_page_is_linked_from_the_readme() -> None:
    text = README.read_text()
    unlinked = [p.name for p in sorted((ROOT / "docs").glob("*.md")) if f"](docs/{p.name}" not in text]
    assert not unlinked, f"docs pages the README does not link: {unlinked}"


def test_the_readme_pytest_is_the_fast_tests_and_ci_runs_the_slow_ones_too(request: pytest.FixtureRequest) -> None:
    blocks = re.findall(r"^```bash\n(.*?)^```", README.read_text(), flags=re.M | re.S)
    assert blocks[0].splitlines()[1] == "pytest"
    assert "pytest -m slow" in {re.sub(r"\s+#.*$", "", line) for block in blocks for line in block.splitlines()}
    addopts = request.config.getini("addopts")
    assert addopts[addopts.index("-m") + 1] == "not slow" and float(request.config.getini("timeout")) > 0
    ci = [line.split(" || ")[0] for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert "python3 -m pytest" in ci and "python3 -m pytest -m slow" in ci


@pytest.mark.slow
@pytest.mark.parametrize("command", readme_commands())
def test_each_readme_command_runs_as_written(command: str, data_dir: Path, tmp_path: Path) -> None:
    args = shlex.split(command)[1:]
    if args[0] == "run":
        # The grid the command plans, on the synthetic set so that no test needs the CIFAR copy or a download.
        args = _with(args, "--dataset", "synthetic")
        args = _with(args, "--data-dir", str(data_dir))
        args += [] if "--dry-run" in args else ["--dry-run"]
    else:
        args.append("--help")
    result = bench(*args)
    assert result.exit_code == 0, f"{command}\n{result.output}"
    if args[0] == "run":
        planned = [line for line in result.stdout.splitlines() if re.match(r"\S+-\d+-s\d+-[0-9a-f]{8}\s", line)]
        assert planned, result.output


def _with(args: list[str], option: str, value: str) -> list[str]:
    """`args` with `option` set to `value`, replacing what the README gave it."""
    if option in args:
        at = args.index(option)
        return [*args[:at + 1], value, *args[at + 2:]]
    return [*args, option, value]
