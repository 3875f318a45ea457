"""A randomized run (Hypothesis, stateful): orders, item updates, cancels, lost replies,
late confirms, crashed updates and redeliveries interleaved against the real Redis and
PostgreSQL, through the store and the worker's own functions, with the real reconciler.

After each example everything is settled and the invariants hold: every order the client
was told exists is persisted (or was dead-lettered because an admin lowered the stock
below the pending units, the only legitimate failure), a "nothing was reserved" order is
not persisted, one Idempotency-Key never persisted two orders, and for every item
Redis stock == PostgreSQL stock (nothing pending).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule, run_state_machine_as_test
from race_support import Race

from services.keys import new_order_id
from services.store import Outcome, Status, task_payload
from services.worker.items import ItemUpdate, apply_update, recorded_delta, shift_redis_stock

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(600)]

_item_ids = itertools.count(1000)
_versions = itertools.count(10**15)
STOCK = 6


@dataclass
class Told:
    """What the client was told about one order attempt."""

    kind: str  # accepted | nothing_reserved | unknown
    key: str | None
    item_id: int
    order_id: str | None


@dataclass
class Example:
    """One example's items and what happened to them."""

    items: list[int]
    told: list[Told] = field(default_factory=list)
    queue: list[dict[str, Any]] = field(default_factory=list)
    processed: list[dict[str, Any]] = field(default_factory=list)
    crashed_updates: list[ItemUpdate] = field(default_factory=list)
    stock_lowered: bool = False


class Interleavings(RuleBasedStateMachine):
    """The order path's steps as rules; the invariants are checked in :meth:`teardown`."""

    race: Race

    def __init__(self) -> None:
        super().__init__()
        self.ex = Example(items=[next(_item_ids), next(_item_ids)])
        for item_id in self.ex.items:
            self.race.db.execute(
                "INSERT INTO items (id, name, price_cents, stock, initial_stock)"
                " VALUES (%s, 'x', 1, %s, %s)",
                (item_id, STOCK, STOCK),
            )

    @property
    def store(self) -> Any:
        """The order store on the test's Redis prefix."""
        return self.race.store

    @initialize()
    def nothing(self) -> None:
        """Hypothesis wants at least one rule before the others can run."""

    def _reserve(self, order_id: str, item_id: int, user: str, qty: int, key: str | None) -> Any:
        """The api's reservation, with the first-use counter created from the database."""
        for _ in range(2):
            result = self.store.reserve(order_id, item_id, user, qty, key, int(time.time() * 1000))
            if result.outcome is not Outcome.UNKNOWN_ITEM:
                return result
            stock, version = self.race.db.execute(
                "SELECT stock, version FROM items WHERE id = %s", (item_id,)
            ).fetchone()
            self.store.init_stocks({item_id: (stock, version)})
        return result

    @rule(
        item=st.integers(0, 1),
        user=st.sampled_from(["ann", "bob", "cid"]),
        qty=st.integers(1, 3),
        key=st.sampled_from([None, "k-0000001", "k-0000002", "k-0000003"]),
        fate=st.sampled_from(["published", "publish_failed", "late_confirm", "reply_lost"]),
    )
    def order(self, item: int, user: str, qty: int, key: str | None, fate: str) -> None:
        """POST /orders with one of the fates a publish or a reply can have."""
        item_id = self.ex.items[item]
        order_id = new_order_id(item_id)
        result = self._reserve(order_id, item_id, user, qty, key)
        # The client library's retry of the same reservation changes nothing.
        again = self._reserve(order_id, item_id, user, qty, key)
        if result.outcome is Outcome.ACCEPTED:
            assert again.outcome is Outcome.ACCEPTED
            assert again.order is not None and again.order["order_id"] == order_id
        if fate == "reply_lost" and result.outcome is Outcome.ACCEPTED:
            self.ex.told.append(Told("unknown", key, item_id, order_id))  # never published
            return
        if result.outcome is Outcome.DUPLICATE:
            assert result.order is not None
            self.ex.told.append(Told("accepted", key, item_id, result.order["order_id"]))
            return
        if result.outcome is not Outcome.ACCEPTED:
            return
        assert result.order is not None
        message = task_payload(result.order)
        if fate == "published":
            self.ex.queue.append(message)
            self.ex.told.append(Told("accepted", key, item_id, order_id))
            return
        if fate == "late_confirm":  # the broker took it, its confirm came too late
            self.ex.queue.append(message)
        cancelled = self.store.cancel(item_id, order_id, "broker: test")
        kind = "nothing_reserved" if cancelled else "accepted"
        self.ex.told.append(Told(kind, key, item_id, order_id))

    @rule(n=st.integers(1, 4), copy=st.booleans())
    def worker_batch(self, n: int, copy: bool) -> None:
        """The worker takes up to n messages (plus a copy of the first: a redelivery)."""
        if not self.ex.queue:
            return
        batch, self.ex.queue = self.ex.queue[:n], self.ex.queue[n:]
        if copy:
            batch.append(batch[0])
        self.race.commit(batch)
        self.ex.processed += batch

    @rule(data=st.data())
    def redeliver(self, data: st.DataObject) -> None:
        """A message already processed comes again."""
        if self.ex.processed:
            self.ex.queue.append(data.draw(st.sampled_from(self.ex.processed)))

    @rule(item=st.integers(0, 1), delta=st.integers(-2, 5), crash=st.booleans())
    def update_item(self, item: int, delta: int, crash: bool) -> None:
        """An admin stock update; with ``crash`` the worker dies after its commit."""
        item_id = self.ex.items[item]
        (stock,) = self.race.db.execute(
            "SELECT stock FROM items WHERE id = %s", (item_id,)
        ).fetchone()
        update = ItemUpdate(item_id, next(_versions), stock=max(0, stock + delta))
        self.ex.stock_lowered |= delta < 0
        with self.race.worker.db.connection() as conn:
            applied = apply_update(conn, update)
        assert applied is not None
        if crash:
            self.ex.crashed_updates.append(update)
        elif applied.stock_delta:
            shift_redis_stock(self.store, update, applied.stock_delta)

    @rule()
    def retry_crashed_update(self) -> None:
        """The crashed update's redelivery: stale in the database, shifted once in Redis."""
        if not self.ex.crashed_updates:
            return
        update = self.ex.crashed_updates.pop(0)
        self._retry_update(update)

    def _retry_update(self, update: ItemUpdate) -> None:
        with self.race.worker.db.connection() as conn:
            assert apply_update(conn, update) is None
            delta = recorded_delta(conn, update)
        if delta:
            shift_redis_stock(self.store, update, delta)

    @rule()
    def reconcile(self) -> None:
        """A reconciler pass (it may republish stale orders to the broker)."""
        self.race.reconciler.run_once()

    def teardown(self) -> None:
        """Settle everything, then check the invariants."""
        for update in self.ex.crashed_updates:
            self._retry_update(update)
        deadline = time.monotonic() + 30
        while True:
            batch = self.ex.queue + self.race.take_messages()
            self.ex.queue = []
            if batch:
                self.race.commit(batch)
            self.race.reconciler.run_once()
            if not batch and self.store.pending_count(self.ex.items) == 0:
                break
            assert time.monotonic() < deadline, "still pending after 30 s"
        self.check()

    def check(self) -> None:
        """The invariants of the module docstring, on this example's items."""
        rows = {
            str(order_id)
            for (order_id,) in self.race.db.execute(
                "SELECT order_id FROM orders WHERE item_id = ANY(%s)", (self.ex.items,)
            )
        }
        db_items = dict(
            self.race.db.execute(
                "SELECT id, (stock, version) FROM items WHERE id = ANY(%s)", (self.ex.items,)
            ).fetchall()
        )
        # A warm-up creates the counters never used; then every item has one to compare.
        self.store.init_stocks({i: (int(s), int(v)) for i, (s, v) in db_items.items()})
        in_redis = dict(zip(self.ex.items, self.store.get_stocks(self.ex.items), strict=True))
        for item_id in self.ex.items:
            db_stock = int(db_items[item_id][0])
            assert in_redis[item_id] == db_stock, (item_id, in_redis[item_id], db_stock)
        per_key: Counter[tuple[int, str]] = Counter()
        for told in self.ex.told:
            order = self.store.get_order(told.order_id) if told.order_id else None
            if told.kind == "accepted":
                assert order is not None
                if told.order_id not in rows:
                    # Dead-lettered: legitimate only below an admin's lowered stock.
                    assert order["status"] == Status.FAILED and self.ex.stock_lowered, told
            elif told.kind == "nothing_reserved":
                assert told.order_id not in rows, told
            else:  # unknown: persisted, or lowered stock failed it
                assert told.order_id in rows or self.ex.stock_lowered, told
        for order_id in rows:
            order = self.store.get_order(order_id)
            assert order is not None and order["status"] == Status.PERSISTED
            if order.get("idempotency_key"):
                per_key[(order["item_id"], order["idempotency_key"])] += 1
        assert all(n == 1 for n in per_key.values()), per_key


async def test_random_interleavings_keep_every_invariant(race: Race) -> None:
    """A few dozen bounded examples (30 x 20 steps), each on items of its own."""
    Interleavings.race = race
    await asyncio.to_thread(
        run_state_machine_as_test,
        Interleavings,
        settings=settings(
            max_examples=30,
            stateful_step_count=20,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        ),
    )
