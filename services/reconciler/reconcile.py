"""One reconciliation pass: recover orders stuck between Redis and PostgreSQL, repair stock.

Redis is the source of truth for *live* orders (accepted, or claimed by a worker),
PostgreSQL for *persisted* ones. An order can be stranded in between if the api crashed
after reserving and before its publish was confirmed, if a reservation's reply was lost,
or if the worker gave up on a transient error. Each pass:

1. replays the item updates' recorded stock changes of the last hour into Redis (each
   version is applied once, so this only does something for an update whose task was
   lost after its commit);
2. takes the live orders older than the grace period; marks ``persisted`` those the
   database already has (the worker died between its commit and the Redis update) and
   re-publishes the others, unless a worker claimed (tried) them within
   ``RECONCILE_CLAIM_GRACE_SECONDS``: that worker's retries still hold it. While the
   order queue has a backlog, re-publishing waits: an old order may simply still be
   queued. A re-published copy next to the original is harmless (persistence is
   exactly-once by id, and copies in one batch share one fate);
3. checks every warmed item's invariant ``redis stock == db stock - pending units``
   (pending units: live orders not yet in the database), each item's counter and live
   orders read atomically in Redis and the database read in one snapshot, so orders
   being reserved or persisted meanwhile cause no false alarm. A differing item is
   measured again, and if it differs by the same amount both times the counter is
   *repaired* by that amount (a relative ``INCRBY``, so reservations meanwhile are kept),
   counted in ``reconciler_stock_repairs_total`` and logged;
4. exports queue depths and the number of pending orders.
"""

from __future__ import annotations

import logging
import time
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
    STOCK_REPAIRS,
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
    claimed_recently: int = 0
    """Stale orders left alone because a worker claimed them recently."""
    stock_mismatches: dict[int, tuple[int, int]] = field(default_factory=dict)
    """item id -> (Redis stock, expected: database stock minus pending units), confirmed."""
    stock_repairs: dict[int, int] = field(default_factory=dict)
    """item id -> the correction added to its Redis counter."""
    queue_messages: dict[str, int] = field(default_factory=dict)
    pending: int = 0


REPLAY_WINDOW = "1 hour"
"""How far back the item updates' stock changes are replayed (each is a no-op once seen)."""


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
            settings.database_url,
            min_size=1,
            max_size=2,
            kwargs={"autocommit": True},
            open=True,
            check=ConnectionPool.check_connection,  # replaces connections a restart killed
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
        items = self._item_ids()
        self.replay_stock_changes()
        self.recover_stale_orders(report, items)
        report.stock_mismatches = self.stock_mismatches(items)
        report.stock_repairs = self.repair_stock(report.stock_mismatches)
        report.pending = self.store.pending_count(items)
        PENDING_ORDERS.set(report.pending)
        return report

    def replay_stock_changes(self) -> None:
        """Shift Redis by every recent recorded stock change it has not seen (idempotent)."""
        with self.db.connection() as conn:
            rows = conn.execute(
                "SELECT item_id, version, delta FROM item_stock_changes"
                f" WHERE changed_at > now() - interval '{REPLAY_WINDOW}' ORDER BY version"
            ).fetchall()
        for item_id, version, delta in rows:
            self.store.shift_stock(int(item_id), int(version), int(delta))

    def recover_stale_orders(self, report: Report, item_ids: Sequence[int]) -> None:
        """Mark persisted the stale orders the database has; re-publish the others that no
        worker claimed recently."""
        now_ms = int(time.time() * 1000)
        grace_ms = int(self.settings.reconcile_grace_seconds * 1000)
        stale = self.store.pending_older_than(now_ms - grace_ms, ALL_PENDING, item_ids)
        if not stale:
            return
        in_db = self.orders_in_db(o["order_id"] for o in stale)
        report.marked_persisted = self.store.mark_persisted(
            sorted((o["item_id"], o["order_id"]) for o in stale if o["order_id"] in in_db),
            now_ms,
        )
        claim_cutoff = now_ms - int(self.settings.reconcile_claim_grace_seconds * 1000)
        missing = [o for o in stale if o["order_id"] not in in_db]
        unclaimed = [o for o in missing if o.get("claimed_at_ms", 0) < claim_cutoff]
        report.claimed_recently = len(missing) - len(unclaimed)
        if report.queue_messages.get(self.settings.order_queue, 0) > 0:
            report.republish_deferred = len(unclaimed)
            log.info("%d stale orders wait for the order queue's backlog", len(unclaimed))
            return
        for order in unclaimed:
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
            return _rows_of(conn, order_ids)

    def stock_mismatches(self, item_ids: Sequence[int]) -> dict[int, tuple[int, int]]:
        """Items breaking ``redis == db - pending`` twice in a row by the same amount; also
        sets the gauge."""
        first = self._measure_mismatches(item_ids, full=True)
        if first:
            # An item update committed just before the first measurement and not yet
            # shifted in Redis would look like the same gap twice; replayed now, it cannot.
            self.replay_stock_changes()
        second = self._measure_mismatches(sorted(first)) if first else {}
        confirmed = {
            item_id: seen for item_id, seen in second.items() if _gap(seen) == _gap(first[item_id])
        }
        STOCK_MISMATCHES.set(len(confirmed))
        return confirmed

    def repair_stock(self, mismatches: dict[int, tuple[int, int]]) -> dict[int, int]:
        """Correct each confirmed mismatch by its gap (relative); the corrections made."""
        repairs = {}
        for item_id, (in_redis, expected) in sorted(mismatches.items()):
            correction = expected - in_redis
            if self.store.adjust_stock(item_id, correction) is None:
                continue
            repairs[item_id] = correction
            STOCK_REPAIRS.inc()
            log.warning(
                "stock repair on item %d: Redis had %d, database minus pending is %d: %+d",
                item_id,
                in_redis,
                expected,
                correction,
            )
        return repairs

    def _measure_mismatches(
        self, item_ids: Sequence[int], *, full: bool = False
    ) -> dict[int, tuple[int, int]]:
        """(Redis, expected) for the items of ``item_ids`` that differ.

        Each item's counter and live orders come from one atomic read; the database's
        stock and rows from one snapshot taken after it. An order persisted in between is
        in the database's stock and among the rows, so it is not counted as pending: the
        two sides agree whatever ran meanwhile.
        """
        snapshots = self.store.snapshot(item_ids)
        if full:  # a full pass: the dashboards' "stock left"
            STOCK_REMAINING.set(sum(s.stock for s in snapshots.values() if s.stock is not None))
        live_ids = [order_id for s in snapshots.values() for order_id in s.live_units]
        with self.db.connection() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            db_stock = _db_stock(conn, item_ids)
            persisted = _rows_of(conn, live_ids)
        found = {}
        for item_id, snap in snapshots.items():
            if snap.stock is None or item_id not in db_stock:
                continue
            pending = sum(u for o, u in snap.live_units.items() if o not in persisted)
            expected = db_stock[item_id] - pending
            if snap.stock != expected:
                found[item_id] = (snap.stock, expected)
        return found

    def _item_ids(self) -> list[int]:
        with self.db.connection() as conn:
            return [int(row[0]) for row in conn.execute("SELECT id FROM items ORDER BY id")]

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
                # Any: kombu's stub types it as the abstract StdChannel, without the amqp
                # channel's queue_declare/is_open/close.
                channel: Any = conn.channel()
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


def _rows_of(conn: psycopg.Connection[Any], order_ids: Iterable[str]) -> set[str]:
    """Those of ``order_ids`` the orders table holds."""
    rows = conn.execute(
        "SELECT order_id::text FROM orders WHERE order_id = ANY(%s::uuid[])", (list(order_ids),)
    )
    return {row[0] for row in rows}


def _db_stock(conn: psycopg.Connection[Any], item_ids: Sequence[int]) -> dict[int, int]:
    rows = conn.execute("SELECT id, stock FROM items WHERE id = ANY(%s)", (list(item_ids),))
    return {int(item_id): int(stock) for item_id, stock in rows}


def _gap(seen: tuple[int, int]) -> int:
    return seen[0] - seen[1]


def run_once(settings: Settings | None = None) -> Report:
    """One pass with fresh connections (tests, cron-style use)."""
    reconciler = Reconciler(settings or get_settings())
    try:
        return reconciler.run_once()
    finally:
        reconciler.close()
