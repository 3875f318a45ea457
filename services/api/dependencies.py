"""What the routes depend on: one :class:`ApiContext` per app, opened by the lifespan, and
the ``Depends`` providers that hand its parts to the routes."""

from __future__ import annotations

import functools
import threading
import time
from dataclasses import dataclass
from typing import Annotated

import psycopg
import redis.asyncio
from fastapi import Depends, Request
from psycopg_pool import AsyncConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from services import db
from services.api.redis_sent import SendTrackingConnection
from services.api.soldout import SoldOutBoard
from services.breaker import Breakers
from services.cache import CoalescingReader, DependencyHealth, ItemCache
from services.keys import Keys
from services.publisher import TaskPublisher, make_publisher
from services.pubsub import ChannelListener
from services.settings import Settings
from services.store import AsyncOrderStore

REDIS_MAX_CONNECTIONS = 64
"""Per client and process: enough to keep Redis busy, few enough to stay polite."""
DATABASE_UNREACHABLE = (psycopg.OperationalError, TimeoutError)
"""Database errors that open its circuit breaker (PoolTimeout is an OperationalError)."""


class VersionClock:
    """Versions for item updates: microseconds since the epoch, strictly increasing.

    Time-based so that every api process agrees without coordination (the worker keeps
    the highest version, last writer wins) and so versions dwarf the schema's initial 1;
    the counter keeps two updates within one microsecond of one process ordered. Across
    processes, order is wall-clock order.
    """

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def next(self) -> int:
        """A version larger than every one this process handed out before."""
        with self._lock:
            self._last = max(time.time_ns() // 1000, self._last + 1)
            return self._last


@dataclass
class ApiContext:
    """Every connection and service object of one api process."""

    settings: Settings
    keys: Keys
    state_redis: redis.asyncio.Redis
    cache_redis: redis.asyncio.Redis
    db_pool: AsyncConnectionPool
    store: AsyncOrderStore
    cache: ItemCache
    stock_reader: CoalescingReader
    publisher: TaskPublisher
    sold_out: SoldOutBoard
    listener: ChannelListener
    health: DependencyHealth
    breakers: Breakers
    versions: VersionClock

    @classmethod
    def create(cls, settings: Settings) -> ApiContext:
        """Build the clients (nothing connects yet: :meth:`open` starts what runs)."""
        keys = Keys(settings.redis_prefix)
        state_redis = _redis_client(settings.redis_url)
        cache_redis = _redis_client(settings.cache_redis_url)
        pool = db.open_pool(settings.database_url, max_size=settings.db_pool_size)
        breakers = Breakers(
            {
                "redis": state_redis.ping,
                "redis_cache": cache_redis.ping,
                "database": functools.partial(db.ping, pool),
            },
            probe_interval=settings.breaker_probe_interval_seconds,
            probe_timeout=settings.breaker_probe_timeout_seconds,
        )
        health = DependencyHealth(breakers)
        load_items = breakers["database"].guard(
            functools.partial(db.load_items, pool), DATABASE_UNREACHABLE
        )
        return cls(
            settings=settings,
            keys=keys,
            state_redis=state_redis,
            cache_redis=cache_redis,
            db_pool=pool,
            store=AsyncOrderStore(
                state_redis,
                settings.redis_prefix,
                per_user_limit=settings.per_user_limit,
                idempotency_ttl_seconds=settings.idempotency_ttl_seconds,
            ),
            cache=_item_cache_class(settings)(cache_redis, keys, load_items, settings, health),
            stock_reader=CoalescingReader(state_redis),
            publisher=make_publisher(settings),
            sold_out=SoldOutBoard(cache_redis, keys, settings.sold_out_ttl_seconds),
            listener=ChannelListener(cache_redis),
            health=health,
            breakers=breakers,
            versions=VersionClock(),
        )

    async def open(self) -> None:
        """Open the database pool (without waiting for it), start the invalidation and
        sold-out listeners and the publisher's connection."""
        await self.db_pool.open(wait=False)
        self.cache.listen(self.listener)
        self.sold_out.listen(self.listener)
        await self.listener.start()
        await self.publisher.start()

    async def close(self) -> None:
        """Stop everything :meth:`open` started and close the clients."""
        await self.breakers.stop()
        await self.listener.stop()
        await self.sold_out.stop()
        await self.publisher.close()
        await self.db_pool.close()
        await self.state_redis.aclose()
        await self.cache_redis.aclose()


def _item_cache_class(settings: Settings) -> type[ItemCache]:
    """The item cache, or the experiment-only reader that bypasses it."""
    if settings.experiment_cache_bypass:
        from services.api.experiment_modes import DirectItemReads

        return DirectItemReads
    return ItemCache


def _redis_client(url: str) -> redis.asyncio.Redis:
    # A refused connection fails at once (Redis down: fast 503 or database read); the
    # timeouts only bound a hung Redis, and are loose enough that a busy machine opening
    # many connections at once is not mistaken for one. One immediate retry (redis.asyncio's
    # own Retry: the synchronous one is ignored by the asyncio client) covers a pooled
    # connection gone stale after a Redis restart, and a reply lost to a time-out. It may
    # re-send a command that ran: safe because every state write is idempotent (the
    # reservation per order id, the Idempotency-Key binding is the same value, the
    # transitions check the status).
    options: dict[str, object] = {}
    if url.startswith("redis://"):
        options["connection_class"] = SendTrackingConnection
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url,
        max_connections=REDIS_MAX_CONNECTIONS,
        timeout=5.0,
        socket_connect_timeout=2.0,
        socket_timeout=3.0,
        retry=Retry(NoBackoff(), 1),
        health_check_interval=30,
        **options,
    )
    return redis.asyncio.Redis(connection_pool=pool)


# The providers are ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in a
# thread pool, which cost more than the whole cache-hit request.


def context_of(request: Request) -> ApiContext:
    """The app's context (set by the lifespan)."""
    context: ApiContext = request.app.state.context
    return context


async def get_context(request: Request) -> ApiContext:
    """Provider of the app's :class:`ApiContext`."""
    return context_of(request)


async def get_settings(request: Request) -> Settings:
    """Provider of the settings the app was created with."""
    return context_of(request).settings


async def get_cache(request: Request) -> ItemCache:
    """Provider of the item cache."""
    return context_of(request).cache


async def get_store(request: Request) -> AsyncOrderStore:
    """Provider of the order store on the state Redis."""
    return context_of(request).store


async def get_publisher(request: Request) -> TaskPublisher:
    """Provider of the confirmed task publisher."""
    return context_of(request).publisher


Context = Annotated[ApiContext, Depends(get_context)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
CacheDep = Annotated[ItemCache, Depends(get_cache)]
StoreDep = Annotated[AsyncOrderStore, Depends(get_store)]
PublisherDep = Annotated[TaskPublisher, Depends(get_publisher)]
