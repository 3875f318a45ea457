"""The order pipeline around :func:`~services.worker.persistence.persist_orders`.

:func:`commit_orders` takes a list of decoded orders through the whole happy path
(skip cancelled ones, one transaction, mark persisted in Redis, metrics) and
:func:`dead_letter_order` handles a permanent failure (DLQ, compensation in Redis,
metric). The ``persist_order`` task calls them with a list of one; the batching layer
calls the same two functions with its batches.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from celery import Celery

from services.metrics import (
    ACCEPT_TO_PERSIST,
    BATCH_COMMIT_LATENCY,
    BATCH_SIZE,
    ORDERS_DEAD_LETTERED,
    ORDERS_PERSISTED,
)
from services.store import OrderStore, Status
from services.worker.context import WorkerContext
from services.worker.deadletter import publish_dead_letter
from services.worker.persistence import Order, PersistResult, persist_orders

log = logging.getLogger(__name__)


@dataclass(slots=True)
class CommitOutcome:
    """What :func:`commit_orders` did with a list of orders."""

    result: PersistResult
    cancelled: list[Order] = field(default_factory=list)
    """Already ``failed`` in Redis (the api compensated, or an earlier delivery was
    dead-lettered): not persisted, since the customer was told the order failed."""

    def outcome_of(self, order: Order) -> str:
        """``persisted``, ``duplicate``, ``cancelled`` or ``failed`` for one order of the list."""
        if order in self.result.inserted:
            return "persisted"
        if order in self.result.duplicates:
            return "duplicate"
        if order in self.cancelled:
            return "cancelled"
        return "failed"


def commit_orders(ctx: WorkerContext, orders: Sequence[Order]) -> CommitOutcome:
    """Persist ``orders`` in one transaction, then mark them persisted in Redis.

    Failures in the result are *not* handled here: pass each to :func:`dead_letter_order`.
    Database and Redis errors propagate; everything committed is idempotent to redo.
    """
    cancelled = _cancelled_in_redis(ctx.store, orders)
    live = [o for o in orders if o.order_id not in cancelled]
    started = time.perf_counter()
    with ctx.db.connection() as conn:
        result = persist_orders(conn, live)
    BATCH_COMMIT_LATENCY.observe(time.perf_counter() - started)
    BATCH_SIZE.observe(len(live))
    now_ms = int(time.time() * 1000)
    ctx.store.mark_persisted([o.order_id for o in result.persisted], now_ms)
    ORDERS_PERSISTED.inc(len(result.inserted))
    for order in result.inserted:
        ACCEPT_TO_PERSIST.observe(max(0.0, (now_ms - order.accepted_at_ms) / 1000))
    return CommitOutcome(result, [o for o in orders if o.order_id in cancelled])


def dead_letter_order(
    ctx: WorkerContext,
    app: Celery,
    message: Mapping[str, Any],
    reason: str,
    task_id: str | None = None,
) -> None:
    """Send an impossible order to the DLQ, then mark it failed and give its stock back.

    ``message`` is the raw task payload (it may be malformed: that can be the reason).
    Both steps are idempotent, so a redelivery after a crash in between is harmless.
    """
    publish_dead_letter(
        app,
        ctx.settings.dead_letter_queue,
        kind="persist_order",
        payload=message,
        reason=reason,
        task_id=task_id,
    )
    order_id = message.get("order_id")
    if isinstance(order_id, str) and order_id:
        ctx.store.mark_failed(order_id, reason)
    ORDERS_DEAD_LETTERED.inc()
    log.warning("order %s dead-lettered: %s", order_id, reason)


def _cancelled_in_redis(store: OrderStore, orders: Sequence[Order]) -> set[str]:
    """Ids of ``orders`` whose Redis status is already ``failed``."""
    if not orders:
        return set()
    pipe = store.client.pipeline(transaction=False)
    for order in orders:
        pipe.hget(store.keys.order(order.order_id), "status")
    statuses = pipe.execute()
    return {
        order.order_id
        for order, status in zip(orders, statuses, strict=True)
        if status is not None and status.decode() == Status.FAILED
    }
