"""Fixtures of the race tests (the harness itself is :mod:`race_support`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import psycopg
import pytest
from race_support import Race, seed

from services.api.main import create_app
from services.reconciler import Reconciler
from services.settings import get_settings
from services.worker.app import create_app as create_celery_app
from services.worker.config import get_worker_options
from services.worker.context import WorkerContext
from tests.netfault import FaultProxy
from tests.support import AMQP_HOST


@pytest.fixture
def anyio_backend() -> str:
    """The api runs on asyncio."""
    return "asyncio"


@pytest.fixture
def db(pg_url: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to the test's database, the race catalog seeded."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        seed(conn)
        yield conn


@pytest.fixture
async def race(
    service_env: dict[str, str],
    db: psycopg.Connection[Any],
    fault_proxy: Callable[[str, int], FaultProxy],
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Race]:
    """The api behind proxies to Redis and RabbitMQ, an in-process worker, a reconciler
    that republishes at once (grace 0.01 s, claims older than 0.5 s not protected)."""
    monkeypatch.setenv("RECONCILE_GRACE_SECONDS", "0.01")
    monkeypatch.setenv("RECONCILE_CLAIM_GRACE_SECONDS", "0.5")
    get_settings.cache_clear()
    settings = get_settings()
    redis_host, redis_port = settings.redis_url.split("//")[1].split("/")[0].split(":")
    amqp_host, amqp_port = AMQP_HOST.split(":")
    redis_proxy = fault_proxy(redis_host, int(redis_port))
    broker_proxy = fault_proxy(amqp_host, int(amqp_port))
    vhost = settings.broker_url.rsplit("/", 1)[1]
    api_settings = settings.model_copy(
        update={
            "redis_url": f"redis://127.0.0.1:{redis_proxy.port}/2",
            "broker_url": f"amqp://guest:guest@127.0.0.1:{broker_proxy.port}/{vhost}",
            "publish_timeout_seconds": 1.0,
        }
    )
    worker = WorkerContext.connect(settings, get_worker_options())
    celery = create_celery_app()
    reconciler = Reconciler(settings, celery)
    app = create_app(api_settings)
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
                yield Race(
                    api_settings=api_settings,
                    settings=settings,
                    ctx=app.state.context,
                    client=client,
                    worker=worker,
                    celery=celery,
                    store=worker.store,
                    db=db,
                    redis_proxy=redis_proxy,
                    broker_proxy=broker_proxy,
                    reconciler=reconciler,
                )
    finally:
        reconciler.close()
        worker.close()
