"""The app image's Python requirements and constraints, read from the project's files.

``requirements PYPROJECT`` prints what the image installs: the ``services`` extra and,
of the ``loadtest`` extra, locust alone (the stack driver, plots and terminal UI run
on the host). ``constraints LOCK`` prints the ``name==version`` pins of a lock file
(``pip freeze`` output), dropping editable and direct-URL lines, which pip refuses as
constraints (the project itself appears so once installed with ``pip install -e``).

Used by ``scripts/wheelhouse.sh`` on the host and by the image build (Debian's python3
3.11 has ``tomllib``), so both agree on the list.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

IMAGE_EXTRAS = ("services",)
IMAGE_PICKS = {"loadtest": ("locust",)}
_PIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[^\]]*\])?==\S+$")


def requirement_name(requirement: str) -> str:
    """The normalised distribution name of a PEP 508 requirement string."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def image_requirements(pyproject: Path) -> list[str]:
    """The requirements the app image installs, in pyproject order."""
    extras = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
    chosen = [req for name in IMAGE_EXTRAS for req in extras[name]]
    for extra, names in IMAGE_PICKS.items():
        chosen += [req for req in extras[extra] if requirement_name(req) in names]
    return chosen


def lock_pins(lock: Path) -> list[str]:
    """The ``name==version`` lines of a ``pip freeze`` lock, comments and URLs left out."""
    lines = (line.split("#", 1)[0].strip() for line in lock.read_text().splitlines())
    return [line for line in lines if _PIN.match(line)]


def main(argv: list[str]) -> None:
    """Command line: ``requirements PYPROJECT`` or ``constraints LOCK``."""
    commands = {"requirements": image_requirements, "constraints": lock_pins}
    if len(argv) != 2 or argv[0] not in commands:
        sys.exit("usage: requirements.py requirements PYPROJECT | constraints LOCK")
    print("\n".join(commands[argv[0]](Path(argv[1]))))


if __name__ == "__main__":
    main(sys.argv[1:])
