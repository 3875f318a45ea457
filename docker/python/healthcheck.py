#!/usr/bin/env python3
"""Container healthchecks for the Python services (slim images have no curl).

``healthcheck http URL``            the URL answers 2xx within 3 s (api, reconciler, locust UI)
``healthcheck fresh PATH SECONDS``  PATH was modified in the last SECONDS (worker heartbeat;
                                    ``celery inspect ping`` reports a busy worker unhealthy)
``healthcheck connected PORT``      an established TCP connection to remote PORT exists
                                    (a locust worker attached to its master)
``healthcheck import MODULE``       MODULE imports (one-shot jobs: the image is sound)

Exit status 0 is healthy, 1 unhealthy, with the reason on stderr.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

_TCP_ESTABLISHED = "01"


def check_http(url: str) -> str | None:
    """None when ``url`` answers with a 2xx status, else the reason."""
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            status = int(response.status)
    except OSError as exc:
        return f"{url}: {exc}"
    return None if 200 <= status < 300 else f"{url}: HTTP {status}"


def check_fresh(path: str, seconds: str) -> str | None:
    """None when ``path`` was modified less than ``seconds`` ago, else the reason."""
    try:
        age = time.time() - os.path.getmtime(path)
    except OSError as exc:
        return f"{path}: {exc}"
    return None if age <= float(seconds) else f"{path}: last beat {age:.0f} s ago"


def check_connected(port: str) -> str | None:
    """None when a TCP connection to remote ``port`` is established, else the reason."""
    wanted = f"{int(port):04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        rows = Path(table).read_text().splitlines()[1:] if Path(table).exists() else []
        for row in rows:
            fields = row.split()
            if fields[2].rsplit(":", 1)[1] == wanted and fields[3] == _TCP_ESTABLISHED:
                return None
    return f"no established connection to port {port}"


def check_import(module: str) -> str | None:
    """None when ``module`` imports, else the reason."""
    try:
        importlib.import_module(module)
    except Exception as exc:  # any import failure means the image is broken
        return f"import {module}: {exc!r}"
    return None


CHECKS: dict[str, Callable[..., str | None]] = {
    "http": check_http,
    "fresh": check_fresh,
    "connected": check_connected,
    "import": check_import,
}


def main(argv: list[str]) -> int:
    """Run the check named by ``argv[0]`` with the remaining arguments."""
    if not argv or argv[0] not in CHECKS:
        print(__doc__, file=sys.stderr)
        return 2
    reason = CHECKS[argv[0]](*argv[1:])
    if reason is not None:
        print(f"unhealthy: {reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
