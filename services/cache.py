"""Cache-aside for items: an in-process near cache over Redis over PostgreSQL.

Read path of :meth:`ItemCache.get`:

1. near cache (a dict, ``near_cache_ttl_seconds``), dropped through Redis pub/sub on
   ``keys.invalidate_channel`` when an item changes: the hot path never leaves the process;
2. Redis (``CACHE_REDIS_URL``): the item JSON, or ``NEGATIVE`` for an unknown id
   (penetration: a flood of unknown ids reaches PostgreSQL once per id per negative TTL);
3. miss: single-flight. One loader per key per process (a task every other request of the
   key awaits) and one across processes (``SET NX PX`` lock; the others poll Redis briefly),
   then PostgreSQL, then ``SET`` with the TTL spread by ``cache_ttl_jitter`` (avalanche).

If Redis fails the read goes straight to PostgreSQL and ``api_degraded{dependency="redis"}``
is raised until Redis answers again (``redis_cache``: the cache may be its own instance);
while its circuit breaker is open (:mod:`services.breaker`) reads do not even try Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, cast

import orjson
import redis.asyncio
from redis.exceptions import RedisError

from services.breaker import Breakers
from services.keys import NEGATIVE, Keys
from services.metrics import (
    API_DEGRADED,
    CACHE_DB_LOADS,
    CACHE_LOOKUPS,
    CACHE_SINGLE_FLIGHT_WAITS,
)
from services.pubsub import ChannelListener
from services.settings import Settings

log = logging.getLogger(__name__)

Item = dict[str, Any]
Loader = Callable[[list[int]], Awaitable[dict[int, Item]]]
"""Loads the existing items among some ids from the database, by id."""

_NEAR_HIT = CACHE_LOOKUPS.labels("near_hit")
_HIT = CACHE_LOOKUPS.labels("hit")
_NEGATIVE_HIT = CACHE_LOOKUPS.labels("negative_hit")
_MISS = CACHE_LOOKUPS.labels("miss")
_LOCK_POLL_SECONDS = 0.01
_ALL = b"*"

# Delete only the locks this loader still owns (a slow loader's lock may have expired and
# been taken by another process).
_RELEASE_LOCKS = """
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then redis.call('DEL', key) end
end
return 0
"""


class DependencyHealth:
    """Which dependencies are down, mirrored in ``api_degraded{dependency}``.

    ``report`` is called on every outcome but only touches the gauge on a change, so the
    hot path pays one set lookup.
    """

    DEPENDENCIES = ("redis", "redis_cache", "database", "broker")

    def __init__(self, breakers: Breakers | None = None) -> None:
        self.down: set[str] = set()
        self.breakers = breakers
        # Exported at 0 from the start: a gauge only shows up once set, and the dashboards
        # must tell "healthy" from "never reported".
        for dependency in self.DEPENDENCIES:
            API_DEGRADED.labels(dependency).set(0)

    def report(self, dependency: str, ok: bool) -> None:
        """Record whether ``dependency`` just worked (a failure opens its circuit breaker)."""
        if not ok and self.breakers is not None:
            self.breakers.trip(dependency)
        if ok != (dependency in self.down):
            return
        if ok:
            self.down.discard(dependency)
            log.warning("%s is reachable again", dependency)
        else:
            self.down.add(dependency)
            log.warning("%s is unreachable: degraded", dependency)
        API_DEGRADED.labels(dependency).set(0 if ok else 1)

    def circuit_open(self, dependency: str) -> bool:
        """Whether ``dependency`` is known to be down: callers skip it instead of waiting."""
        return self.breakers is not None and self.breakers.is_open(dependency)


def invalidation_message(item_ids: Iterable[int] | None) -> bytes:
    """Pub/sub payload dropping ``item_ids`` (``None``: every item) from near caches."""
    return _ALL if item_ids is None else b",".join(str(i).encode() for i in item_ids)


def parse_item_ids(payload: bytes) -> list[int] | None:
    """The ids of an :func:`invalidation_message` (``None``: every item); a malformed
    payload is logged and names no item."""
    if payload == _ALL:
        return None
    try:
        return [int(part) for part in payload.split(b",") if part]
    except ValueError:
        log.warning("ignoring malformed invalidation (or sold-out) message %r", payload[:100])
        return []


def queue_invalidation(pipe: Any, keys: Keys, item_ids: Iterable[int]) -> None:
    """Queue the deletion of cached items and their near-cache broadcast on a pipeline.

    Works on a synchronous or an asyncio pipeline of the cache Redis; the caller executes it
    (the worker after its commit, and once more shortly after against the read/write race).
    """
    ids = list(item_ids)
    if ids:
        pipe.delete(*(keys.item(i) for i in ids))
        pipe.publish(keys.invalidate_channel, invalidation_message(ids))


def jittered_ttl_ms(base_seconds: float, jitter: float, rng: random.Random | None = None) -> int:
    """``base_seconds * (1 ± jitter)`` in ms, uniformly spread: keys written together expire
    apart, so a warmed catalog does not fall out of the cache in one instant."""
    factor = 1 + (rng or random).uniform(-jitter, jitter)
    return max(1, int(base_seconds * factor * 1000))


class CoalescingReader:
    """Coalesces concurrent GETs into few ``MGET`` commands, at most one in flight.

    Every cache-hit response carries the live stock counter, so without this each request
    would pay a whole Redis command (client CPU and a round trip, more than the rest of
    the request). Reads arriving while an ``MGET`` is in flight wait for the next one, so
    under load one command serves every request that arrived during the previous round
    trip (like Nagle's algorithm); alone, a read costs one extra loop turn. Each value is
    still read from Redis after its request arrived: nothing is cached.
    """

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.client = client
        self._waiting: dict[str, list[asyncio.Future[bytes | None]]] = {}
        self._busy = False
        self._drainer: asyncio.Task[None] | None = None

    def get(self, key: str) -> asyncio.Future[bytes | None]:
        """The value of ``key`` (``None`` if missing), read in the next batch."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bytes | None] = loop.create_future()
        self._waiting.setdefault(key, []).append(future)
        if not self._busy:
            self._busy = True
            # call_soon: let the requests already runnable in this loop turn join the batch.
            loop.call_soon(self._start_drain, loop)
        return future

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        """The values of ``keys`` (``None`` where missing), read in the next batch.

        The futures are awaited in turn rather than gathered: they all resolve in the
        same batch, and ``asyncio.gather`` costs more than the rest of a cache hit.
        """
        futures = [self.get(key) for key in keys]
        return [await future for future in futures]

    def _start_drain(self, loop: asyncio.AbstractEventLoop) -> None:
        # Held so the running task is not garbage-collected (asyncio keeps only weak refs).
        self._drainer = loop.create_task(self._drain())

    async def _drain(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, {}
                await self._fetch(batch)
        finally:
            self._busy = False

    async def _fetch(self, batch: dict[str, list[asyncio.Future[bytes | None]]]) -> None:
        try:
            # The client does not decode responses: values are bytes (or None for a miss).
            values = cast("list[bytes | None]", await self.client.mget(list(batch)))
        except Exception as exc:
            for futures in batch.values():
                for future in futures:
                    if not future.done():
                        future.set_exception(exc)
            return
        for futures, value in zip(batch.values(), values, strict=True):
            for future in futures:
                if not future.done():
                    future.set_result(value)


class ItemCache:
    """The item read path (near cache, Redis, single-flight load) and its invalidation."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        keys: Keys,
        loader: Loader,
        settings: Settings,
        health: DependencyHealth | None = None,
    ) -> None:
        self.client = client
        self.keys = keys
        self.loader = loader
        self.health = health or DependencyHealth()
        self.ttl_seconds = settings.cache_ttl_seconds
        self.ttl_jitter = settings.cache_ttl_jitter
        self.negative_ttl_ms = max(1, int(settings.negative_ttl_seconds * 1000))
        self.lock_ms = max(1, int(settings.single_flight_lock_seconds * 1000))
        self.near_ttl = settings.near_cache_ttl_seconds
        self._near: dict[int, tuple[float, Item | None]] = {}
        # Bumped by every invalidation: a Redis read that started before one must not
        # repopulate the near cache with what it read.
        self._epoch = 0
        self._inflight: dict[int, asyncio.Task[dict[int, Item | None]]] = {}
        self._reader = CoalescingReader(client)
        self._release_locks = client.register_script(_RELEASE_LOCKS)

    # --- reads ---------------------------------------------------------------------------------

    async def get(self, item_id: int) -> Item | None:
        """The item, or ``None`` if it does not exist."""
        entry = self._near.get(item_id)
        if entry is not None and entry[0] > time.monotonic():
            _NEAR_HIT.inc()
            return entry[1]
        return (await self._get_remote([item_id]))[item_id]

    async def get_many(self, item_ids: list[int]) -> dict[int, Item | None]:
        """Every id mapped to its item, or ``None`` where it does not exist."""
        now = time.monotonic()
        found: dict[int, Item | None] = {}
        remote = []
        for item_id in dict.fromkeys(item_ids):
            entry = self._near.get(item_id)
            if entry is not None and entry[0] > now:
                _NEAR_HIT.inc()
                found[item_id] = entry[1]
            else:
                remote.append(item_id)
        if remote:
            found.update(await self._get_remote(remote))
        return found

    async def _get_remote(self, item_ids: list[int]) -> dict[int, Item | None]:
        if self.health.circuit_open("redis_cache"):
            return await self._load_single_flight(item_ids)
        epoch = self._epoch
        try:
            # Coalesced: a burst of near-cache misses (every entry of a hot item expires at
            # once) becomes a few MGETs, not one Redis command per request.
            raws = await self._reader.get_many([self.keys.item(i) for i in item_ids])
        except RedisError:
            self.health.report("redis_cache", False)
            # Still single-flight in this process: a Redis outage must not become a
            # database stampede.
            return await self._load_single_flight(item_ids)
        self.health.report("redis_cache", True)
        found: dict[int, Item | None] = {}
        missing = []
        for item_id, raw in zip(item_ids, raws, strict=True):
            if raw is None:
                _MISS.inc()
                missing.append(item_id)
            elif raw == NEGATIVE:
                _NEGATIVE_HIT.inc()
                found[item_id] = None
            else:
                _HIT.inc()
                found[item_id] = orjson.loads(raw)
        if missing:
            found.update(await self._load_single_flight(missing))
        if epoch == self._epoch:
            self._remember(found)
        return found

    def _remember(self, items: Mapping[int, Item | None]) -> None:
        expires = time.monotonic() + self.near_ttl
        for item_id, item in items.items():
            self._near[item_id] = (expires, item)

    async def _load_from_db(self, item_ids: list[int]) -> dict[int, Item | None]:
        CACHE_DB_LOADS.inc(len(item_ids))
        loaded = await self.loader(item_ids)
        return {i: loaded.get(i) for i in item_ids}

    # --- single flight -------------------------------------------------------------------------

    async def _load_single_flight(self, item_ids: list[int]) -> dict[int, Item | None]:
        """Load missing ids, sharing one in-process load per id with concurrent callers."""
        waits: dict[int, asyncio.Task[dict[int, Item | None]]] = {}
        mine = []
        for item_id in item_ids:
            task = self._inflight.get(item_id)
            if task is None:
                mine.append(item_id)
            else:
                CACHE_SINGLE_FLIGHT_WAITS.inc()
                waits[item_id] = task
        if mine:
            # A task, not an inline await: a cancelled first caller must not cancel the
            # load every other caller of the key is waiting for.
            task = asyncio.get_running_loop().create_task(self._load_and_fill(mine))
            for item_id in mine:
                self._inflight[item_id] = task
                waits[item_id] = task
            task.add_done_callback(functools.partial(self._forget_inflight, mine))
        found: dict[int, Item | None] = {}
        for task in set(waits.values()):
            found.update(await asyncio.shield(task))
        return {i: found[i] for i in item_ids}

    def _forget_inflight(self, item_ids: list[int], task: asyncio.Task[Any]) -> None:
        """Done callback of a load: later misses of these ids start a new one."""
        for item_id in item_ids:
            if self._inflight.get(item_id) is task:
                del self._inflight[item_id]

    async def _load_and_fill(self, item_ids: list[int]) -> dict[int, Item | None]:
        """Take the cross-process lock of each id; load the locked ones, wait for the rest."""
        if self.health.circuit_open("redis_cache"):
            return await self._load_from_db(item_ids)
        token = uuid.uuid4().hex
        try:
            pipe = self.client.pipeline(transaction=False)
            for item_id in item_ids:
                pipe.set(self.keys.item_lock(item_id), token, nx=True, px=self.lock_ms)
            locked = await pipe.execute()
        except RedisError:
            self.health.report("redis_cache", False)
            return await self._load_from_db(item_ids)
        mine = [i for i, ok in zip(item_ids, locked, strict=True) if ok]
        others = [i for i, ok in zip(item_ids, locked, strict=True) if not ok]
        found: dict[int, Item | None] = {}
        if mine:
            try:
                found.update(await self._load_from_db(mine))
                await self._put_quietly(found)
            finally:
                with contextlib.suppress(RedisError):
                    await self._release_locks(
                        keys=[self.keys.item_lock(i) for i in mine], args=[token]
                    )
        if others:
            found.update(await self._wait_for_other_loaders(others))
        return found

    async def _wait_for_other_loaders(self, item_ids: list[int]) -> dict[int, Item | None]:
        """Poll Redis while another process loads; load whatever is still missing at the end."""
        found: dict[int, Item | None] = {}
        waiting = list(item_ids)
        deadline = time.monotonic() + self.lock_ms / 1000
        while waiting and time.monotonic() < deadline:
            await asyncio.sleep(_LOCK_POLL_SECONDS)
            try:
                raws = await self.client.mget([self.keys.item(i) for i in waiting])
            except RedisError:
                break
            for item_id, raw in zip(list(waiting), raws, strict=True):
                if raw is not None:
                    found[item_id] = None if raw == NEGATIVE else orjson.loads(raw)
                    waiting.remove(item_id)
        if waiting:
            loaded = await self._load_from_db(waiting)
            await self._put_quietly(loaded)
            found.update(loaded)
        return found

    # --- writes --------------------------------------------------------------------------------

    async def put(self, items: Mapping[int, Item | None]) -> None:
        """Cache items (``None``: the id does not exist, cached as ``NEGATIVE``)."""
        if not items:
            return
        pipe = self.client.pipeline(transaction=False)
        for item_id, item in items.items():
            if item is None:
                pipe.set(self.keys.item(item_id), NEGATIVE, px=self.negative_ttl_ms)
            else:
                ttl = jittered_ttl_ms(self.ttl_seconds, self.ttl_jitter)
                pipe.set(self.keys.item(item_id), orjson.dumps(item), px=ttl)
        await pipe.execute()

    async def _put_quietly(self, items: Mapping[int, Item | None]) -> None:
        """:meth:`put` on the read path: a failed write only costs a later miss."""
        if self.health.circuit_open("redis_cache"):
            return
        try:
            await self.put(items)
        except RedisError:
            self.health.report("redis_cache", False)

    async def invalidate(self, item_ids: Iterable[int] | None = None) -> None:
        """Drop items from Redis and from every process's near cache (``None``: near caches
        only, all of their entries, e.g. after a warmup rewrote the cache)."""
        self.forget_near(None if item_ids is None else list(item_ids))
        pipe = self.client.pipeline(transaction=False)
        if item_ids is None:
            pipe.publish(self.keys.invalidate_channel, invalidation_message(None))
        else:
            queue_invalidation(pipe, self.keys, item_ids)
        await pipe.execute()

    def forget_near(self, item_ids: list[int] | None) -> None:
        """Drop entries from this process's near cache (``None``: all)."""
        self._epoch += 1
        if item_ids is None:
            self._near.clear()
        else:
            for item_id in item_ids:
                self._near.pop(item_id, None)

    # --- invalidation listener -----------------------------------------------------------------

    def listen(self, listener: ChannelListener) -> None:
        """Drop near-cache entries on the invalidations ``listener`` (on the cache Redis)
        receives; without the channel the near cache is not trusted beyond its short TTL."""
        listener.on(
            {self.keys.invalidate_channel: self._on_invalidation},
            on_gap=lambda: self.forget_near(None),
        )

    def _on_invalidation(self, payload: bytes) -> None:
        self.forget_near(parse_item_ids(payload))
