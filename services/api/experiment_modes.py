"""The api's experiment-only modes: the alternatives the architecture rejects, kept runnable
so ``python -m loadtest experiments`` can measure them beside the real thing.

- ``EXPERIMENT_CACHE_BYPASS``: :class:`DirectItemReads` replaces the item cache; every read
  queries PostgreSQL (the live stock still comes from Redis, as in the normal path).
- ``EXPERIMENT_SYNC_WRITE``: :func:`persist_in_request` writes an accepted order to
  PostgreSQL inside the request instead of publishing it to the queue.

Both are off by default and :class:`~services.settings.Settings` refuses them unless
``EXPERIMENTS_ALLOWED=1`` is set, which only the experiments runner does.
"""

from __future__ import annotations

import asyncio
import functools
import time

import psycopg
from psycopg_pool import ConnectionPool

from services.api.dependencies import ApiContext
from services.api.errors import ApiError, unavailable
from services.cache import Item, ItemCache
from services.metrics import ORDERS
from services.store import ReserveResult, task_payload
from services.worker.persistence import Order, persist_orders


class DirectItemReads(ItemCache):
    """An :class:`ItemCache` that never caches: each read is one PostgreSQL query."""

    async def get(self, item_id: int) -> Item | None:
        """The item straight from PostgreSQL, or ``None``."""
        return (await self._load_from_db([item_id]))[item_id]

    async def get_many(self, item_ids: list[int]) -> dict[int, Item | None]:
        """The items straight from PostgreSQL (one query), ``None`` where missing."""
        return await self._load_from_db(list(dict.fromkeys(item_ids)))


@functools.cache
def _write_pool(database_url: str, size: int) -> ConnectionPool:
    """One synchronous pool per process: :func:`persist_orders` (the worker's own write
    path, reused so both variants commit the same statements) takes a sync connection."""
    return ConnectionPool(database_url, min_size=1, max_size=size, open=True, timeout=5.0)


def _persist_one(database_url: str, size: int, order: Order) -> bool:
    """Commit one order; ``True`` if it is in the database afterwards."""
    with _write_pool(database_url, size).connection() as conn:
        return bool(persist_orders(conn, [order]).persisted)


async def persist_in_request(ctx: ApiContext, result: ReserveResult) -> None:
    """Commit the reserved order to PostgreSQL now, as the worker would (claim it, write it
    with :func:`persist_orders` in a thread off the event loop, mark it persisted); on a
    failure give the reservation back and answer 503, or 409 if the database's stock guard
    refused it."""
    assert result.order is not None
    order = Order.from_message(task_payload(result.order))
    ref = [(order.item_id, order.order_id)]
    settings = ctx.settings
    await ctx.store.claim(ref, int(time.time() * 1000))
    try:
        written = await asyncio.to_thread(
            _persist_one, settings.database_url, settings.db_pool_size, order
        )
    except (psycopg.Error, TimeoutError) as exc:
        await ctx.store.fail(order.item_id, order.order_id, f"database: {exc}"[:200])
        ORDERS.labels("failed").inc()
        raise unavailable(
            "database_unavailable", "the order could not be written", settings.retry_after_seconds
        ) from exc
    if not written:
        await ctx.store.fail(order.item_id, order.order_id, "database stock guard")
        ORDERS.labels("sold_out").inc()
        raise ApiError(409, "sold_out", f"item {order.item_id} is sold out")
    await ctx.store.mark_persisted(ref, int(time.time() * 1000))
