"""Process-wide resources of a worker: database pool, order store, cache invalidator.

Created on first use (so importing the tasks module never connects anywhere) and shared
by every task slot of the process, whatever the pool runs them on: threads or Gs.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import psycopg
import redis
from psycopg_pool import ConnectionPool

from services.keys import Keys
from services.settings import Settings, get_settings
from services.store import OrderStore
from services.worker.config import WorkerOptions, get_worker_options
from services.worker.invalidation import CacheInvalidator


@dataclass(frozen=True, slots=True)
class WorkerContext:
    """Everything a task needs besides its message."""

    settings: Settings
    options: WorkerOptions
    db: ConnectionPool[psycopg.Connection[Any]]
    store: OrderStore
    cache: CacheInvalidator

    @property
    def keys(self) -> Keys:
        """The Redis key layout under this deployment's prefix."""
        return self.store.keys

    @classmethod
    def connect(cls, settings: Settings, options: WorkerOptions) -> WorkerContext:
        """Open the pool and the Redis clients described by ``settings``."""
        db: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            settings.database_url,
            min_size=1,
            max_size=settings.db_pool_size,
            # Autocommit: persist_orders' explicit transaction is the only one, so a
            # connection never sits "idle in transaction" between tasks.
            kwargs={
                "autocommit": True,
                "options": f"-c lock_timeout={options.lock_timeout_ms}",
            },
            name="worker",
            # Tested on checkout: connections that died with a restarted PostgreSQL are
            # replaced instead of failing (and retrying) the next batches.
            check=ConnectionPool.check_connection,
            # Waiting longer for a connection only holds a task slot; the task retries.
            timeout=10.0,
            open=True,
        )
        keys = Keys(settings.redis_prefix)
        store = OrderStore(
            redis.Redis.from_url(settings.redis_url),
            settings.redis_prefix,
            per_user_limit=settings.per_user_limit,
            idempotency_ttl_seconds=settings.idempotency_ttl_seconds,
        )
        cache = CacheInvalidator(
            redis.Redis.from_url(settings.cache_redis_url), keys, options.reinvalidate_after_seconds
        )
        return cls(settings=settings, options=options, db=db, store=store, cache=cache)

    def close(self) -> None:
        """Flush queued invalidations and close every connection."""
        self.cache.close()
        self.db.close()
        self.store.client.close()
        self.cache.client.close()


_lock = threading.Lock()
_context: WorkerContext | None = None


def get_context() -> WorkerContext:
    """This process's context, connected on first call."""
    global _context
    with _lock:
        if _context is None:
            _context = WorkerContext.connect(get_settings(), get_worker_options())
        return _context


def close_context() -> None:
    """Close this process's context if it was opened (worker shutdown)."""
    global _context
    with _lock:
        if _context is not None:
            _context.close()
            _context = None
