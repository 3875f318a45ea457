"""Helpers shared by the test suite: where the real local services are, visible skips,
unique names, free ports, polling, RabbitMQ vhosts.

Imported as ``tests.support`` (pytest puts the repository root on ``sys.path``); the
fixtures built on them live in ``tests/conftest.py``.
"""

from __future__ import annotations

import asyncio
import atexit
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


def docker_engine_reachable() -> bool:
    """Whether a Docker engine answers here."""
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0


def docker_image_present(image: str) -> bool:
    """Whether the Docker engine has ``image`` (name:tag)."""
    inspect = subprocess.run(["docker", "image", "inspect", image], capture_output=True)
    return inspect.returncode == 0


NO_ENGINE = "no Docker engine reachable (run scripts/docker-engine-up as root)"


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


VHOST_BATCH = 8
"""Vhosts made per ``rabbitmqctl`` call: each call boots an Erlang VM (about 0.7 s here),
which per test (add, set permissions, delete: three calls) cost the suite more than a
minute."""
_spare_vhosts: list[str] = []
_released_vhosts: list[str] = []
_vhost_lock = threading.Lock()


def _erlang_list(names: list[str]) -> str:
    # unique_name() yields [a-z0-9_] only: safe inside an Erlang binary literal.
    return "[" + ", ".join(f'<<"{name}">>' for name in names) + "]"


def _rabbitmq_eval(expression: str) -> bool:
    """Run an Erlang expression in the broker node; whether it answered ``ok``."""
    done = subprocess.run(
        [_rabbitmqctl(), "-q", "eval", expression], capture_output=True, text=True
    )
    return done.returncode == 0 and done.stdout.strip() == "ok"


def _add_vhosts(names: list[str]) -> None:
    """Add ``names`` with every permission for guest: one call, or the plain commands if the
    broker's internal functions ever differ."""
    expression = (
        '[begin rabbit_vhost:add(V, <<"tests">>), rabbit_auth_backend_internal:set_permissions('
        '<<"guest">>, V, <<".*">>, <<".*">>, <<".*">>, <<"tests">>) end'
        f" || V <- {_erlang_list(names)}], ok."
    )
    if _rabbitmq_eval(expression):
        return
    ctl = _rabbitmqctl()
    for name in names:
        subprocess.run([ctl, "-q", "add_vhost", name], check=True, capture_output=True)
        subprocess.run(
            [ctl, "-q", "set_permissions", "-p", name, "guest", ".*", ".*", ".*"],
            check=True,
            capture_output=True,
        )


def _delete_vhosts(names: list[str]) -> None:
    expression = f'[rabbit_vhost:delete(V, <<"tests">>) || V <- {_erlang_list(names)}], ok.'
    if names and not _rabbitmq_eval(expression):
        for name in names:
            subprocess.run([_rabbitmqctl(), "-q", "delete_vhost", name], capture_output=True)


@atexit.register
def _delete_every_vhost_made() -> None:
    with _vhost_lock:
        names = _released_vhosts + _spare_vhosts
        _released_vhosts.clear()
        _spare_vhosts.clear()
    _delete_vhosts(names)


def create_vhost() -> str:
    """A fresh RabbitMQ vhost that guest may use; returns its name.

    Made VHOST_BATCH at a time; every one made is deleted when this process exits.
    """
    with _vhost_lock:
        if not _spare_vhosts:
            batch = [unique_name("vh") for _ in range(VHOST_BATCH)]
            _add_vhosts(batch)
            _spare_vhosts.extend(batch)
        return _spare_vhosts.pop()


def delete_vhost(vhost: str) -> None:
    """Give back a vhost made by :func:`create_vhost`: it is deleted, with every queue in
    it, together with the others when this process exits (one ``rabbitmqctl`` call)."""
    with _vhost_lock:
        _released_vhosts.append(vhost)


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
