"""The order pipeline around :func:`~services.worker.persistence.persist_orders`.

:func:`commit_orders` takes a list of decoded orders through the whole happy path
(claim them in Redis, skip the cancelled ones, one transaction, mark persisted in Redis,
metrics) and :func:`dead_letter_order` handles a permanent failure (DLQ, ``fail`` in
Redis, metric). The claim comes *before* the transaction: once an order is
``persisting`` the api can no longer cancel it, so a late publish confirm and this
commit can never both settle it (see :mod:`services.store`). The ``persist_order`` task
calls them with a list of one; the batching layer calls the same two functions with its
batches.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
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
from services.store import Claim
from services.worker.context import WorkerContext
from services.worker.deadletter import publish_dead_letter
from services.worker.persistence import Order, PersistResult, persist_orders

log = logging.getLogger(__name__)


@dataclass(slots=True)
class CommitOutcome:
    """What :func:`commit_orders` did with a list of orders."""

    result: PersistResult
    cancelled: list[Order] = field(default_factory=list)
    """Already ``failed`` in Redis (the api cancelled it, or an earlier delivery was
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


def commit_orders(
    ctx: WorkerContext,
    orders: Sequence[Order],
    *,
    before_commit: Callable[[Sequence[Order]], None] | None = None,
) -> CommitOutcome:
    """Claim ``orders`` in Redis, persist the claimable ones in one transaction, then mark
    them persisted in Redis.

    ``before_commit`` runs between the claim and the transaction with the orders about to
    be committed (the race tests hold the worker there). Failures in the result are *not*
    handled here: pass each to :func:`dead_letter_order`. Database and Redis errors
    propagate; everything done is idempotent to redo (a claimed order stays claimable).
    """
    claims = ctx.store.claim(_refs(orders), int(time.time() * 1000))
    cancelled = [o for o in orders if claims[o.order_id] is Claim.CANCELLED]
    live = [o for o in orders if claims[o.order_id] is not Claim.CANCELLED]
    if before_commit is not None:
        before_commit(live)
    started = time.perf_counter()
    with ctx.db.connection() as conn:
        result = persist_orders(conn, live)
    BATCH_COMMIT_LATENCY.observe(time.perf_counter() - started)
    BATCH_SIZE.observe(len(live))
    now_ms = int(time.time() * 1000)
    ctx.store.mark_persisted(_refs(result.persisted), now_ms)
    ORDERS_PERSISTED.inc(len(result.inserted))
    for order in result.inserted:
        ACCEPT_TO_PERSIST.observe(max(0.0, (now_ms - order.accepted_at_ms) / 1000))
    return CommitOutcome(result, cancelled)


def dead_letter_order(
    ctx: WorkerContext,
    app: Celery,
    message: Mapping[str, Any],
    reason: str,
    task_id: str | None = None,
) -> None:
    """Send an impossible order to the DLQ, then mark it failed and give its stock back.

    ``message`` is the raw task payload (it may be malformed: that can be the reason).
    Call only for an order whose row was not written. Both steps are idempotent, so a
    redelivery after a crash in between is harmless.
    """
    publish_dead_letter(
        app,
        ctx.settings.dead_letter_queue,
        kind="persist_order",
        payload=message,
        reason=reason,
        task_id=task_id,
    )
    order_id, item_id = message.get("order_id"), message.get("item_id")
    if isinstance(order_id, str) and order_id and isinstance(item_id, int):
        ctx.store.fail(item_id, order_id, reason)
    ORDERS_DEAD_LETTERED.inc()
    log.warning("order %s dead-lettered: %s", order_id, reason)


def _refs(orders: Iterable[Order]) -> list[tuple[int, str]]:
    """``(item_id, order_id)`` pairs, how the store addresses orders."""
    return [(o.item_id, o.order_id) for o in orders]
