"""Circuit breakers and pooled connections, against the real Redis and PostgreSQL behind
the TCP fault proxy.

Once a dependency is known to be down, requests must be answered without going near it:
orders get ``503`` with ``Retry-After``, item reads go to the other source. "Without going
near it" is asserted as such (no connection opened to a hung peer, no pool request), not
as a duration. A probe closes the breaker once the dependency answers again. And after a
restart (every pooled connection reset) the next requests get fresh connections instead
of failing on the dead ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

import pytest
from apitest_support import running_api, sample
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from services.settings import Settings
from tests.netfault import FaultProxy
from tests.support import wait_until_async

pytestmark = pytest.mark.anyio

NEVER = 3600.0  # a probe interval no test waits for: the breaker stays open
CONCURRENT = 20


def server_of(address: str) -> tuple[str, int]:
    """Host and port of a Redis URL or a libpq connection string (URL or key=value)."""
    if address.startswith("redis"):
        parts = urlsplit(address)
        return parts.hostname or "127.0.0.1", parts.port or 6379
    params = conninfo_to_dict(address)
    return str(params.get("host") or "127.0.0.1"), int(params.get("port") or 5432)


def through(proxy: FaultProxy, address: str) -> str:
    """``address`` (as :func:`server_of` reads it) pointing at the proxy instead."""
    if address.startswith("redis"):
        parts = urlsplit(address)
        user = f"{parts.username}@" if parts.username else ""
        return urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{proxy.port}"))
    return make_conninfo(address, host="127.0.0.1", port=proxy.port)


def proxy_for(fault_proxy: Callable[[str, int], FaultProxy], address: str) -> FaultProxy:
    """A fault proxy in front of the server of ``address``."""
    return fault_proxy(*server_of(address))


running = contextlib.asynccontextmanager(running_api)
"""The app on some settings, as an ``async with`` block."""


def proxied(settings: Settings, field: str, proxy: FaultProxy, probe_interval: float) -> Settings:
    """``settings`` with the URL ``field`` through ``proxy``, probing at ``probe_interval``,
    and no near cache (every read goes to the caches under test)."""
    return settings.model_copy(
        update={
            field: through(proxy, getattr(settings, field)),
            "breaker_probe_interval_seconds": probe_interval,
            "near_cache_ttl_seconds": 0,
        }
    )


def order(item_id: int = 1) -> dict[str, object]:
    """An order request of a user of its own."""
    return {"item_id": item_id, "quantity": 1, "user_id": f"u-{uuid.uuid4().hex[:12]}"}


@pytest.fixture
def state_proxy(fault_proxy: Callable[[str, int], FaultProxy], settings: Settings) -> FaultProxy:
    """A proxy in front of the state Redis."""
    return proxy_for(fault_proxy, settings.redis_url)


async def test_orders_get_503_without_touching_a_state_redis_known_down(
    settings: Settings, state_proxy: FaultProxy
) -> None:
    async with running(proxied(settings, "redis_url", state_proxy, NEVER)) as api:
        state_proxy.refuse()
        first = await api.client.post("/orders", json=order())
        assert first.status_code == 503, first.text
        assert first.json()["error"] == "state_unavailable"
        assert api.ctx.breakers["redis"].is_open
        assert sample("circuit_breaker_open", dependency="redis") == 1

        # Redis now accepts connections and never answers: any request that tried it
        # would hold a connection to the proxy until its socket time-out.
        state_proxy.heal()
        state_proxy.blackhole()
        answers = await asyncio.gather(
            *(api.client.post("/orders", json=order()) for _ in range(CONCURRENT))
        )
        assert [a.status_code for a in answers] == [503] * CONCURRENT
        assert {a.json()["error"] for a in answers} == {"state_unavailable"}
        assert all(a.headers.get("Retry-After") for a in answers)
        assert state_proxy.connections == 0
        status = await api.client.get(f"/orders/{uuid.uuid4()}")
        assert status.status_code == 503
        assert status.json()["error"] == "state_unavailable"
        assert state_proxy.connections == 0

        # Item reads still answer, with the database's stock.
        read = await api.client.get("/items/1")
        assert read.status_code == 200
        assert state_proxy.connections == 0


async def test_a_probe_closes_the_breaker_once_redis_answers_again(
    settings: Settings, state_proxy: FaultProxy
) -> None:
    async with running(proxied(settings, "redis_url", state_proxy, 0.05)) as api:
        breaker = api.ctx.breakers["redis"]
        state_proxy.refuse()
        assert (await api.client.post("/orders", json=order())).status_code == 503
        await wait_until_async(lambda: breaker.probes >= 3, 30, "three failed probes")
        assert breaker.is_open  # still down: the probes were refused

        state_proxy.heal()
        await wait_until_async(lambda: not breaker.is_open, 30, "the probe to close the breaker")
        assert sample("circuit_breaker_open", dependency="redis") == 0
        # The order reaches Redis again: reserved, then refused only for the broker
        # (this app has none), its reservation given back.
        again = await api.client.post("/orders", json=order())
        assert again.json()["error"] == "broker_unavailable", again.text


async def test_reads_go_to_postgres_without_touching_a_cache_known_down(
    settings: Settings, fault_proxy: Callable[[str, int], FaultProxy]
) -> None:
    cache_proxy = proxy_for(fault_proxy, settings.cache_redis_url)
    async with running(proxied(settings, "cache_redis_url", cache_proxy, NEVER)) as api:
        cache_proxy.refuse()
        first = await api.client.get("/items/1")
        assert first.status_code == 200, first.text
        assert api.ctx.breakers["redis_cache"].is_open

        cache_proxy.heal()
        cache_proxy.blackhole()
        reads = await asyncio.gather(
            *(api.client.get(f"/items/{1 + n % 10}") for n in range(CONCURRENT))
        )
        assert [r.status_code for r in reads] == [200] * CONCURRENT
        assert all(r.json()["name"] for r in reads)
        assert cache_proxy.connections == 0


async def test_database_known_down_is_503_without_asking_the_pool(
    settings: Settings, fault_proxy: Callable[[str, int], FaultProxy]
) -> None:
    db_proxy = proxy_for(fault_proxy, settings.database_url)
    async with running(proxied(settings, "database_url", db_proxy, NEVER)) as api:
        db_proxy.refuse()
        # Item 7 is in no cache yet: the read needs the database, which is down.
        first = await api.client.get("/items/7")
        assert first.status_code == 503, first.text
        assert api.ctx.breakers["database"].is_open

        requested = api.ctx.db_pool.get_stats().get("requests_num", 0)
        reads = await asyncio.gather(*(api.client.get(f"/items/{8 + n}") for n in range(10)))
        assert [r.status_code for r in reads] == [503] * 10
        assert {r.json()["error"] for r in reads} == {"database_unavailable"}
        assert all(r.headers.get("Retry-After") for r in reads)
        assert api.ctx.db_pool.get_stats().get("requests_num", 0) == requested


async def test_connections_that_died_with_a_restart_are_replaced_not_failed(
    settings: Settings, fault_proxy: Callable[[str, int], FaultProxy]
) -> None:
    db_proxy = proxy_for(fault_proxy, settings.database_url)
    state_proxy = proxy_for(fault_proxy, settings.redis_url)
    both = proxied(
        proxied(settings, "database_url", db_proxy, NEVER), "redis_url", state_proxy, NEVER
    )
    async with running(both) as api:
        for item_id in range(1, 6):  # pooled connections to both, in use
            assert (await api.client.get(f"/items/{item_id}")).status_code == 200
        assert db_proxy.connections and state_proxy.connections

        # A restart as the pools see it: every open connection reset, the servers back.
        db_proxy.cut()
        state_proxy.cut()
        reads = [await api.client.get(f"/items/{item_id}") for item_id in range(11, 21)]
        assert [r.status_code for r in reads] == [200] * 10, reads[0].text
        orders = [await api.client.post("/orders", json=order()) for _ in range(5)]
        # Reserved in Redis each time (then refused for the broker this app lacks).
        assert {o.json()["error"] for o in orders} == {"broker_unavailable"}
        assert not any(breaker.is_open for breaker in api.ctx.breakers.values())
