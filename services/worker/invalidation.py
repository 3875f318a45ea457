"""Cache invalidation after an item update: now, and once more a moment later.

Why twice: a reader that missed the cache just before the update can load the old row
from PostgreSQL and write it back into the cache just after our first delete. Deleting
again after a short delay (longer than a cache load takes) removes that stale entry;
the TTL bounds the rare case where even that loses the race.

The second delete is queued on one shared timer thread, so a worker slot (thread or G)
never sleeps for it.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time

import redis

from services.keys import Keys

log = logging.getLogger(__name__)


class CacheInvalidator:
    """Deletes cached items on the cache Redis and tells every near cache to drop them."""

    def __init__(self, client: redis.Redis, keys: Keys, delay_seconds: float) -> None:
        self.client = client
        self.keys = keys
        self.delay_seconds = delay_seconds
        self._due: list[tuple[float, int]] = []
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="cache-reinvalidate", daemon=True)
        self._thread.start()

    def invalidate(self, item_id: int) -> None:
        """Delete the item's cache entry and publish its id on the invalidation channel."""
        pipe = self.client.pipeline(transaction=False)
        pipe.delete(self.keys.item(item_id))
        pipe.publish(self.keys.invalidate_channel, str(item_id))
        pipe.execute()

    def invalidate_twice(self, item_id: int) -> None:
        """Invalidate now, and again after ``delay_seconds`` without blocking the caller."""
        self.invalidate(item_id)
        with self._wake:
            heapq.heappush(self._due, (time.monotonic() + self.delay_seconds, item_id))
            self._wake.notify()

    def close(self) -> None:
        """Run every queued second invalidation now and stop the timer thread."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._closed and not self._is_due():
                    timeout = self._due[0][0] - time.monotonic() if self._due else None
                    self._wake.wait(timeout)
                if self._closed and not self._due:
                    return
                _, item_id = heapq.heappop(self._due)
            self._invalidate_logged(item_id)

    def _is_due(self) -> bool:
        return bool(self._due) and self._due[0][0] <= time.monotonic()

    def _invalidate_logged(self, item_id: int) -> None:
        try:
            self.invalidate(item_id)
        except redis.RedisError as exc:
            # The entry's TTL still bounds how long a stale value can live.
            log.warning("delayed invalidation of item %s failed: %s", item_id, exc)
