"""Versioned item updates (admin ``PUT /items/{id}``), applied by the worker.

Last writer wins *by version*, not by arrival: an update only applies if its version is
newer than the row's, so a reordered or redelivered older update changes nothing.

Stock semantics. ``items.stock`` is what PostgreSQL has not yet seen sold; the Redis
counter is what may still be sold, i.e. ``redis = db - units of pending orders``. An
admin setting the stock to ``N`` sets the database's stock to ``N`` and moves the Redis
counter by the same delta (``N - old``), which keeps that invariant without reading the
pending orders, and cannot race with reservations (``INCRBY`` is atomic) or with orders
being persisted (they change neither side of the invariant). The counter may go
negative when ``N`` is below the pending units; the oversell guard then fails the
excess pending orders, whose compensation brings the counter back to ``N``'s truth.
``initial_stock`` moves by the same delta, so ``initial_stock - stock`` stays the number
of units sold.

Exactly once. The delta is stored with the version in ``item_stock_changes`` in the
update's own transaction, and the Redis shift is recorded per version atomically with
the counter (:meth:`services.store.OrderStore.shift_stock`). A retry or redelivery that
finds the row already at its version reads the stored delta and shifts again, which the
store turns into a no-op if it was done: a Redis error or a crash after the commit can
no longer lose the shift, and no shift is applied twice. A counter that does not exist
yet records the shift, and its creation from an older read includes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import psycopg

from services.store import OrderStore, Shift


class InvalidItemUpdateError(ValueError):
    """An ``apply_item_update`` message that can never be applied."""


@dataclass(frozen=True, slots=True)
class ItemUpdate:
    """A new version of some of an item's fields (``None``: unchanged)."""

    item_id: int
    version: int
    name: str | None = None
    price_cents: int | None = None
    stock: int | None = None

    @classmethod
    def from_message(cls, payload: Mapping[str, Any]) -> ItemUpdate:
        """Validate an ``apply_item_update`` message; raise :class:`InvalidItemUpdateError`."""
        try:
            update = cls(
                item_id=int(payload["item_id"]),
                version=int(payload["version"]),
                name=_optional(payload, "name", str),
                price_cents=_optional(payload, "price_cents", int),
                stock=_optional(payload, "stock", int),
            )
        except (KeyError, TypeError, ValueError) as exc:
            detail = f"malformed item update {dict(payload)!r}: {exc!r}"
            raise InvalidItemUpdateError(detail) from exc
        for name in ("price_cents", "stock"):
            value = getattr(update, name)
            if value is not None and value < 0:
                raise InvalidItemUpdateError(f"item {update.item_id}: {name} {value} < 0")
        if update.name is not None and not update.name.strip():
            raise InvalidItemUpdateError(f"item {update.item_id}: empty name")
        return update


@dataclass(frozen=True, slots=True)
class AppliedUpdate:
    """The row's stock before and after an applied update."""

    old_stock: int
    new_stock: int

    @property
    def stock_delta(self) -> int:
        """How much the update moved the stock."""
        return self.new_stock - self.old_stock


def _optional(payload: Mapping[str, Any], key: str, kind: type[Any]) -> Any:
    value = payload.get(key)
    return None if value is None else kind(value)


_APPLY = """
WITH old AS (
    SELECT id, stock FROM items WHERE id = %(id)s AND version < %(version)s FOR UPDATE
)
UPDATE items SET
    name = COALESCE(%(name)s, items.name),
    price_cents = COALESCE(%(price_cents)s, items.price_cents),
    stock = COALESCE(%(stock)s, items.stock),
    initial_stock = items.initial_stock + COALESCE(%(stock)s, items.stock) - old.stock,
    version = %(version)s,
    updated_at = now()
FROM old
WHERE items.id = old.id
RETURNING old.stock, items.stock
"""
_RECORD_CHANGE = "INSERT INTO item_stock_changes (item_id, version, delta) VALUES (%s, %s, %s)"
_RECORDED_CHANGE = "SELECT delta FROM item_stock_changes WHERE item_id = %s AND version = %s"


def apply_update(conn: psycopg.Connection[Any], update: ItemUpdate) -> AppliedUpdate | None:
    """Apply ``update`` if newer than the row (one transaction, stock delta recorded with
    it); ``None`` if stale or unknown."""
    with conn.transaction():
        row = conn.execute(
            _APPLY,
            {
                "id": update.item_id,
                "version": update.version,
                "name": update.name,
                "price_cents": update.price_cents,
                "stock": update.stock,
            },
        ).fetchone()
        if row is not None and row[1] != row[0]:
            conn.execute(_RECORD_CHANGE, (update.item_id, update.version, row[1] - row[0]))
    return None if row is None else AppliedUpdate(old_stock=row[0], new_stock=row[1])


def recorded_delta(conn: psycopg.Connection[Any], update: ItemUpdate) -> int | None:
    """The stock delta this exact update committed earlier, if it did (a retry's view)."""
    row = conn.execute(_RECORDED_CHANGE, (update.item_id, update.version)).fetchone()
    return None if row is None else int(row[0])


def shift_redis_stock(store: OrderStore, update: ItemUpdate, delta: int) -> Shift:
    """Shift the item's Redis counter by the update's ``delta``, once per version."""
    return store.shift_stock(update.item_id, update.version, delta)
