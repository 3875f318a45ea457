"""One reconciliation pass: recover orders stuck between Redis and PostgreSQL, check stock.

Redis is the source of truth for *accepted* orders, PostgreSQL for *persisted* ones. An
order can be stranded in between if the api crashed after reserving and before its
publish was confirmed, or if the worker gave up on a transient error. Each pass:

1. takes the orders still ``accepted`` after the grace period;
2. marks ``persisted`` those the database already has (the worker died between its
   commit and the Redis update) and re-publishes the others (the worker is idempotent,
   so a duplicate is harmless). While the order queue has a backlog, re-publishing
   waits: an old order may simply still be queued, and duplicating a whole backlog
   during a spike would double the work that is already late;
3. checks every warmed item's invariant ``redis stock == db stock - pending units``
   (pending units: orders accepted in Redis and not yet in the database) and reports
   the items that differ (gauge + log). A difference seen once may be a race with an
   order being reserved or persisted during the check, so a differing item is measured
   again and reported only if it differs both times by the same amount;
4. exports queue depths and the number of pending orders.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
import redis
from amqp.exceptions import NotFound
from celery import Celery
from psycopg_pool import ConnectionPool

from services.messaging import PERSIST_ORDER
from services.metrics import (
    ORDERS_REPUBLISHED,
    PENDING_ORDERS,
    QUEUE_MESSAGES,
    STOCK_MISMATCHES,
    STOCK_REMAINING,
)
from services.settings import Settings, get_settings
from services.store import Order, OrderStore, task_payload
from services.worker.app import create_app

log = logging.getLogger(__name__)

ALL_PENDING = 1_000_000
"""Upper bound on the pending orders read in one pass (a spike's worth)."""


@dataclass(slots=True)
class Report:
    """What one pass found and did."""

    republished: list[str] = field(default_factory=list)
    marked_persisted: list[str] = field(default_factory=list)
    republish_deferred: int = 0
    """Stale orders left for a later pass because the order queue had a backlog."""
    stock_mismatches: dict[int, tuple[int, int]] = field(default_factory=dict)
    """item id -> (Redis stock, expected: database stock minus pending units)."""
    queue_messages: dict[str, int] = field(default_factory=dict)
    pending: int = 0


class Reconciler:
    """Holds the connections one reconciler process reuses from pass to pass."""

    def __init__(self, settings: Settings, app: Celery | None = None) -> None:
        self.settings = settings
        self.app = app or create_app()
        self.store = OrderStore(
            redis.Redis.from_url(settings.redis_url),
            settings.redis_prefix,
            per_user_limit=settings.per_user_limit,
            idempotency_ttl_seconds=settings.idempotency_ttl_seconds,
        )
        self.db: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            settings.database_url, min_size=1, max_size=2, kwargs={"autocommit": True}, open=True
        )

    def close(self) -> None:
        """Close every connection."""
        self.db.close()
        self.store.client.close()
        self.app.close()

    def run_once(self) -> Report:
        """One pass (see the module docstring); metrics are updated as a side effect."""
        report = Report()
        report.queue_messages = self.queue_depths()
        self.recover_stale_orders(report)
        report.stock_mismatches = self.stock_mismatches()
        report.pending = int(self.store.client.zcard(self.store.keys.pending))
        PENDING_ORDERS.set(report.pending)
        return report

    def recover_stale_orders(self, report: Report) -> None:
        """Mark persisted the stale orders the database has; re-publish the others."""
        now_ms = int(time.time() * 1000)
        grace_ms = int(self.settings.reconcile_grace_seconds * 1000)
        stale = self.store.pending_older_than(now_ms - grace_ms, ALL_PENDING)
        if not stale:
            return
        in_db = self.orders_in_db(o["order_id"] for o in stale)
        report.marked_persisted = self.store.mark_persisted(sorted(in_db), now_ms)
        missing = [o for o in stale if o["order_id"] not in in_db]
        if report.queue_messages.get(self.settings.order_queue, 0) > 0:
            report.republish_deferred = len(missing)
            log.info("%d stale orders wait for the order queue's backlog", len(missing))
            return
        for order in missing:
            self.republish(order)
            report.republished.append(order["order_id"])

    def republish(self, order: Order) -> None:
        """Publish the order's ``persist_order`` message again (confirmed)."""
        self.app.send_task(
            PERSIST_ORDER, kwargs={"order": task_payload(order)}, queue=self.settings.order_queue
        )
        ORDERS_REPUBLISHED.inc()
        log.warning(
            "re-published order %s accepted at %s", order["order_id"], order["accepted_at_ms"]
        )

    def orders_in_db(self, order_ids: Iterable[str]) -> set[str]:
        """Those of ``order_ids`` the orders table holds."""
        with self.db.connection() as conn:
            rows = conn.execute(
                "SELECT order_id::text FROM orders WHERE order_id = ANY(%s::uuid[])",
                (list(order_ids),),
            )
            return {row[0] for row in rows}

    def stock_mismatches(self) -> dict[int, tuple[int, int]]:
        """Items breaking ``redis == db - pending`` twice in a row; also sets the gauge."""
        first = self._measure_mismatches(None)
        second = self._measure_mismatches(sorted(first)) if first else {}
        confirmed = {
            item_id: seen for item_id, seen in second.items() if _gap(seen) == _gap(first[item_id])
        }
        STOCK_MISMATCHES.set(len(confirmed))
        for item_id, (in_redis, expected) in sorted(confirmed.items()):
            log.warning(
                "stock mismatch on item %d: Redis has %d, database minus pending is %d",
                item_id,
                in_redis,
                expected,
            )
        return confirmed

    def _measure_mismatches(self, item_ids: Sequence[int] | None) -> dict[int, tuple[int, int]]:
        """(Redis, expected) for the items that differ; all items when ``item_ids`` is None.

        Redis is read before the database, so an order persisted in between is both in
        the database's stock and excluded from the pending units: no false alarm.
        """
        ids = list(item_ids) if item_ids is not None else self._item_ids()
        in_redis = dict(zip(ids, self.store.get_stocks(ids), strict=True))
        if item_ids is None:  # a full pass: the dashboards' "stock left"
            STOCK_REMAINING.set(sum(v for v in in_redis.values() if v is not None))
        pending = self.store.pending_older_than(int(time.time() * 1000) + 1, ALL_PENDING)
        db_stock = self._db_stock(ids)
        persisted = self.orders_in_db(o["order_id"] for o in pending)
        pending_units = Counter[int]()
        for order in pending:
            if order["order_id"] not in persisted:
                pending_units[order["item_id"]] += order["quantity"]
        found = {}
        for item_id, stock in db_stock.items():
            live = in_redis[item_id]
            expected = stock - pending_units[item_id]
            if live is not None and live != expected:
                found[item_id] = (live, expected)
        return found

    def _item_ids(self) -> list[int]:
        with self.db.connection() as conn:
            return [int(row[0]) for row in conn.execute("SELECT id FROM items ORDER BY id")]

    def _db_stock(self, item_ids: Sequence[int]) -> dict[int, int]:
        with self.db.connection() as conn:
            rows = conn.execute("SELECT id, stock FROM items WHERE id = ANY(%s)", (list(item_ids),))
            return {int(item_id): int(stock) for item_id, stock in rows}

    def queue_depths(self) -> dict[str, int]:
        """Ready messages per queue (passive declare: a missing queue is skipped)."""
        depths = {}
        names = (
            self.settings.order_queue,
            self.settings.item_update_queue,
            self.settings.dead_letter_queue,
        )
        with self.app.connection_for_write() as conn:
            for name in names:
                channel = conn.channel()
                try:
                    depths[name] = int(
                        channel.queue_declare(queue=name, passive=True).message_count
                    )
                    QUEUE_MESSAGES.labels(name).set(depths[name])
                except NotFound:
                    log.info("queue %s does not exist yet", name)
                finally:
                    # A passive declare of a missing queue makes the broker close the channel.
                    if channel.is_open:
                        channel.close()
        return depths


def _gap(seen: tuple[int, int]) -> int:
    return seen[0] - seen[1]


def run_once(settings: Settings | None = None) -> Report:
    """One pass with fresh connections (tests, cron-style use)."""
    reconciler = Reconciler(settings or get_settings())
    try:
        return reconciler.run_once()
    finally:
        reconciler.close()
