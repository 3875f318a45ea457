"""Persist accepted orders into PostgreSQL: one transaction per list of orders.

:func:`persist_orders` is the one write path for orders. The tasks call it with a list
of one; the batching layer (gmpworker pool) calls it unchanged with lists of a hundred.

Guarantees, per call:

- Idempotent by ``order_id``: an order already in the table is reported as a duplicate
  and changes nothing (``INSERT ... ON CONFLICT (order_id) DO NOTHING``), so a
  redelivered message is persisted once.
- Never oversells: the item rows are locked (``FOR UPDATE``, in id order so concurrent
  batches cannot deadlock), each new order is checked against the locked stock in list
  order, and the stock is decremented by ``UPDATE ... WHERE stock >= qty`` as the last
  guard (plus the table's ``CHECK (stock >= 0)``).
- One bad order does not sink its batch: an order that cannot be honoured (unknown item,
  not enough stock left) is left out of the transaction and returned in
  :attr:`PersistResult.failed`, for the caller to dead-letter and compensate.

The "validate under lock, then write" shape was chosen over a savepoint per order:
it is four statements for the whole list whatever its length, instead of three round
trips per order.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg


class InvalidOrderError(ValueError):
    """An order message that can never be persisted (missing or malformed fields)."""


@dataclass(frozen=True, slots=True)
class Order:
    """One accepted order, as the api publishes it."""

    order_id: str
    item_id: int
    user_id: str
    quantity: int
    accepted_at_ms: int

    @classmethod
    def from_message(cls, payload: Mapping[str, Any]) -> Order:
        """Validate a ``persist_order`` message body; raise :class:`InvalidOrderError` if bad."""
        try:
            order = cls(
                order_id=str(uuid.UUID(str(payload["order_id"]))),
                item_id=int(payload["item_id"]),
                user_id=str(payload["user_id"]),
                quantity=int(payload["quantity"]),
                accepted_at_ms=int(payload["accepted_at_ms"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidOrderError(f"malformed order message {dict(payload)!r}: {exc!r}") from exc
        if order.quantity < 1:
            raise InvalidOrderError(f"order {order.order_id}: quantity {order.quantity} < 1")
        if not order.user_id:
            raise InvalidOrderError(f"order {order.order_id}: empty user_id")
        return order

    def to_message(self) -> dict[str, Any]:
        """The message body the api publishes for this order (used to re-publish it)."""
        return {
            "order_id": self.order_id,
            "item_id": self.item_id,
            "user_id": self.user_id,
            "quantity": self.quantity,
            "accepted_at_ms": self.accepted_at_ms,
        }


@dataclass(slots=True)
class PersistResult:
    """What one :func:`persist_orders` call did with each order of its list."""

    inserted: list[Order] = field(default_factory=list)
    """Committed by this call."""
    duplicates: list[Order] = field(default_factory=list)
    """Already in the table (a redelivery): nothing written, still counts as persisted."""
    failed: list[tuple[Order, str]] = field(default_factory=list)
    """Permanently impossible, with the reason: to dead-letter and compensate."""

    @property
    def persisted(self) -> list[Order]:
        """Every order now in the database (inserted now or before)."""
        return self.inserted + self.duplicates


class OversellGuardError(RuntimeError):
    """The final ``stock >= qty`` guard refused an update the locked check had allowed."""


_LOCK_ITEMS = "SELECT id, stock FROM items WHERE id = ANY(%s) ORDER BY id FOR UPDATE"
_EXISTING = "SELECT order_id::text FROM orders WHERE order_id = ANY(%s::uuid[])"
_INSERT = """
INSERT INTO orders (order_id, item_id, user_id, quantity, accepted_at)
SELECT o.order_id, o.item_id, o.user_id, o.quantity, to_timestamp(o.accepted_at_ms / 1000.0)
FROM unnest(%s::uuid[], %s::bigint[], %s::text[], %s::int[], %s::bigint[])
     AS o (order_id, item_id, user_id, quantity, accepted_at_ms)
ON CONFLICT (order_id) DO NOTHING
RETURNING order_id::text
"""
_DECREMENT = """
UPDATE items SET stock = items.stock - d.qty, updated_at = now()
FROM unnest(%s::bigint[], %s::int[]) AS d (id, qty)
WHERE items.id = d.id AND items.stock >= d.qty
"""


def persist_orders(conn: psycopg.Connection[Any], orders: Sequence[Order]) -> PersistResult:
    """Persist ``orders`` in one transaction on ``conn``; see the module docstring.

    ``conn`` must not be inside a transaction. Database errors propagate (the whole list
    is rolled back) for the caller to retry: transient ones are ``psycopg.OperationalError``.
    """
    result = PersistResult()
    if not orders:
        return result
    with conn.transaction():
        stock = _lock_items(conn, {o.item_id for o in orders})
        existing = _existing_ids(conn, [o.order_id for o in orders])
        to_insert = _allot_stock(orders, stock, existing, result)
        inserted_ids = _insert(conn, to_insert)
        result.inserted = [o for o in to_insert if o.order_id in inserted_ids]
        # A row another transaction inserted between our check and our insert (only
        # possible for a different item id, i.e. a corrupt duplicate id) is a duplicate.
        result.duplicates += [o for o in to_insert if o.order_id not in inserted_ids]
        _decrement_stock(conn, result.inserted)
    return result


def _lock_items(conn: psycopg.Connection[Any], item_ids: set[int]) -> dict[int, int]:
    """Lock the items' rows for this transaction; their current stock by id."""
    rows = conn.execute(_LOCK_ITEMS, (sorted(item_ids),)).fetchall()
    return {int(item_id): int(stock) for item_id, stock in rows}


def _existing_ids(conn: psycopg.Connection[Any], order_ids: list[str]) -> set[str]:
    """Those of ``order_ids`` already persisted."""
    return {row[0] for row in conn.execute(_EXISTING, (order_ids,))}


def _allot_stock(
    orders: Sequence[Order], stock: dict[int, int], existing: set[str], result: PersistResult
) -> list[Order]:
    """Orders to insert, in list order while stock lasts; record duplicates and failures.

    Two copies of one order in one list (a redelivery next to its original) share the
    first copy's fate: a duplicate if it is inserted, the same failure if it fails. A copy
    is never reported persisted unless the row exists.
    """
    remaining = dict(stock)
    fate: dict[str, str | None] = {}  # order id -> failure reason, None when inserted
    to_insert = []
    for order in orders:
        if order.order_id in existing:
            result.duplicates.append(order)
            continue
        if order.order_id in fate:
            reason = fate[order.order_id]
            if reason is None:
                result.duplicates.append(order)
            else:
                result.failed.append((order, reason))
            continue
        reason = _shortfall(order, remaining.get(order.item_id))
        fate[order.order_id] = reason
        if reason is None:
            remaining[order.item_id] -= order.quantity
            to_insert.append(order)
        else:
            result.failed.append((order, reason))
    return to_insert


def _shortfall(order: Order, left: int | None) -> str | None:
    """Why ``order`` cannot be taken from ``left`` units (``None`` if it can)."""
    if left is None:
        return f"unknown item {order.item_id}"
    if left < order.quantity:
        return f"oversell guard: item {order.item_id} has {left} left, order wants {order.quantity}"
    return None


def _insert(conn: psycopg.Connection[Any], orders: list[Order]) -> set[str]:
    """Insert ``orders`` in one statement; the ids actually inserted."""
    if not orders:
        return set()
    columns = (
        [o.order_id for o in orders],
        [o.item_id for o in orders],
        [o.user_id for o in orders],
        [o.quantity for o in orders],
        [o.accepted_at_ms for o in orders],
    )
    return {row[0] for row in conn.execute(_INSERT, columns)}


def _decrement_stock(conn: psycopg.Connection[Any], orders: list[Order]) -> None:
    """Take the inserted orders' units off their items, one guarded row update per item."""
    per_item = Counter[int]()
    for order in orders:
        per_item[order.item_id] += order.quantity
    if not per_item:
        return
    ids = sorted(per_item)
    cursor = conn.execute(_DECREMENT, (ids, [per_item[i] for i in ids]))
    if cursor.rowcount != len(ids):
        # Unreachable while the rows are locked; raising rolls the whole list back
        # rather than commit orders whose stock was not taken.
        raise OversellGuardError(f"stock guard refused {len(ids) - cursor.rowcount} item(s)")
