"""The reconciler against real Redis, PostgreSQL and RabbitMQ."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from kombu import Connection
from prometheus_client import REGISTRY

from services.keys import new_order_id
from services.messaging import durable_queue
from services.reconciler import Reconciler
from services.settings import get_settings
from services.store import Order, OrderStore, Outcome, Status, task_payload
from services.worker.items import ItemUpdate, apply_update


@pytest.fixture
def reconciler(
    service_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Reconciler]:
    """A reconciler with a 0.2 s grace period on this test's services."""
    monkeypatch.setenv("RECONCILE_GRACE_SECONDS", "0.2")
    get_settings.cache_clear()
    instance = Reconciler(get_settings())
    yield instance
    instance.close()


@pytest.fixture
def store(reconciler: Reconciler) -> OrderStore:
    """The reconciler's own order store (same prefix)."""
    return reconciler.store


@pytest.fixture
def db(pg_url: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to the test's database."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        yield conn


def seed(db: psycopg.Connection[Any], store: OrderStore, item_id: int, stock: int) -> None:
    """An item in PostgreSQL with a Redis stock counter of the same value."""
    db.execute(
        "INSERT INTO items (id, name, price_cents, stock, initial_stock)"
        " VALUES (%s, 'x', 1, %s, %s)",
        (item_id, stock, stock),
    )
    store.set_stock(item_id, stock)


def reserve(store: OrderStore, item_id: int, quantity: int) -> Order:
    """An accepted order in Redis, never published (the api crashed right after)."""
    result = store.reserve(
        new_order_id(item_id),
        item_id,
        f"u-{uuid.uuid4().hex}",
        quantity,
        None,
        int(time.time() * 1000),
    )
    assert result.outcome is Outcome.ACCEPTED and result.order is not None
    return result.order


def queued_orders(amqp_url: str) -> list[dict[str, Any]]:
    """The ``order`` argument of every message in the order queue (consumed)."""
    queue = durable_queue(get_settings().order_queue)
    found = []
    with Connection(amqp_url) as conn:
        bound = queue(conn.default_channel)
        while (message := bound.get(no_ack=True)) is not None:
            _, kwargs, _ = json.loads(message.body)
            found.append(kwargs["order"])
    return found


def republished_total() -> float:
    """This process's reconciler_orders_republished_total."""
    return REGISTRY.get_sample_value("reconciler_orders_republished_total") or 0.0


def repairs_total() -> float:
    """This process's reconciler_stock_repairs_total."""
    return REGISTRY.get_sample_value("reconciler_stock_repairs_total") or 0.0


def test_stranded_orders_are_recovered_and_stock_drift_repaired(
    reconciler: Reconciler, store: OrderStore, db: psycopg.Connection[Any], amqp_url: str
) -> None:
    seed(db, store, 1, 10)
    seed(db, store, 2, 10)
    never_published = reserve(store, 1, 2)
    # Persisted by a worker that died before marking it in Redis.
    persisted_unmarked = reserve(store, 1, 1)
    db.execute(
        "INSERT INTO orders (order_id, item_id, user_id, quantity, accepted_at)"
        " VALUES (%s, 1, 'u', 1, now())",
        (persisted_unmarked["order_id"],),
    )
    db.execute("UPDATE items SET stock = stock - 1 WHERE id = 1")
    # Item 2 drifted: Redis lost 3 units nobody bought.
    store.client.decrby(store.keys.stock(2), 3)
    time.sleep(0.3)  # past the grace period
    before = republished_total()
    repairs_before = repairs_total()

    report = reconciler.run_once()

    assert report.republished == [never_published["order_id"]]
    assert republished_total() - before == 1
    assert report.marked_persisted == [persisted_unmarked["order_id"]]
    marked = store.get_order(persisted_unmarked["order_id"])
    assert marked is not None and marked.get("status") == Status.PERSISTED
    # Item 1 is consistent: Redis 7 == database 9 - 2 pending units.
    assert report.stock_mismatches == {2: (7, 10)}
    assert REGISTRY.get_sample_value("reconciler_stock_mismatch_items") == 1
    # ...and repaired by the gap, relative to whatever was reserved meanwhile.
    assert report.stock_repairs == {2: 3}
    assert repairs_total() - repairs_before == 1
    assert store.get_stocks([1, 2]) == [7, 10]
    assert report.pending == 1
    assert queued_orders(amqp_url) == [task_payload(never_published)]
    again = reconciler.run_once()
    assert again.stock_mismatches == {} and again.stock_repairs == {}


def test_republish_waits_while_the_order_queue_has_a_backlog(
    reconciler: Reconciler, store: OrderStore, db: psycopg.Connection[Any], amqp_url: str
) -> None:
    seed(db, store, 1, 10)
    reserve(store, 1, 1)
    time.sleep(0.3)
    assert len(reconciler.run_once().republished) == 1
    # The re-published message is still queued (no worker): do not publish it again.
    report = reconciler.run_once()
    assert report.republished == []
    assert report.republish_deferred == 1
    assert report.queue_messages[get_settings().order_queue] == 1
    assert (
        REGISTRY.get_sample_value("broker_queue_messages", {"queue": get_settings().order_queue})
        == 1
    )
    assert len(queued_orders(amqp_url)) == 1


def test_consistent_state_reports_nothing(
    reconciler: Reconciler, store: OrderStore, db: psycopg.Connection[Any]
) -> None:
    seed(db, store, 1, 10)
    reserve(store, 1, 3)  # fresh: inside the grace period
    report = reconciler.run_once()
    assert report.republished == [] and report.marked_persisted == []
    assert report.stock_mismatches == {}
    assert report.pending == 1


def test_an_order_a_worker_claimed_recently_is_left_to_it(
    reconciler: Reconciler, store: OrderStore, db: psycopg.Connection[Any], amqp_url: str
) -> None:
    seed(db, store, 1, 10)
    claimed, unclaimed = reserve(store, 1, 1), reserve(store, 1, 1)
    time.sleep(0.3)  # both stale
    store.claim([(1, claimed["order_id"])], int(time.time() * 1000))  # a worker retries it
    report = reconciler.run_once()
    assert report.republished == [unclaimed["order_id"]]
    assert report.claimed_recently == 1
    assert [o["order_id"] for o in queued_orders(amqp_url)] == [unclaimed["order_id"]]
    # Its worker went quiet for longer than the claim grace: now it is republished.
    store.claim([(1, claimed["order_id"])], int(time.time() * 1000) - 120_000)
    assert claimed["order_id"] in reconciler.run_once().republished


def test_pending_reservations_are_no_drift_and_a_real_one_is_confirmed(
    reconciler: Reconciler, store: OrderStore, db: psycopg.Connection[Any]
) -> None:
    """Live reservations (read atomically with the counter) never look like a drift."""
    seed(db, store, 1, 10)
    for _ in range(3):
        reserve(store, 1, 1)  # pending: Redis 7 == 10 - 3
    first = reconciler._measure_mismatches([1], full=True)
    assert first == {}
    store.client.decrby(store.keys.stock(1), 2)
    assert reconciler._measure_mismatches([1]) == {1: (5, 7)}
    assert reconciler.stock_mismatches([1]) == {1: (5, 7)}  # twice the same gap: confirmed


def test_an_update_committed_while_measuring_is_replayed_not_repaired(
    reconciler: Reconciler,
    store: OrderStore,
    db: psycopg.Connection[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An item update commits right after the pass replayed the recorded changes and its
    worker has not shifted Redis yet: the gap is replayed away, never 'repaired' (which
    the worker's own shift would then double)."""
    seed(db, store, 1, 10)
    measure = reconciler._measure_mismatches
    measured: list[int] = []

    def measure_after_an_update(item_ids: Any, *, full: bool = False) -> Any:
        if not measured:
            assert apply_update(db, ItemUpdate(1, 10**15, stock=15)) is not None
        measured.append(1)
        return measure(item_ids, full=full)

    monkeypatch.setattr(reconciler, "_measure_mismatches", measure_after_an_update)
    report = reconciler.run_once()
    assert report.stock_repairs == {}
    assert store.get_stocks([1]) == [15]
    assert store.shift_stock(1, 10**15, 5).value == "already"  # the worker's late shift
    assert store.get_stocks([1]) == [15]
