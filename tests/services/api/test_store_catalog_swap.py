"""The order store's scripts (both flavours), the catalog CLI functions, the swap check."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import psycopg
import pytest
import redis
import redis.asyncio
from apitest_support import REDIS_HOST_URL

from services.catalog import demo_item, main, seed
from services.settings import Settings
from services.store import AsyncOrderStore, OrderStore, Outcome, task_payload
from services.swap import SwapPolicy, enforce_no_swap, swap_policy


@pytest.fixture
def store(redis_prefix: str) -> OrderStore:
    """A synchronous store on the test's prefix, item 1 stocked with 10."""
    s = OrderStore(redis.Redis.from_url(f"{REDIS_HOST_URL}/2"), redis_prefix, per_user_limit=4)
    s.set_stock(1, 10)
    return s


def new_id() -> str:
    """A fresh order id."""
    return str(uuid.uuid4())


def test_compensate_and_mark_persisted_are_idempotent(store: OrderStore) -> None:
    now = int(time.time() * 1000)
    a, b = new_id(), new_id()
    assert store.reserve(a, 1, "u", 3, "key-a-0001", now).outcome is Outcome.ACCEPTED
    assert store.reserve(b, 1, "u", 1, None, now).outcome is Outcome.ACCEPTED
    assert store.get_stocks([1]) == [6]
    assert store.compensate(a, "test") is True
    assert store.mark_failed(a, "again") is False  # never restores twice
    assert store.get_stocks([1]) == [9]
    assert store.get_order(a)["status"] == "failed"  # type: ignore[index]
    assert store.get_order(a)["reason"] == "test"  # type: ignore[index]
    assert store.mark_persisted([b, a], now + 5) == [b]
    assert store.mark_persisted([b], now + 9) == []
    assert store.get_order(b)["persisted_at_ms"] == now + 5  # type: ignore[index]
    assert store.compensate(b, "late") is False  # a persisted order is never undone
    assert store.get_stocks([1]) == [9]
    assert store.compensate(new_id(), "unknown") is False


def test_pending_older_than_is_a_strict_cutoff(store: OrderStore) -> None:
    ids = [new_id() for _ in range(3)]
    for offset, order_id in enumerate(ids):
        store.reserve(order_id, 1, f"u{offset}", 1, None, 1_000 + offset)
    assert [o["order_id"] for o in store.pending_older_than(1_002)] == ids[:2]
    assert len(store.pending_older_than(10_000, limit=1)) == 1
    store.mark_persisted([ids[0]], 5_000)
    assert [o["order_id"] for o in store.pending_older_than(10_000)] == ids[1:]
    assert task_payload(store.pending_older_than(10_000)[0]) == {
        "order_id": ids[1],
        "item_id": 1,
        "user_id": "u1",
        "quantity": 1,
        "accepted_at_ms": 1_001,
    }


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
    assert store.reserve(new_id(), 2, "z", 1, None, 3).outcome is Outcome.UNKNOWN_ITEM
    assert store.clear_sale() >= 3
    assert store.get_stocks([1]) == [6]  # counters survive clear_sale


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
