"""Redis key layout, in one place so the api, worker, reconciler and load test agree.

State keys (on ``REDIS_URL``; never evicted, never given a TTL except idempotency keys):

- ``{p}stock:{item_id}``: live stock counter (integer).
- ``{p}order:{order_id}``: hash ``order_id item_id user_id quantity status reason
  accepted_at_ms persisted_at_ms idempotency_key``; ``status`` is ``accepted``,
  ``persisted`` or ``failed``.
- ``{p}idem:{key}``: the order id an ``Idempotency-Key`` produced (TTL).
- ``{p}bought:{user_id}:{item_id}``: units a user holds of an item (per-user limit).
- ``{p}pending``: sorted set of accepted, not yet persisted order ids, scored by
  acceptance time in ms; the reconciler reads it.

Cache keys (on ``CACHE_REDIS_URL``; all with a TTL, evictable by LRU):

- ``{p}item:{item_id}``: the item as JSON, or ``NEGATIVE`` for an unknown id.
- ``{p}lock:item:{item_id}``: the single-flight loader lock across processes.
- channel ``{p}invalidate``: item ids whose near-cache entries must be dropped.
- channel ``{p}soldout``: an item id whose stock an api process found at 0.
"""

from __future__ import annotations

NEGATIVE = b"\x00none"
"""Cache value that records "this id does not exist" (negative caching)."""


class Keys:
    """Key names under one prefix (``Settings.redis_prefix``)."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def stock(self, item_id: int) -> str:
        """Live stock counter of an item."""
        return f"{self.prefix}stock:{item_id}"

    def order(self, order_id: str) -> str:
        """Hash holding an order's fields and status."""
        return f"{self.prefix}order:{order_id}"

    def idempotency(self, key: str) -> str:
        """Order id produced by an Idempotency-Key."""
        return f"{self.prefix}idem:{key}"

    def bought(self, user_id: str, item_id: int) -> str:
        """Units of an item a user holds, for the per-user limit."""
        return f"{self.prefix}bought:{user_id}:{item_id}"

    @property
    def pending(self) -> str:
        """Sorted set of accepted, not yet persisted order ids (score: accepted_at_ms)."""
        return f"{self.prefix}pending"

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
