"""persist_orders against a real PostgreSQL: idempotency, the oversell guard, per-item totals."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from services.worker.persistence import InvalidOrderError, Order, persist_orders


@pytest.fixture
def conn(pg_url: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to a fresh database holding items 1 (stock 5) and 2 (stock 10)."""
    with psycopg.connect(pg_url, autocommit=True) as connection:
        connection.execute(
            "INSERT INTO items (id, name, price_cents, stock, initial_stock) VALUES"
            " (1, 'one', 100, 5, 5), (2, 'two', 200, 10, 10)"
        )
        yield connection


def order(item_id: int, quantity: int = 1) -> Order:
    """A fresh order for ``item_id``."""
    return Order(
        str(uuid.uuid4()), item_id, f"u-{uuid.uuid4().hex[:6]}", quantity, 1_700_000_000_000
    )


def stocks(conn: psycopg.Connection[Any]) -> dict[int, int]:
    """Stock by item id."""
    return dict(conn.execute("SELECT id, stock FROM items").fetchall())


def order_count(conn: psycopg.Connection[Any]) -> int:
    """Rows in the orders table."""
    row = conn.execute("SELECT count(*) FROM orders").fetchone()
    assert row is not None
    return int(row[0])


def test_new_orders_are_inserted_and_stock_taken_per_item(conn: psycopg.Connection[Any]) -> None:
    batch = [order(1, 2), order(2, 3), order(1, 1), order(2, 4)]
    result = persist_orders(conn, batch)
    assert result.inserted == batch
    assert result.duplicates == [] and result.failed == []
    assert stocks(conn) == {1: 2, 2: 3}
    assert order_count(conn) == 4


def test_a_redelivered_order_is_persisted_once(conn: psycopg.Connection[Any]) -> None:
    first = order(1, 2)
    assert persist_orders(conn, [first]).inserted == [first]
    again = persist_orders(conn, [first, first])
    assert again.inserted == [] and again.duplicates == [first, first]
    assert stocks(conn)[1] == 3
    assert order_count(conn) == 1


def test_oversell_guard_fails_only_the_orders_beyond_stock(conn: psycopg.Connection[Any]) -> None:
    fits, too_many, still_fits = order(1, 4), order(1, 2), order(1, 1)
    result = persist_orders(conn, [fits, too_many, still_fits])
    assert result.inserted == [fits, still_fits]
    assert [(o, reason.split(":")[0]) for o, reason in result.failed] == [
        (too_many, "oversell guard")
    ]
    assert stocks(conn)[1] == 0
    assert order_count(conn) == 2


def test_copies_in_one_batch_share_the_first_copys_fate(conn: psycopg.Connection[Any]) -> None:
    """A republished copy next to its original: never reported persisted without a row."""
    fits, too_many = order(1, 5), order(1, 2)
    result = persist_orders(conn, [fits, too_many, fits, too_many])
    assert result.inserted == [fits]
    assert result.duplicates == [fits]
    assert [o for o, _ in result.failed] == [too_many, too_many]
    assert result.failed[0][1] == result.failed[1][1]
    assert too_many not in result.persisted
    assert stocks(conn)[1] == 0


def test_unknown_item_fails_without_sinking_the_batch(conn: psycopg.Connection[Any]) -> None:
    good, unknown = order(2), order(99)
    result = persist_orders(conn, [unknown, good])
    assert result.inserted == [good]
    assert result.failed == [(unknown, "unknown item 99")]


def test_nothing_is_written_when_the_transaction_fails(conn: psycopg.Connection[Any]) -> None:
    # A user id with a NUL byte is rejected by PostgreSQL: the whole list rolls back.
    bad = Order(str(uuid.uuid4()), 1, "bad\x00user", 1, 1_700_000_000_000)
    with pytest.raises(psycopg.DataError):
        persist_orders(conn, [order(1), bad])
    assert order_count(conn) == 0
    assert stocks(conn)[1] == 5


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {
            "order_id": "not-a-uuid",
            "item_id": 1,
            "user_id": "u",
            "quantity": 1,
            "accepted_at_ms": 1,
        },
        {
            "order_id": str(uuid.uuid4()),
            "item_id": 1,
            "user_id": "u",
            "quantity": 0,
            "accepted_at_ms": 1,
        },
        {
            "order_id": str(uuid.uuid4()),
            "item_id": "x",
            "user_id": "u",
            "quantity": 1,
            "accepted_at_ms": 1,
        },
    ],
)
def test_malformed_messages_are_rejected_by_name(payload: dict[str, Any]) -> None:
    with pytest.raises(InvalidOrderError):
        Order.from_message(payload)
