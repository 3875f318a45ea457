"""Fixtures shared by every test: isolated PostgreSQL databases, RabbitMQ vhosts and
Redis key prefixes on the real local services, and ``require`` for visible skips.

In CI ``REQUIRE_ALL=1`` turns every "needs X" skip into a failure, so a missing
service, engine or browser can never pass silently.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator

import pytest

REQUIRE_ALL = os.environ.get("REQUIRE_ALL") == "1"
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


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database with the project's migrations applied; dropped afterwards."""
    psycopg = pytest.importorskip("psycopg")
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
    ctl = shutil.which("rabbitmqctl")
    require(ctl, "rabbitmqctl not found: RabbitMQ is not installed here")
    vhost = unique_name("vh")
    subprocess.run([ctl, "-q", "add_vhost", vhost], check=True, capture_output=True)
    subprocess.run(
        [ctl, "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
        check=True,
        capture_output=True,
    )
    yield f"amqp://guest:guest@{AMQP_HOST}/{vhost}"
    subprocess.run([ctl, "-q", "delete_vhost", vhost], capture_output=True)


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix of this test's own on DBs 2 (state) and 3 (cache), cleaned up afterwards."""
    redis = pytest.importorskip("redis")
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
