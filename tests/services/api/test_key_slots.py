"""The key layout is ready for Redis Cluster: every key one order's scripts, an item
update's shift or a warm-up touch hashes to the item's slot (CRC16, as the cluster does).

Computed two ways: from the key names the store builds, for many items, users and keys;
and from what a real Redis saw (MONITOR) while the store ran every operation, including
the keys the Lua scripts build themselves.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import redis
from apitest_support import REDIS_HOST_URL
from redis.crc import key_slot

from services.keys import Keys, item_of_order, new_order_id
from services.store import OrderStore
from tests.support import wait_until


def slot(key: str) -> int:
    """The cluster slot of ``key``."""
    return int(key_slot(key.encode()))


def test_every_key_of_a_reservation_and_a_cancel_shares_the_items_slot() -> None:
    keys = Keys("flashsale:")
    slots_used = set()
    for item_id in [*range(1, 400), 2**31, 2**63 - 1]:
        order_id = new_order_id(item_id)
        assert item_of_order(order_id) == item_id
        touched = [
            keys.stock(item_id),
            keys.stock_meta(item_id),
            keys.shifts(item_id),
            keys.pending(item_id),
            keys.order_by_id(order_id) or "",
            keys.order(item_id, order_id),
            *(keys.bought(item_id, f"user-{u}") for u in range(20)),
            *(keys.idempotency(item_id, f"key-{u:08d}") for u in range(20)),
            keys.item_tag(item_id) + "order:" + order_id,  # as the scripts build it
        ]
        assert {slot(k) for k in touched} == {slot(keys.stock(item_id))}, item_id
        slots_used.add(slot(keys.stock(item_id)))
    # Items spread over the cluster instead of piling onto one slot.
    assert len(slots_used) > 350


def test_a_prefix_with_braces_is_refused() -> None:
    with pytest.raises(ValueError, match="braces"):
        Keys("{sale}:")


class Monitored:
    """Every (client type, command args) Redis sees under one prefix, from MONITOR."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.seen: list[tuple[str, list[str]]] = []
        self._client = redis.Redis.from_url(f"{REDIS_HOST_URL}/2", decode_responses=True)
        self._marker = redis.Redis.from_url(f"{REDIS_HOST_URL}/2")
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        with self._client.monitor() as monitor:
            for entry in monitor.listen():
                if self.prefix in entry["command"]:
                    self.seen.append((entry["client_type"], entry["command"].split(" ")))
                    if entry["command"].endswith(f"{self.prefix}marker:end"):
                        return

    def sync(self, name: str) -> None:
        """Send a marker command until MONITOR shows it: everything before it was seen."""
        key = f"{self.prefix}marker:{name}"

        def marked() -> bool:
            self._marker.get(key)
            return any(args[-1] == key for _, args in self.seen)

        wait_until(marked, 10, f"MONITOR to show {key}")

    def close(self) -> None:
        """Stop watching."""
        self.sync("end")
        self._thread.join(10)
        self._marker.close()
        self._client.close()


@pytest.fixture
def monitored(redis_prefix: str) -> Iterator[Monitored]:
    """A :class:`Monitored` watching the test's prefix, already seeing commands."""
    watcher = Monitored(redis_prefix)
    watcher.sync("start")
    yield watcher
    watcher.close()


def test_every_key_the_scripts_touch_is_in_the_items_slot(
    redis_prefix: str, monitored: Monitored
) -> None:
    store = OrderStore(redis.Redis.from_url(f"{REDIS_HOST_URL}/2"), redis_prefix, per_user_limit=5)
    items = range(1, 13)
    store.init_stocks(dict.fromkeys(items, (10, 1)))
    for item_id in items:
        ids = [new_order_id(item_id) for _ in range(3)]
        for n, order_id in enumerate(ids):
            store.reserve(order_id, item_id, f"u{n}", 1, f"key-{item_id}-{n}-xyz", n)
        store.cancel(item_id, ids[0], "broker")
        store.claim([(item_id, ids[1]), (item_id, ids[2])], 5)
        store.mark_persisted([(item_id, ids[1])], 6)
        store.fail(item_id, ids[2], "oversell")
        store.shift_stock(item_id, 2, 3)
    store.snapshot(list(items))
    store.reset_items(dict.fromkeys(items, (10, 3)))
    monitored.sync("done")
    scripts = [args for _, args in monitored.seen if args[0].upper() in ("EVALSHA", "EVAL")]
    by_lua = [args for kind, args in monitored.seen if kind == "lua"]
    assert len(scripts) >= 12 * 8 and len(by_lua) > 100
    for args in scripts:
        declared = args[3 : 3 + int(args[2])]
        tags = [a for a in args[3 + int(args[2]) :] if "{item:" in a]
        assert len({slot(k) for k in declared + tags}) == 1, args
    for args in by_lua:
        # Every key a script builds itself is one of an item's keys (tagged).
        assert Keys(redis_prefix).item_of_key(args[1]) is not None, args
    store.client.close()
