"""Fixtures shared by every test: isolated PostgreSQL databases, RabbitMQ vhosts and
Redis key prefixes on the real local services, and ``require`` for visible skips.

In CI ``REQUIRE_ALL=1`` turns every "needs X" skip into a failure, so a missing
service, engine or browser can never pass silently.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import psycopg
import pytest
import redis

from tests.netfault import FaultProxy
from tests.support import (
    AMQP_HOST,
    NO_ENGINE,
    PG_ADMIN_URL,
    REDIS_HOST_URL,
    create_vhost,
    delete_vhost,
    docker_engine_reachable,
    require,
    unique_name,
)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database with the project's migrations applied; dropped afterwards."""
    from services.migrate import migrate

    name = unique_name("db")
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True)
    except psycopg.OperationalError as exc:
        require(False, f"PostgreSQL unreachable at {PG_ADMIN_URL}: {exc}")
        raise
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = psycopg.conninfo.make_conninfo(PG_ADMIN_URL, dbname=name)
    migrate(url)
    yield url
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def amqp_url() -> Iterator[str]:
    """A fresh RabbitMQ vhost for guest; deleted afterwards."""
    vhost = create_vhost()
    yield f"amqp://guest:guest@{AMQP_HOST}/{vhost}"
    delete_vhost(vhost)


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix of this test's own on DBs 2 (state) and 3 (cache), cleaned up afterwards."""
    prefix = unique_name("rk") + ":"
    clients = [redis.Redis.from_url(f"{REDIS_HOST_URL}/{db}") for db in (2, 3)]
    try:
        clients[0].ping()
    except redis.ConnectionError as exc:
        require(False, f"Redis unreachable at {REDIS_HOST_URL}: {exc}")
    yield prefix
    for client in clients:
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            client.delete(key)
        client.close()


@pytest.fixture
def service_env(
    pg_url: str, amqp_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    """Environment pointing every service setting at this test's own database, vhost and prefix.

    Applied to this process (and so to ``get_settings()``) and returned for subprocesses.
    """
    from services.settings import get_settings

    env = {
        "DATABASE_URL": pg_url,
        "BROKER_URL": amqp_url,
        "REDIS_URL": f"{REDIS_HOST_URL}/2",
        "CACHE_REDIS_URL": f"{REDIS_HOST_URL}/3",
        "REDIS_PREFIX": redis_prefix,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    yield env
    get_settings.cache_clear()


@pytest.fixture
def fault_proxy() -> Iterator[Callable[[str, int], FaultProxy]]:
    """A factory of :class:`tests.netfault.FaultProxy` in front of a real service; every proxy
    it made is closed after the test."""
    proxies: list[FaultProxy] = []

    def make(host: str, port: int) -> FaultProxy:
        proxy = FaultProxy(host, port)
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()


@pytest.fixture(scope="session")
def compose_images() -> None:
    """The compose stack's images (``FLASHSALE_APP_TAG``, default ``local``), built once per
    session, offline from the wheelhouse: a no-op when they are current (Docker's cache), so
    every test that runs them can ask for it instead of relying on another test's build."""
    require(docker_engine_reachable(), NO_ENGINE)
    from loadtest.stack import ComposeStack

    started = time.monotonic()
    ComposeStack(project=unique_name("build")).build(offline=True)
    print(f"\ncompose images built in {time.monotonic() - started:.0f} s")
