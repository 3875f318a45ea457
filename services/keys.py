"""Redis key layout, in one place so the api, worker, reconciler and load test agree.

Ready for Redis Cluster. Every key that one order's scripts touch (reserve, cancel,
claim, mark persisted, fail) and every key an item update or a warm-up touches carries
the item's hash tag ``{item:<id>}``, so it hashes to the item's slot: the state Redis
can be sharded by item and each script still runs on one node, atomically. On a single
node (the default) the tags are just part of the names.

State keys (on ``REDIS_URL``; never evicted, no TTL except the idempotency keys), with
``{p}`` the deployment's prefix and ``T = {p}{item:<item_id>}:``:

- ``T stock``: live stock counter (integer): what may still be sold.
- ``T stock_meta``: hash ``version``: the PostgreSQL item version the counter was
  initialised (or reset) at; stock shifts of later versions move it.
- ``T shifts``: hash ``version -> delta``: every item update's stock shift Redis has seen,
  applied or not (the counter may not exist yet): each is applied exactly once.
- ``T order:<order_id>``: hash ``order_id item_id user_id quantity status reason
  accepted_at_ms claimed_at_ms persisted_at_ms idempotency_key`` (the state machine is
  in :mod:`services.store`).
- ``T idem:<key>``: the order id an ``Idempotency-Key`` produced for this item (TTL).
- ``T bought:<user_id>``: units of this item a user holds (per-user limit).
- ``T pending``: sorted set of the item's orders not yet persisted (``accepted`` or
  ``persisting``), scored by acceptance time in ms; the reconciler reads it.
- ``{p}idem:<key>`` (the only state key without an item tag): the request an
  ``Idempotency-Key`` is bound to, ``<item_id>:<user_id>:<quantity>`` (TTL). Written with
  ``SET NX`` in the reservation's pipeline, it makes a key reused for another *item* a
  422 even though the per-item records of two items live in different slots.

Order ids are findable from the id alone: they are UUIDs of version 8 (RFC 9562, custom
layout) carrying the item id, so ``GET /orders/{id}`` derives the order's key without
an index. See :func:`new_order_id` and :func:`item_of_order`.

Cache keys (on ``CACHE_REDIS_URL``; all with a TTL, evictable by LRU):

- ``{p}item:{item_id}``: the item as JSON, or ``NEGATIVE`` for an unknown id.
- ``{p}lock:item:{item_id}``: the single-flight loader lock across processes.
- channel ``{p}invalidate``: item ids whose near-cache entries must be dropped.
- channel ``{p}soldout``: an item id whose stock an api process found at 0.
"""

from __future__ import annotations

import re
import secrets
import uuid

NEGATIVE = b"\x00none"
"""Cache value that records "this id does not exist" (negative caching)."""

MAX_ITEM_ID = 2**63 - 1
"""Item ids are PostgreSQL bigints; an order id has room for all of them."""
_RANDOM_BITS = 59  # 122 free bits of a UUIDv8 minus 63 for the item id
_ITEM_KEY = re.compile(rb"\{item:(\d+)\}:")


def new_order_id(item_id: int) -> str:
    """A fresh order id carrying ``item_id`` (a version-8 UUID; 59 random bits per item)."""
    if not 1 <= item_id <= MAX_ITEM_ID:
        raise ValueError(f"item id {item_id} out of range")
    value = (secrets.randbits(_RANDOM_BITS) << 63) | item_id
    # 122 bits spread around the 4 version bits and the 2 variant bits.
    high, mid, low = value >> 74, (value >> 62) & 0xFFF, value & (2**62 - 1)
    return str(uuid.UUID(int=(high << 80) | (0x8 << 76) | (mid << 64) | (0b10 << 62) | low))


def item_of_order(order_id: str | uuid.UUID) -> int | None:
    """The item id an order id of :func:`new_order_id` carries; ``None`` for any other id."""
    try:
        parsed = order_id if isinstance(order_id, uuid.UUID) else uuid.UUID(order_id)
    except ValueError:
        return None
    if parsed.version != 8:
        return None
    n = parsed.int
    value = ((n >> 80) << 74) | (((n >> 64) & 0xFFF) << 62) | (n & (2**62 - 1))
    item_id = value & MAX_ITEM_ID
    return item_id if item_id >= 1 else None


class Keys:
    """Key names under one prefix (``Settings.redis_prefix``)."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: str) -> None:
        if "{" in prefix or "}" in prefix:
            # The first {...} of a name is its hash tag: the prefix must not hold one.
            raise ValueError(f"Redis prefix {prefix!r} must not contain braces")
        self.prefix = prefix

    def item_tag(self, item_id: int) -> str:
        """``{p}{item:<id>}:``, the start of every state key of one item (one cluster slot)."""
        return f"{self.prefix}{{item:{item_id}}}:"

    def stock(self, item_id: int) -> str:
        """Live stock counter of an item."""
        return f"{self.item_tag(item_id)}stock"

    def stock_meta(self, item_id: int) -> str:
        """Hash with the PostgreSQL version the stock counter was initialised at."""
        return f"{self.item_tag(item_id)}stock_meta"

    def shifts(self, item_id: int) -> str:
        """Hash ``version -> stock delta`` of the item updates Redis has recorded."""
        return f"{self.item_tag(item_id)}shifts"

    def order(self, item_id: int, order_id: str) -> str:
        """Hash holding an order's fields and status."""
        return f"{self.item_tag(item_id)}order:{order_id}"

    def order_by_id(self, order_id: str) -> str | None:
        """The order's hash from its id alone (``None`` if the id carries no item)."""
        item_id = item_of_order(order_id)
        return None if item_id is None else self.order(item_id, order_id)

    def idempotency(self, item_id: int, key: str) -> str:
        """Order id an Idempotency-Key produced for this item."""
        return f"{self.item_tag(item_id)}idem:{key}"

    def idempotency_binding(self, key: str) -> str:
        """The request (``item:user:quantity``) an Idempotency-Key is bound to."""
        return f"{self.prefix}idem:{key}"

    def bought(self, item_id: int, user_id: str) -> str:
        """Units of an item a user holds, for the per-user limit."""
        return f"{self.item_tag(item_id)}bought:{user_id}"

    def pending(self, item_id: int) -> str:
        """Sorted set of the item's orders not yet persisted (score: accepted_at_ms)."""
        return f"{self.item_tag(item_id)}pending"

    @property
    def item_state_pattern(self) -> str:
        """SCAN pattern matching every item-tagged state key under this prefix."""
        return f"{self.prefix}{{item:*}}:*"

    @property
    def stock_pattern(self) -> str:
        """SCAN pattern matching every stock counter under this prefix."""
        return f"{self.prefix}{{item:*}}:stock"

    def item_of_key(self, key: bytes | str) -> int | None:
        """The item id in an item-tagged key name (``None`` for other keys)."""
        raw = key.encode() if isinstance(key, str) else key
        if not raw.startswith(self.prefix.encode()):
            return None
        found = _ITEM_KEY.match(raw, len(self.prefix.encode()))
        return int(found.group(1)) if found else None

    def item(self, item_id: int) -> str:
        """Cached item JSON (or the negative marker)."""
        return f"{self.prefix}item:{item_id}"

    def item_lock(self, item_id: int) -> str:
        """Cross-process single-flight lock for loading an item."""
        return f"{self.prefix}lock:item:{item_id}"

    @property
    def invalidate_channel(self) -> str:
        """Pub/sub channel carrying item ids to drop from near caches."""
        return f"{self.prefix}invalidate"

    @property
    def sold_out_channel(self) -> str:
        """Pub/sub channel carrying item ids found sold out (``services.api.soldout``)."""
        return f"{self.prefix}soldout"
