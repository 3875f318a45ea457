"""Helpers shared by the test suite: where the real local services are, visible skips,
unique names, free ports, polling, RabbitMQ vhosts.

Imported as ``tests.support`` (pytest puts the repository root on ``sys.path``); the
fixtures built on them live in ``tests/conftest.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import importlib
import os
import random
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

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


def require_module(name: str) -> ModuleType:
    """Import ``name``, or skip naming it (a failure under REQUIRE_ALL=1)."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        require(False, f"Python module {name} not importable: {exc}")
        raise


def unique_name(kind: str) -> str:
    """A name no other test run uses: ``t_<kind>_<hex>``."""
    return f"t_{kind}_{uuid.uuid4().hex[:10]}"


_EPHEMERAL_LOW = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
_PORT_LOCKS = Path(tempfile.gettempdir()) / "flashsale-test-ports"
_held_port_locks: list[object] = []


def _reserve(port: int) -> bool:
    """Take the machine-wide lock of ``port`` for the life of this process, if it is free.

    Two test processes (or CI beside a developer's run) could otherwise both pick the same
    port between choosing it and their server binding it.
    """
    _PORT_LOCKS.mkdir(exist_ok=True)
    lock = (_PORT_LOCKS / str(port)).open("w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        return False
    _held_port_locks.append(lock)
    return True


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """Loopback TCP ports for servers the test starts, distinct and free right now.

    They are drawn below the kernel's ephemeral range, so no outgoing connection can be
    given one between this call and the server's bind (the race a port from ``bind(0)``
    has), and each is locked machine-wide for this process's life so that no other test
    process picks it meanwhile.
    """
    ports: list[int] = []
    candidates = list(range(20_000, _EPHEMERAL_LOW))
    random.shuffle(candidates)
    for port in candidates:
        if len(ports) == count:
            break
        if port not in ports and _bindable(port) and _reserve(port):
            ports.append(port)
    if len(ports) < count:
        raise RuntimeError(f"only {len(ports)} of {count} free ports below the ephemeral range")
    return ports


def free_port() -> int:
    """A loopback TCP port for a server the test starts (see :func:`free_ports`)."""
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


async def wait_until_async(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """:func:`wait_until` for async tests: polls without blocking the event loop."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.05)


def set_policy(vhost: str, name: str, pattern: str, definition: str) -> None:
    """A RabbitMQ policy on ``vhost``'s queues matching ``pattern`` (JSON ``definition``)."""
    subprocess.run(
        [_rabbitmqctl(), "-q", "set_policy", "-p", vhost, name, pattern, definition,
         "--apply-to", "queues"],
        check=True,
        capture_output=True,
    )  # fmt: skip


@contextlib.contextmanager
def serve_asgi(app: Any) -> Iterator[str]:
    """Serve ``app`` (lifespan included) with uvicorn on a free port, in a thread of this
    process; yields its base URL, and stops it afterwards. For clients that need a real
    socket: a browser, a tool in a subprocess."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name=f"uvicorn:{port}", daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive(), 60, "uvicorn to start")
        assert server.started, "uvicorn exited during startup (its log is above)"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


CHROMIUM = "/usr/bin/chromium"
"""Debian's Chromium, which Playwright drives (``make system-deps`` installs it)."""
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def launch_chromium(playwright: Any) -> Any:
    """A headless Chromium from a ``sync_playwright()`` context, or a visible skip."""
    require(
        shutil.which(CHROMIUM) or os.path.exists(CHROMIUM),
        f"{CHROMIUM} not found (Debian chromium)",
    )
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
