"""The README stays true: its example runs and prints what it says, its settings table
is the one the settings object produces, and its error-code table lists every code the
api's code can answer."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_gmpworker_example_prints_what_the_readme_says() -> None:
    """The first Python block runs in a fresh interpreter and prints its commented result."""
    block = re.search(r"```python\n(.*?)```", README, re.S)
    assert block, "README has no Python example"
    expected = re.search(r"# (\[.*\])\s*$", block.group(1).strip())
    assert expected, "the example's last line should comment its output"
    result = subprocess.run(
        [sys.executable, "-c", block.group(1)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected.group(1)


def test_settings_table_matches_the_settings_object() -> None:
    """Regenerate with ``python -m services.settings`` when a setting changes."""
    from services.settings import markdown_table

    section = re.search(
        r"<!-- settings-table:start -->\n(.*?)\n<!-- settings-table:end -->", README, re.S
    )
    assert section, "README lost its settings-table markers"
    assert section.group(1) == markdown_table()


_CODE_ARGUMENT = {"ApiError": 1, "error_response": 1, "unavailable": 0}
"""Where the error code is among the arguments of each way to answer an error."""


def error_codes_in(directory: Path) -> set[str]:
    """The literal codes of every ``ApiError(status, code)``, ``error_response(status, code)``
    and ``unavailable(code)`` call under ``directory``."""
    codes = set()
    for path in directory.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            index = _CODE_ARGUMENT.get(str(name))
            if index is None or len(node.args) <= index:
                continue
            argument = node.args[index]
            if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
                codes.add(argument.value)
    return codes


def test_error_code_table_lists_every_code_of_the_api() -> None:
    section = re.search(
        r"<!-- error-codes:start -->\n(.*?)\n<!-- error-codes:end -->", README, re.S
    )
    assert section, "README lost its error-codes markers"
    listed = set(re.findall(r"^\| \d{3} \| `([a-z_]+)` \|", section.group(1), re.M))
    answered = error_codes_in(ROOT / "services" / "api")
    assert {"unauthorized", "sold_out", "validation_error", "overloaded"} <= answered
    assert not answered - listed, f"codes missing from the README: {sorted(answered - listed)}"
