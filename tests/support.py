"""Helpers shared by the test suite: where the real local services are, visible skips,
unique names, free ports, polling, RabbitMQ vhosts.

Imported as ``tests.support`` (pytest puts the repository root on ``sys.path``); the
fixtures built on them live in ``tests/conftest.py``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable

import pytest

REQUIRE_ALL = os.environ.get("REQUIRE_ALL") == "1"
"""Set by CI: every "needs X" skip becomes a failure."""

PG_ADMIN_URL = os.environ.get("TEST_PG_ADMIN_URL", "postgresql://root@127.0.0.1:5432/postgres")
REDIS_HOST_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379")
AMQP_HOST = os.environ.get("TEST_AMQP_HOST", "127.0.0.1:5672")


def require(condition: object, reason: str) -> None:
    """Skip with ``reason`` unless ``condition`` holds; fail instead under REQUIRE_ALL=1."""
    if condition:
        return
    if REQUIRE_ALL:
        pytest.fail(f"required but missing (REQUIRE_ALL=1): {reason}")
    pytest.skip(reason)


def unique_name(kind: str) -> str:
    """A name no other test run uses: ``t_<kind>_<hex>``."""
    return f"t_{kind}_{uuid.uuid4().hex[:10]}"


def free_ports(count: int) -> list[int]:
    """Loopback TCP ports nobody listens on right now (held open together so they differ)."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    return free_ports(1)[0]


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` until true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def _rabbitmqctl() -> str:
    ctl = shutil.which("rabbitmqctl")
    require(ctl, "rabbitmqctl not found: RabbitMQ is not installed here")
    assert ctl is not None
    return ctl


def create_vhost() -> str:
    """A fresh RabbitMQ vhost that guest may use; returns its name."""
    ctl = _rabbitmqctl()
    vhost = unique_name("vh")
    subprocess.run([ctl, "-q", "add_vhost", vhost], check=True, capture_output=True)
    subprocess.run(
        [ctl, "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
        check=True,
        capture_output=True,
    )
    return vhost


def delete_vhost(vhost: str) -> None:
    """Remove a vhost made by :func:`create_vhost` (and every queue in it)."""
    subprocess.run([_rabbitmqctl(), "-q", "delete_vhost", vhost], capture_output=True)
