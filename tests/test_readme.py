"""The README stays true: its example runs and prints what it says, and its settings
table is the one the settings object produces."""

from __future__ import annotations

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
