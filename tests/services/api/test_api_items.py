"""Item reads: cache-aside hit/miss/negative paths, single flight, TTL jitter, live stock,
near-cache invalidation, batch reads. Database loads are counted, not timed."""

from __future__ import annotations

import asyncio
import functools
import random
from typing import Any

import psycopg
import pytest
import redis
import redis.asyncio
from apitest_support import ADMIN, CATALOG_STOCK, Api, sample

from services import db
from services.cache import ItemCache, jittered_ttl_ms, queue_invalidation
from services.keys import NEGATIVE, Keys
from services.settings import Settings

pytestmark = pytest.mark.anyio


class CountingLoader:
    """Wraps the database loader: counts calls and ids, optionally slowed down."""

    def __init__(self, inner: Any, delay: float = 0.0) -> None:
        self.inner = inner
        self.delay = delay
        self.calls: list[list[int]] = []

    async def __call__(self, ids: list[int]) -> dict[int, Any]:
        self.calls.append(list(ids))
        await asyncio.sleep(self.delay)
        return dict(await self.inner(ids))


def count_loads(api: Api, delay: float = 0.0) -> CountingLoader:
    """Install a counting loader on the api's cache."""
    loader = CountingLoader(api.ctx.cache.loader, delay)
    api.ctx.cache.loader = loader
    return loader


async def test_miss_then_hits_reach_the_database_once(api: Api) -> None:
    loads = count_loads(api)
    first = await api.client.get("/items/3")
    assert first.status_code == 200
    assert first.json()["id"] == 3 and first.json()["name"].endswith("#3")
    assert loads.calls == [[3]]

    near_before = sample("cache_lookups_total", result="near_hit")
    assert (await api.client.get("/items/3")).json() == first.json()
    assert sample("cache_lookups_total", result="near_hit") == near_before + 1

    api.ctx.cache.forget_near(None)  # next read must come from Redis
    hits_before = sample("cache_lookups_total", result="hit")
    assert (await api.client.get("/items/3")).json() == first.json()
    assert sample("cache_lookups_total", result="hit") == hits_before + 1
    assert loads.calls == [[3]]
    assert await api.ctx.cache_redis.pttl(api.ctx.keys.item(3)) > 0


async def test_unknown_id_is_negatively_cached(api: Api) -> None:
    loads = count_loads(api)
    for _ in range(20):
        api.ctx.cache.forget_near(None)
        response = await api.client.get("/items/987654")
        assert response.status_code == 404
        assert response.json()["error"] == "item_not_found"
    assert loads.calls == [[987654]]
    key = api.ctx.keys.item(987654)
    assert await api.ctx.cache_redis.get(key) == NEGATIVE
    ttl_ms = await api.ctx.cache_redis.pttl(key)
    assert 0 < ttl_ms <= api.settings.negative_ttl_seconds * 1000


async def test_single_flight_200_concurrent_misses_load_once(api: Api) -> None:
    loads = count_loads(api, delay=0.05)
    waits_before = sample("cache_single_flight_waits_total")
    responses = await asyncio.gather(*(api.client.get("/items/7") for _ in range(200)))
    assert {r.status_code for r in responses} == {200}
    assert {r.json()["name"] for r in responses} == {responses[0].json()["name"]}
    assert loads.calls == [[7]]
    assert sample("cache_single_flight_waits_total") - waits_before == 199


async def test_single_flight_across_processes_uses_the_redis_lock(api: Api) -> None:
    """Two caches on one Redis stand for two api processes: one database load in all."""
    settings = api.settings
    loader = CountingLoader(functools.partial(db.load_items, api.ctx.db_pool), delay=0.1)
    other_client = redis.asyncio.Redis.from_url(settings.cache_redis_url)
    try:
        caches = [
            ItemCache(client, Keys(settings.redis_prefix), loader, settings)
            for client in (api.ctx.cache_redis, other_client)
        ]
        results = await asyncio.gather(*(caches[i % 2].get(11) for i in range(20)))
    finally:
        await other_client.aclose()
    assert {r["id"] for r in results if r} == {11}
    assert loader.calls == [[11]]


async def test_ttl_is_spread_by_jitter(api: Api) -> None:
    response = await api.client.post("/admin/warmup", json={}, headers=ADMIN)
    assert response.json()["items_cached"] == 30
    ttls = [await api.ctx.cache_redis.pttl(api.ctx.keys.item(i)) for i in range(1, 31)]
    base, jitter = api.settings.cache_ttl_seconds * 1000, api.settings.cache_ttl_jitter
    assert all(base * (1 - jitter) - 1000 <= t <= base * (1 + jitter) for t in ttls)
    assert max(ttls) - min(ttls) > base * jitter * 0.5, "keys written together must expire apart"


def test_jittered_ttl_stays_within_bounds_and_covers_them() -> None:
    rng = random.Random(7)
    ttls = [jittered_ttl_ms(100.0, 0.2, rng) for _ in range(2000)]
    assert 80_000 <= min(ttls) < 82_000
    assert 118_000 < max(ttls) <= 120_000
    assert jittered_ttl_ms(100.0, 0.0) == 100_000


async def test_stock_is_live_from_the_redis_counter(api: Api) -> None:
    assert (await api.client.get("/items/4")).json()["stock"] == CATALOG_STOCK
    await api.ctx.store.set_stock(4, 17)
    assert (await api.client.get("/items/4")).json()["stock"] == 17  # cached item, live stock
    batch = (await api.client.get("/items", params={"ids": "4,5"})).json()
    assert [i["stock"] for i in batch["items"]] == [17, CATALOG_STOCK]


async def test_batch_read_lists_missing_ids_and_loads_once(api: Api) -> None:
    loads = count_loads(api)
    response = await api.client.get("/items", params={"ids": "2,9,2,5000"})
    assert response.status_code == 200
    body = response.json()
    assert [i["id"] for i in body["items"]] == [2, 9]
    assert body["missing"] == [5000]
    assert loads.calls == [[2, 9, 5000]]
    await api.client.get("/items", params={"ids": "9,2,5000"})
    assert len(loads.calls) == 1


async def test_invalidation_reaches_the_near_cache(api: Api, settings: Settings) -> None:
    assert (await api.client.get("/items/6")).json()["name"].endswith("#6")
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        conn.execute("UPDATE items SET name = 'Renamed' WHERE id = 6")
    # What the worker does after its commit, from another (synchronous) client.
    with redis.Redis.from_url(settings.cache_redis_url) as other:
        pipe = other.pipeline(transaction=False)
        queue_invalidation(pipe, Keys(settings.redis_prefix), [6])
        pipe.execute()
    for _ in range(100):
        if (await api.client.get("/items/6")).json()["name"] == "Renamed":
            break
        await asyncio.sleep(0.02)
    else:
        pytest.fail("the near cache kept the old item after an invalidation")


BAD_READS = [
    ("/items/abc", 422, "validation_error"),
    ("/items/0", 422, "validation_error"),
    ("/items/-4", 422, "validation_error"),
    ("/items/99999999999999999999", 422, "validation_error"),
    ("/items?ids=", 422, "invalid_ids"),
    ("/items?ids=1,x", 422, "invalid_ids"),
    ("/items?ids=0", 422, "invalid_ids"),
    ("/items?ids=" + ",".join(str(i) for i in range(1, 102)), 422, "too_many_ids"),
    ("/items", 422, "validation_error"),
    ("/no/such/route", 404, "not_found"),
]


async def test_every_bad_item_read_gets_its_json_4xx(api: Api) -> None:
    for path, status, code in BAD_READS:
        response = await api.client.get(path)
        assert (response.status_code, response.json()["error"]) == (status, code), path
        assert "detail" in response.json()
    response = await api.client.delete("/items/1")
    assert (response.status_code, response.json()["error"]) == (405, "method_not_allowed")
