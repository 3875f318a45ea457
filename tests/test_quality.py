"""The project's own style gates, run as tests so CI enforces them: ruff (lint and
format) over the tree, and mypy (strict) over gmpworker, services and loadtest."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@pytest.mark.parametrize(
    "command",
    [
        ["ruff", "check", "--no-cache", "."],
        ["ruff", "format", "--no-cache", "--check", "."],
        ["mypy", "--no-incremental"],
    ],
    ids=["ruff-lint", "ruff-format", "mypy"],
)
def test_tool_is_clean(command: list[str]) -> None:
    """Each tool exits 0 on the repository; its output is the failure message."""
    tool = BIN / command[0]
    assert tool.exists(), f"{command[0]} is not installed next to {sys.executable}"
    result = subprocess.run(
        [str(tool), *command[1:]], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr


_SKIPPERS = {"skip", "skipif", "xfail"}


def _skip_calls(path: Path) -> list[str]:
    """Uses of pytest's skip helpers (skip, skipif, xfail, import-or-skip) in one file, as
    ``file:line``."""
    tree = ast.parse(path.read_text(), str(path))
    return [
        f"{path.relative_to(ROOT)}:{node.lineno} pytest...{node.attr}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and (node.attr in _SKIPPERS or node.attr.endswith("orskip"))
    ]


def test_every_skip_goes_through_require() -> None:
    """Only ``tests.support.require`` may skip: it alone turns into a failure under
    REQUIRE_ALL=1, so nothing CI was meant to run can pass there as skipped."""
    found = [
        hit
        for path in sorted((ROOT / "tests").rglob("*.py"))
        if path.name != "support.py"
        for hit in _skip_calls(path)
    ]
    assert not found, "skips that bypass require():\n" + "\n".join(found)
