"""Fixtures of the api tests: the app in-process (httpx + ASGITransport, lifespan run),
on this test's own PostgreSQL database and Redis prefix, with a seeded demo catalog.

Tests that need the broker ask for ``broker_api``; the others point ``BROKER_URL`` at a
closed port so that they do not pay for a RabbitMQ vhost.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from apitest_support import (
    ADMIN_TOKEN,
    CATALOG_ITEMS,
    CATALOG_STOCK,
    REDIS_HOST_URL,
    Api,
    BrokerQueue,
    dead_url,
    running_api,
)
from kombu import Connection
from pydantic import SecretStr

from services.catalog import seed
from services.settings import Settings


@pytest.fixture
def anyio_backend() -> str:
    """The api runs on asyncio (uvloop in production)."""
    return "asyncio"


@pytest.fixture
def settings(pg_url: str, redis_prefix: str) -> Settings:
    """Settings on this test's database and prefix (Redis DBs 2/3), demo catalog seeded,
    admin routes behind ``ADMIN_TOKEN``."""
    seed(pg_url, CATALOG_ITEMS, CATALOG_STOCK)
    return Settings(
        database_url=pg_url,
        redis_url=f"{REDIS_HOST_URL}/2",
        cache_redis_url=f"{REDIS_HOST_URL}/3",
        redis_prefix=redis_prefix,
        broker_url=dead_url("amqp"),
        publish_timeout_seconds=2.0,
        admin_token=SecretStr(ADMIN_TOKEN),
        # The in-process tests fire hundreds of requests at once on purpose (races):
        # admission control has its own tests.
        order_admission_limit=10_000,
    )


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[Api]:
    """The api with no reachable broker."""
    async for running in running_api(settings):
        yield running


@pytest.fixture
def broker_settings(settings: Settings, amqp_url: str) -> Settings:
    """:func:`settings` with this test's RabbitMQ vhost."""
    return settings.model_copy(update={"broker_url": amqp_url})


@pytest.fixture
async def broker_api(broker_settings: Settings) -> AsyncIterator[Api]:
    """The api with a reachable broker."""
    async for running in running_api(broker_settings):
        yield running


@pytest.fixture
def queue(amqp_url: str) -> Iterator[BrokerQueue]:
    """Read what the api published on this test's vhost."""
    with Connection(amqp_url) as conn:
        yield BrokerQueue(conn)
