"""The cache's less travelled paths, on the real Redis and PostgreSQL: the guard that keeps
a read from refilling the near cache after an invalidation, the invalidation listener
surviving a broken connection and malformed messages, the fallback when another process's
loader lock expires, and the worker's own CacheInvalidator.

The cache Redis is reached through ``tests.netfault`` where a step must be held or cut.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

import pytest
import redis
from apitest_support import REDIS_HOST_URL, Api, running_api, sample

from services.keys import Keys
from services.settings import Settings
from services.worker.invalidation import CacheInvalidator
from tests.netfault import FaultProxy
from tests.support import wait_until_async

pytestmark = pytest.mark.anyio

_HOST, _PORT = REDIS_HOST_URL.removeprefix("redis://").split(":")


@pytest.fixture
def cache_proxy(fault_proxy: Callable[[str, int], FaultProxy]) -> FaultProxy:
    """A fault proxy in front of the real Redis, for the cache role only."""
    return fault_proxy(_HOST, int(_PORT))


@pytest.fixture
async def proxied_api(settings: Settings, cache_proxy: FaultProxy) -> AsyncIterator[Api]:
    """The api whose cache Redis is reached through ``cache_proxy`` (near cache: 60 s, so
    only an invalidation can drop an entry during the test)."""
    proxied = settings.model_copy(
        update={
            "cache_redis_url": f"redis://127.0.0.1:{cache_proxy.port}/3",
            "near_cache_ttl_seconds": 60.0,
        }
    )
    async for running in running_api(proxied):
        yield running


async def _is_near_hit(api: Api, item_id: int) -> bool:
    """Read the item once; whether the near cache answered."""
    before = sample("cache_lookups_total", result="near_hit")
    await api.ctx.cache.get(item_id)
    return sample("cache_lookups_total", result="near_hit") - before == 1


def _subscribers(channel: str) -> int:
    with redis.Redis.from_url(f"{REDIS_HOST_URL}/3") as direct:
        return int(dict(direct.pubsub_numsub(channel))[channel.encode()])


async def test_a_read_overtaken_by_an_invalidation_does_not_refill_the_near_cache(
    proxied_api: Api, cache_proxy: FaultProxy
) -> None:
    cache = proxied_api.ctx.cache
    await cache.put({5: {"id": 5, "name": "old"}})
    cache_proxy.hold_replies()
    read = asyncio.create_task(cache.get(5))
    await asyncio.sleep(0.2)  # the MGET is at Redis; its reply is held
    assert not read.done()
    cache.forget_near([5])  # what an invalidation message does, while the read is out
    cache_proxy.release_replies()
    assert (await read)["name"] == "old"  # the read itself returns what it read...
    assert not await _is_near_hit(proxied_api, 5)  # ...but did not keep it in the near cache
    assert await _is_near_hit(proxied_api, 5)  # an ordinary read does


async def test_the_listener_resubscribes_after_its_connection_is_cut(
    proxied_api: Api, cache_proxy: FaultProxy
) -> None:
    keys = proxied_api.ctx.keys
    await proxied_api.ctx.cache.get(6)
    assert await _is_near_hit(proxied_api, 6)
    cache_proxy.cut()
    # The subscription drops, and comes back by itself.
    await wait_until_async(
        lambda: _subscribers(keys.invalidate_channel) == 0, 10, "the subscription to drop"
    )
    await wait_until_async(
        lambda: _subscribers(keys.invalidate_channel) == 1, 10, "the listener to return"
    )
    # Resubscribing drops the whole near cache once (what was published meanwhile is lost),
    # so the entry sticks again only after that.
    deadline = asyncio.get_running_loop().time() + 10
    while not await _is_near_hit(proxied_api, 6):
        assert asyncio.get_running_loop().time() < deadline, "the near cache never came back"
        await asyncio.sleep(0.02)
    with redis.Redis.from_url(f"{REDIS_HOST_URL}/3") as direct:
        direct.publish(keys.invalidate_channel, b"6")
    await wait_until_async(lambda: 6 not in proxied_api.ctx.cache._near, 10, "item 6 to be dropped")


async def test_malformed_invalidations_are_ignored_and_the_listener_goes_on(
    proxied_api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    keys, cache = proxied_api.ctx.keys, proxied_api.ctx.cache
    await cache.get_many([7, 8])
    caplog.set_level(logging.WARNING, logger="services.cache")
    with redis.Redis.from_url(f"{REDIS_HOST_URL}/3") as direct:
        direct.publish(keys.invalidate_channel, b"7,not-a-number")
        direct.publish(keys.invalidate_channel, b"8")
    await wait_until_async(lambda: 8 not in cache._near, 10, "the valid message after the bad one")
    assert 7 in cache._near  # the malformed message dropped nothing
    assert "ignoring malformed invalidation" in caplog.text


async def test_a_reader_loads_itself_when_another_loaders_lock_expires(api: Api) -> None:
    """Another process took item 9's loader lock and died: after the lock's lifetime the
    waiting reader loads from PostgreSQL itself and fills the cache for everyone."""
    keys, cache = api.ctx.keys, api.ctx.cache
    cache.lock_ms = 300
    await api.ctx.cache_redis.set(keys.item_lock(9), "a-dead-process", px=300)
    loads = sample("cache_db_loads_total")
    item = await cache.get(9)
    assert item is not None and item["id"] == 9
    assert sample("cache_db_loads_total") - loads == 1
    assert await api.ctx.cache_redis.exists(keys.item(9)) == 1


def test_worker_invalidator_deletes_now_and_again_later(redis_prefix: str) -> None:
    keys = Keys(redis_prefix)
    client = redis.Redis.from_url(f"{REDIS_HOST_URL}/3")
    listener = client.pubsub(ignore_subscribe_messages=True)
    listener.subscribe(keys.invalidate_channel)
    invalidator = CacheInvalidator(client, keys, delay_seconds=60.0)
    try:
        client.set(keys.item(4), b"cached")
        invalidator.invalidate_twice(4)
        assert client.exists(keys.item(4)) == 0  # the first delete is immediate
        client.set(keys.item(4), b"a stale refill")  # the race the second delete is for
    finally:
        invalidator.close()  # runs the queued second invalidation now, then stops
    assert client.exists(keys.item(4)) == 0
    published = []
    for _ in range(10):  # get_message answers None for the subscription's own message
        if (message := listener.get_message(timeout=1.0)) is not None:
            published.append(message["data"])
        if len(published) == 2:
            break
    assert published == [b"4", b"4"]
    listener.close()
    client.close()
