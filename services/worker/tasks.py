"""The worker's tasks: ``persist_order`` and ``apply_item_update``.

Failure policy for an order:

- transient (``psycopg.OperationalError``: connection lost, lock timeout, serialization
  failure, deadlock, pool timeout; Redis connection errors): retried with exponential
  backoff and full jitter. If it still fails after ``WORKER_MAX_RETRIES`` retries the
  message is dropped, but the order stays ``accepted`` in Redis's pending set, so the
  reconciler re-publishes it after its grace period: an outage delays orders, never
  cancels them.
- permanent (malformed message, unknown item, oversell guard, integrity or data error):
  dead-lettered, its stock given back in Redis and its status set to ``failed``.

Everything a task does before it returns is idempotent, and the message is acknowledged
only when it returns (``acks_late``), i.e. after the row is committed.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
import redis
from celery import Task

from services.messaging import APPLY_ITEM_UPDATE, PERSIST_ORDER
from services.metrics import WORKER_TASKS
from services.worker.app import app
from services.worker.batching import BatchedOrderTask
from services.worker.config import get_worker_options
from services.worker.context import get_context
from services.worker.deadletter import publish_dead_letter
from services.worker.items import (
    InvalidItemUpdateError,
    ItemUpdate,
    apply_update,
    recorded_delta,
    shift_redis_stock,
)
from services.worker.orders import commit_orders, dead_letter_order
from services.worker.persistence import InvalidOrderError, Order

log = logging.getLogger(__name__)

TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    psycopg.OperationalError,
    redis.ConnectionError,
    redis.TimeoutError,
)
"""Errors worth retrying: the same message may well succeed a moment later."""
PERMANENT_ORDER_ERRORS: tuple[type[Exception], ...] = (
    InvalidOrderError,
    psycopg.IntegrityError,
    psycopg.DataError,
)
"""Errors caused by the order's own data: retrying would fail the same way."""
PERMANENT_UPDATE_ERRORS: tuple[type[Exception], ...] = (
    InvalidItemUpdateError,
    psycopg.IntegrityError,
    psycopg.DataError,
)
"""Errors caused by the update's own data."""

_options = get_worker_options()
_RETRY: dict[str, Any] = {
    "autoretry_for": TRANSIENT_ERRORS,
    "retry_backoff": True,
    "retry_backoff_max": _options.retry_backoff_max_seconds,
    "retry_jitter": True,
    "max_retries": _options.max_retries,
}


class MeteredTask(Task[Any, Any]):
    """Counts every finished task in ``worker_tasks_total`` by the outcome it returned."""

    @property
    def short_name(self) -> str:
        """The task's name without its module."""
        return str(self.name).rsplit(".", 1)[-1]

    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        """Count the outcome the task returned."""
        WORKER_TASKS.labels(self.short_name, str(retval)).inc()

    def on_retry(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        """Count a retry."""
        WORKER_TASKS.labels(self.short_name, "retry").inc()

    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        """Count a failure; for orders, say who picks it up."""
        WORKER_TASKS.labels(self.short_name, "error").inc()
        if self.name == PERSIST_ORDER:
            log.error(
                "order task %s gave up (%r); the order stays accepted in Redis and the "
                "reconciler will publish it again",
                task_id,
                exc,
            )


class OrderTask(BatchedOrderTask, MeteredTask):
    """persist_order's base: metered, and batched when it runs on the gmpworker pool."""


@app.task(bind=True, base=OrderTask, name=PERSIST_ORDER, **_RETRY)
def persist_order(self: MeteredTask, order: dict[str, Any]) -> str:
    """Persist one accepted order; the outcome: persisted, duplicate, cancelled, dead_lettered."""
    ctx = get_context()
    try:
        parsed = Order.from_message(order)
        outcome = commit_orders(ctx, [parsed])
    except PERMANENT_ORDER_ERRORS as exc:
        dead_letter_order(ctx, app, order, str(exc), self.request.id)
        return "dead_lettered"
    for failed, reason in outcome.result.failed:
        dead_letter_order(ctx, app, failed.to_message(), reason, self.request.id)
    return "dead_lettered" if outcome.result.failed else outcome.outcome_of(parsed)


@app.task(bind=True, base=MeteredTask, name=APPLY_ITEM_UPDATE, **_RETRY)
def apply_item_update(self: MeteredTask, update: dict[str, Any]) -> str:
    """Apply a versioned item update; the outcome: applied, stale, dead_lettered.

    A retry or redelivery of an update that committed before failing finds the row at its
    version ("stale") and still shifts the Redis stock by the delta it recorded: the
    store applies each version's shift exactly once.
    """
    ctx = get_context()
    try:
        parsed = ItemUpdate.from_message(update)
        with ctx.db.connection() as conn:
            applied = apply_update(conn, parsed)
            delta = applied.stock_delta if applied is not None else recorded_delta(conn, parsed)
    except PERMANENT_UPDATE_ERRORS as exc:
        publish_dead_letter(
            app,
            ctx.settings.dead_letter_queue,
            kind="apply_item_update",
            payload=update,
            reason=str(exc),
            task_id=self.request.id,
        )
        return "dead_lettered"
    # Invalidated even when stale: a retry after a Redis error lands here with the row
    # already updated, and an extra delete costs one cache miss.
    ctx.cache.invalidate_twice(parsed.item_id)
    if delta:
        shift_redis_stock(ctx.store, parsed, delta)
    return "stale" if applied is None else "applied"
