"""The order store's scripts (both flavours), the catalog CLI functions, the swap check."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import psycopg
import pytest
import redis
import redis.asyncio
from apitest_support import REDIS_HOST_URL

from services.catalog import demo_item, main, seed
from services.keys import new_order_id
from services.settings import Settings
from services.store import AsyncOrderStore, Claim, OrderStore, Outcome, Shift, task_payload
from services.swap import SwapPolicy, enforce_no_swap, swap_policy


@pytest.fixture
def store(redis_prefix: str) -> OrderStore:
    """A synchronous store on the test's prefix, item 1 stocked with 10."""
    s = OrderStore(redis.Redis.from_url(f"{REDIS_HOST_URL}/2"), redis_prefix, per_user_limit=4)
    s.set_stock(1, 10)
    return s


def new_id(item_id: int = 1) -> str:
    """A fresh order id for ``item_id``."""
    return new_order_id(item_id)


def test_transitions_settle_once_and_the_first_wins(store: OrderStore) -> None:
    now = int(time.time() * 1000)
    a, b, c = new_id(), new_id(), new_id()
    assert store.reserve(a, 1, "u", 3, "key-a-0001", now).outcome is Outcome.ACCEPTED
    assert store.reserve(b, 1, "u", 1, None, now).outcome is Outcome.ACCEPTED
    assert store.reserve(c, 1, "v", 1, None, now).outcome is Outcome.ACCEPTED
    assert store.get_stocks([1]) == [5]
    # The api cancels a (accepted -> failed): stock, user count and key back, once.
    assert store.cancel(1, a, "test") is True
    assert store.cancel(1, a, "again") is False
    assert store.fail(1, a, "again") is False
    assert store.get_stocks([1]) == [8]
    assert store.get_order(a)["status"] == "failed"  # type: ignore[index]
    assert store.get_order(a)["reason"] == "test"  # type: ignore[index]
    assert store.client.get(store.keys.idempotency(1, "key-a-0001")) is None
    # A worker claims b and c: the api can no longer cancel them; a claims as cancelled.
    claims = store.claim([(1, b), (1, c), (1, a), (1, new_id())], now + 1)
    assert list(claims.values()) == [Claim.CLAIMED, Claim.CLAIMED, Claim.CANCELLED, Claim.UNKNOWN]
    assert store.get_order(b)["status"] == "persisting"  # type: ignore[index]
    assert store.get_order(b)["claimed_at_ms"] == now + 1  # type: ignore[index]
    assert store.cancel(1, b, "late confirm") is False
    assert store.mark_persisted([(1, b), (1, a)], now + 5) == [b]
    assert store.mark_persisted([(1, b)], now + 9) == []
    assert store.get_order(b)["persisted_at_ms"] == now + 5  # type: ignore[index]
    assert store.claim([(1, b)], now + 10) == {b: Claim.PERSISTED}
    assert store.fail(1, b, "late") is False  # a persisted order is never undone
    # The worker may fail a claimed order (its row was not written): stock back.
    assert store.fail(1, c, "oversell guard") is True
    assert store.get_stocks([1]) == [9]
    assert store.pending_count([1]) == 0
    assert store.cancel(1, new_id(), "unknown") is False


def test_reservation_is_idempotent_per_order_id_and_per_key(store: OrderStore) -> None:
    order_id = new_id()
    first = store.reserve(order_id, 1, "u", 2, "key-same-01", 100)
    again = store.reserve(order_id, 1, "u", 2, "key-same-01", 100)  # a re-sent script
    assert first.outcome is again.outcome is Outcome.ACCEPTED
    assert again.order is not None and again.order["order_id"] == order_id
    assert store.get_stocks([1]) == [8]
    retry = store.reserve(new_id(), 1, "u", 2, "key-same-01", 200)  # the client's retry
    assert retry.outcome is Outcome.DUPLICATE
    assert retry.order is not None and retry.order["order_id"] == order_id
    assert store.reserve(new_id(), 1, "u", 1, "key-same-01", 300).outcome is (
        Outcome.IDEMPOTENCY_CONFLICT
    )
    # Another item (another slot): the key's binding still refuses it.
    store.set_stock(2, 10)
    assert store.reserve(new_id(2), 2, "u", 2, "key-same-01", 300).outcome is (
        Outcome.IDEMPOTENCY_CONFLICT
    )
    assert store.get_stocks([1, 2]) == [8, 10]
    # A cancelled attempt frees the key for the same request: a new try.
    assert store.cancel(1, order_id, "broker")
    fresh = store.reserve(new_id(), 1, "u", 2, "key-same-01", 400)
    assert fresh.outcome is Outcome.ACCEPTED and fresh.order is not None
    assert fresh.order["order_id"] != order_id


def test_pending_older_than_is_a_strict_cutoff(store: OrderStore) -> None:
    ids = [new_id() for _ in range(3)]
    for offset, order_id in enumerate(ids):
        store.reserve(order_id, 1, f"u{offset}", 1, None, 1_000 + offset)
    assert [o["order_id"] for o in store.pending_older_than(1_002)] == ids[:2]
    assert len(store.pending_older_than(10_000, limit=1)) == 1
    store.claim([(1, ids[1])], 4_000)  # persisting orders are still pending
    store.mark_persisted([(1, ids[0])], 5_000)
    assert [o["order_id"] for o in store.pending_older_than(10_000)] == ids[1:]
    assert task_payload(store.pending_older_than(10_000)[0]) == {
        "order_id": ids[1],
        "item_id": 1,
        "user_id": "u1",
        "quantity": 1,
        "accepted_at_ms": 1_001,
    }


def test_stock_shifts_apply_once_per_version_even_before_the_counter(store: OrderStore) -> None:
    assert store.shift_stock(1, 10, 5) is Shift.APPLIED  # the counter has no version: applies
    assert store.shift_stock(1, 10, 5) is Shift.ALREADY
    assert store.get_stocks([1]) == [15]
    # Item 3 has no counter yet: an update to stock 0 (delta -10) at version 20 lands first.
    assert store.shift_stock(3, 20, -10) is Shift.RECORDED
    # The api read the row at version 19 (stock 10) before that update: the counter
    # created from that read includes the newer shift.
    assert store.init_stocks({3: (10, 19)}) == 1
    assert store.get_stocks([3]) == [0]
    assert store.init_stocks({3: (99, 25)}) == 0  # never clobbers a live counter
    assert store.shift_stock(3, 18, 7) is Shift.INCLUDED  # older than the read: in it
    assert store.shift_stock(3, 30, 4) is Shift.APPLIED
    assert store.shift_stock(3, 30, 4) is Shift.ALREADY
    assert store.get_stocks([3]) == [4]


def test_reset_touches_only_its_items_and_keeps_live_orders(store: OrderStore) -> None:
    store.set_stock(2, 10)
    live = store.reserve(new_id(), 1, "ann", 2, "key-live-01", 1).order
    done = store.reserve(new_id(), 1, "bob", 1, "key-done-01", 1).order
    other = store.reserve(new_id(2), 2, "bob", 1, "key-other-1", 1).order
    cancelled = store.reserve(new_id(), 1, "cy", 1, "key-cancel-1", 1).order
    assert live and done and other and cancelled
    store.claim([(1, done["order_id"])], 2)
    store.mark_persisted([(1, done["order_id"])], 3)
    assert store.cancel(1, cancelled["order_id"], "broker down")
    assert store.shift_stock(1, 50, 3) is Shift.APPLIED  # newer than the reset's read below
    deleted = store.reset_items({1: (20, 40)})
    assert deleted == 3  # done's hash, its key record and bob's count
    assert store.get_order(done["order_id"]) is None
    # The cancelled order's record stays: its late message must still find it cancelled.
    assert store.claim([(1, cancelled["order_id"])], 4) == {cancelled["order_id"]: Claim.CANCELLED}
    assert store.get_order(live["order_id"])["status"] == "accepted"  # type: ignore[index]
    assert store.client.get(store.keys.idempotency(1, "key-live-01")) == live["order_id"].encode()
    assert store.client.get(store.keys.bought(1, "ann")) == b"2"
    assert store.get_stocks([1]) == [20 - 2 + 3]  # database stock - live units + newer shift
    # Item 2 was not named: untouched.
    assert store.get_order(other["order_id"])["status"] == "accepted"  # type: ignore[index]
    assert store.get_stocks([2]) == [9]
    assert store.pending_count() == 2
    # The live order's key still returns it, so a retry never becomes a second order.
    again = store.reserve(new_id(), 1, "ann", 2, "key-live-01", 5)
    assert again.outcome is Outcome.DUPLICATE


def test_async_flavour_shares_the_state(store: OrderStore, redis_prefix: str) -> None:
    async def reserve_async() -> Outcome:
        client = redis.asyncio.Redis.from_url(f"{REDIS_HOST_URL}/2")
        try:
            async_store = AsyncOrderStore(client, redis_prefix, per_user_limit=4)
            result = await async_store.reserve(new_id(), 1, "z", 4, "shared-key-1", 1)
            return result.outcome
        finally:
            await client.aclose()

    assert asyncio.run(reserve_async()) is Outcome.ACCEPTED
    duplicate = store.reserve(new_id(), 1, "z", 4, "shared-key-1", 2)
    assert duplicate.outcome is Outcome.DUPLICATE
    assert store.reserve(new_id(), 1, "z", 1, None, 3).outcome is Outcome.LIMIT_EXCEEDED
    assert store.reserve(new_id(2), 2, "z", 1, None, 3).outcome is Outcome.UNKNOWN_ITEM


def test_seed_is_deterministic_idempotent_and_resettable(pg_url: str) -> None:
    assert demo_item(9, 5) == demo_item(9, 5)
    assert seed(pg_url, 5, 10) == 5
    assert seed(pg_url, 5, 10) == 0
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE items SET stock = 1 WHERE id = 2")
        conn.execute(
            "INSERT INTO orders (order_id, item_id, user_id, quantity, accepted_at)"
            " VALUES (gen_random_uuid(), 2, 'u', 1, now())"
        )
        seed(pg_url, 5, 10)
        assert conn.execute("SELECT stock FROM items WHERE id = 2").fetchone() == (1,)
        seed(pg_url, 5, 20, reset=True)
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (0,)
        assert conn.execute("SELECT min(stock), max(stock) FROM items").fetchone() == (20, 20)
    with pytest.raises(ValueError, match="stock must be >= 0"):
        seed(pg_url, 1, -1)


def test_catalog_cli_seeds_and_warms(
    pg_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.settings import get_settings

    for key, value in {
        "DATABASE_URL": pg_url,
        "REDIS_URL": f"{REDIS_HOST_URL}/2",
        "CACHE_REDIS_URL": f"{REDIS_HOST_URL}/3",
        "REDIS_PREFIX": redis_prefix,
    }.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    try:
        main(["seed", "--items", "4", "--stock", "7"])
        main(["warmup"])
    finally:
        get_settings.cache_clear()
    state = OrderStore(redis.Redis.from_url(f"{REDIS_HOST_URL}/2"), redis_prefix, per_user_limit=1)
    assert state.get_stocks([1, 4, 5]) == [7, 7, None]
    with pytest.raises(SystemExit):
        main(["warmup", "--ids", "a,b"])


def _cgroup(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, content in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content + "\n")
    return tmp_path


@pytest.mark.parametrize(
    ("files", "policy"),
    [
        ({"memory.swap.max": "0"}, SwapPolicy.FORBIDDEN),
        ({"memory.swap.max": "max"}, SwapPolicy.ALLOWED),
        (
            {
                "memory/memory.memsw.limit_in_bytes": "536870912",
                "memory/memory.limit_in_bytes": "536870912",
            },
            SwapPolicy.FORBIDDEN,
        ),
        (
            {
                "memory/memory.memsw.limit_in_bytes": "1073741824",
                "memory/memory.limit_in_bytes": "536870912",
            },
            SwapPolicy.ALLOWED,
        ),
        (
            {
                "memory/memory.memsw.limit_in_bytes": "9223372036854771712",
                "memory/memory.limit_in_bytes": "9223372036854771712",
            },
            SwapPolicy.ALLOWED,
        ),
        ({}, SwapPolicy.UNKNOWN),
    ],
)
def test_swap_policy_from_the_cgroup(
    tmp_path: Path, files: dict[str, str], policy: SwapPolicy
) -> None:
    assert swap_policy(_cgroup(tmp_path, files)) is policy


def test_enforce_no_swap_exits_when_swap_is_allowed(tmp_path: Path) -> None:
    root = _cgroup(tmp_path, {"memory.swap.max": "max"})
    with pytest.raises(SystemExit, match="memswap_limit"):
        enforce_no_swap(Settings(require_no_swap=True), root)
    assert enforce_no_swap(Settings(require_no_swap=False), root) is SwapPolicy.ALLOWED
    forbidden = _cgroup(tmp_path / "v2", {"memory.swap.max": "0"})
    assert enforce_no_swap(Settings(require_no_swap=True), forbidden) is SwapPolicy.FORBIDDEN
