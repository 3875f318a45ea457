"""Sold-out items answered from memory: ``409 sold_out`` without a Redis round trip.

After the first seconds of a flash sale nearly every order is for an item with no stock
left, and each would otherwise cost a reservation script in Redis. :class:`SoldOutBoard`
remembers, per api process, which items are sold out:

- it *learns* it from the reservation's own answer: the stock is 0 after an accepted
  order (``stock_left == 0``) or a refused one found 0. A refusal with stock left (an
  order for 3 when 2 are left) does not count: a smaller order would still succeed;
- it *tells* the other processes on the pub/sub channel ``keys.sold_out_channel``, and
  hears theirs;
- it *forgets* an item when the item changes (the worker's invalidation after an admin
  update, which may raise the stock), everything on a warm-up's ``*`` invalidation and
  whenever the subscription had a gap, and each flag by itself after
  ``Settings.sold_out_ttl_seconds`` (1 s).

A cancelled order gives its stock back and the api says so (:meth:`SoldOutBoard.stock_returned`).
The expiry is what makes "never sold out while stock is left" hold beyond a second in the
cases no message covers: stock given back by a dead-lettered order, or a sold-out message
that crossed an admin update on the way. After it the next order asks
Redis again, so a sold-out item costs one reservation per process per second.

Orders carrying an ``Idempotency-Key`` are not answered from memory: a retry of an order
that was accepted must get that order back, which only Redis knows.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any

import redis.asyncio
from redis.exceptions import RedisError

from services.api.errors import ApiError
from services.cache import invalidation_message, parse_item_ids
from services.keys import Keys
from services.metrics import ORDERS, ORDERS_SOLD_OUT_FROM_MEMORY
from services.pubsub import ChannelListener
from services.store import Outcome, ReserveResult

log = logging.getLogger(__name__)

_SOLD_OUT = ORDERS.labels("sold_out")


class SoldOutBoard:
    """This process's sold-out flags, shared with the others over Redis pub/sub."""

    def __init__(self, client: redis.asyncio.Redis, keys: Keys, ttl_seconds: float) -> None:
        self.client = client
        self.channel = keys.sold_out_channel
        self.ttl = ttl_seconds
        self._until: dict[int, float] = {}
        self.invalidate_channel = keys.invalidate_channel
        self._announcing: set[asyncio.Task[None]] = set()

    def is_sold_out(self, item_id: int) -> bool:
        """Whether ``item_id`` is flagged sold out now."""
        until = self._until.get(item_id)
        if until is None:
            return False
        if until > time.monotonic():
            return True
        del self._until[item_id]
        return False

    def answer(self, item_id: int) -> ApiError:
        """The ``409 sold_out`` answered from memory (counted)."""
        _SOLD_OUT.inc()
        ORDERS_SOLD_OUT_FROM_MEMORY.inc()
        return ApiError(409, "sold_out", f"item {item_id} has 0 left")

    def learn(self, item_id: int, result: ReserveResult) -> None:
        """Flag the item if this reservation left (or found) its stock at 0, and tell the
        other processes (in the background: the request does not wait for it)."""
        if result.stock_left != 0 or result.outcome not in (Outcome.ACCEPTED, Outcome.SOLD_OUT):
            return
        self._flag(item_id)
        self._in_background(self._publish(self.channel, str(item_id).encode()))

    def stock_returned(self, item_id: int) -> None:
        """Stock of the item came back (an accepted order was cancelled): drop its flag
        here at once, and everywhere through the item's invalidation message (the near
        caches drop the item too, which only costs them one read)."""
        self.forget([item_id])
        self._in_background(self._publish(self.invalidate_channel, invalidation_message([item_id])))

    def forget(self, item_ids: list[int] | None) -> None:
        """Drop the flags of ``item_ids`` (``None``: all)."""
        if item_ids is None:
            self._until.clear()
        else:
            for item_id in item_ids:
                self._until.pop(item_id, None)

    def listen(self, listener: ChannelListener) -> None:
        """Take flags from the other processes' announcements and drop them on item
        invalidations, through ``listener`` (on the cache Redis, as :attr:`client`)."""
        listener.on(
            {self.channel: self._on_sold_out, self.invalidate_channel: self._on_invalidation},
            on_gap=lambda: self.forget(None),
        )

    async def stop(self) -> None:
        """Let the announcements in flight finish."""
        if self._announcing:
            await asyncio.wait(set(self._announcing), timeout=1.0)

    def _flag(self, item_id: int) -> None:
        self._until[item_id] = time.monotonic() + self.ttl

    def _in_background(self, announcement: Coroutine[Any, Any, None]) -> None:
        # The request does not wait for it; the task is held until done (asyncio keeps
        # only weak references to tasks).
        task = asyncio.get_running_loop().create_task(announcement)
        self._announcing.add(task)
        task.add_done_callback(self._announcing.discard)

    async def _publish(self, channel: str, payload: bytes) -> None:
        try:
            await self.client.publish(channel, payload)
        except RedisError as exc:
            # The flags' lifetime bounds what the others miss.
            log.debug("announcement %r on %s failed: %s", payload, channel, exc)

    def _on_sold_out(self, payload: bytes) -> None:
        for item_id in parse_item_ids(payload) or []:
            self._flag(item_id)

    def _on_invalidation(self, payload: bytes) -> None:
        self.forget(parse_item_ids(payload))
