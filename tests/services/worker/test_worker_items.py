"""apply_item_update on a real worker: versions, cache invalidation, stock semantics."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from workertest_support import Harness, WorkerProcess

from services.messaging import APPLY_ITEM_UPDATE
from services.settings import get_settings
from services.store import Status


@pytest.fixture
def cache(service_env: dict[str, str]) -> Iterator[redis.Redis]:
    """The cache Redis of this test."""
    client = redis.Redis.from_url(get_settings().cache_redis_url)
    yield client
    client.close()


def send_update(harness: Harness, **update: Any) -> None:
    """Queue an item update as the api's ``PUT /items/{id}`` does."""
    harness.app.send_task(
        APPLY_ITEM_UPDATE, kwargs={"update": update}, queue=get_settings().item_update_queue
    )


def item_row(harness: Harness, item_id: int) -> tuple[Any, ...]:
    """(name, price_cents, stock, initial_stock, version) of an item."""
    row = harness.db.execute(
        "SELECT name, price_cents, stock, initial_stock, version FROM items WHERE id = %s",
        (item_id,),
    ).fetchone()
    assert row is not None
    return tuple(row)


def next_message(pubsub: Any, timeout: float) -> bytes | None:
    """The next published payload within ``timeout`` seconds (subscribe replies skipped)."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        message = pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
        if message is not None:
            return bytes(message["data"])
    return None


def updates_done(worker: WorkerProcess, outcome: str) -> float:
    """apply_item_update tasks finished with ``outcome``."""
    return worker.metric("worker_tasks_total", task="apply_item_update", outcome=outcome)


def test_update_applies_by_version_and_invalidates_twice(
    harness: Harness, worker_process: WorkerProcess, cache: redis.Redis
) -> None:
    worker_process.env = {**worker_process.env, "WORKER_REINVALIDATE_AFTER_SECONDS": "1.0"}
    worker_process.start()
    harness.seed(1, 10)
    key = harness.store.keys.item(1)
    cache.set(key, b'{"id": 1, "name": "item 1"}')
    pubsub = cache.pubsub()
    pubsub.subscribe(harness.store.keys.invalidate_channel)
    try:
        send_update(harness, item_id=1, name="renamed", price_cents=555, version=3)
        assert next_message(pubsub, 20) == b"1"
        assert cache.get(key) is None
        # A reader that loaded the old row before the commit writes it back now...
        cache.set(key, b'{"id": 1, "name": "item 1"}')
        # ...and the delayed second invalidation removes it.
        assert next_message(pubsub, 10) == b"1"
        assert cache.get(key) is None
    finally:
        pubsub.close()
    assert item_row(harness, 1) == ("renamed", 555, 10, 10, 3)

    send_update(harness, item_id=1, name="older", price_cents=1, version=2)
    harness.wait_until(lambda: updates_done(worker_process, "stale") == 1, 20, "the stale update")
    assert item_row(harness, 1) == ("renamed", 555, 10, 10, 3)


def test_stock_update_keeps_redis_equal_to_db_minus_pending(
    harness: Harness, worker: WorkerProcess
) -> None:
    harness.seed(1, 10)
    pending = harness.reserve(1, 2)
    assert harness.redis_stock(1) == 8
    send_update(harness, item_id=1, stock=20, version=2)
    harness.wait_until(lambda: updates_done(worker, "applied") == 1, 20, "the update")
    assert item_row(harness, 1)[2:] == (20, 20, 2)
    assert harness.redis_stock(1) == 18
    harness.publish(pending)
    harness.wait_until(
        lambda: harness.status(pending["order_id"]) == Status.PERSISTED, 20, "persisted"
    )
    assert harness.db_stock(1) == harness.redis_stock(1) == 18


def test_invalid_update_is_dead_lettered(harness: Harness, worker: WorkerProcess) -> None:
    harness.seed(1, 10)
    send_update(harness, item_id=1, stock=-5, version=2)
    harness.wait_until(lambda: updates_done(worker, "dead_lettered") == 1, 20, "the dead letter")
    assert item_row(harness, 1)[2:] == (10, 10, 1)
