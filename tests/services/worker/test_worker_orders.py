"""persist_order on a real Celery worker, RabbitMQ, PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
from kombu import Connection
from workertest_support import Harness, WorkerProcess

from services.keys import new_order_id
from services.messaging import PERSIST_ORDER, durable_queue
from services.publisher import AmqpPublisher
from services.settings import get_settings
from services.store import Outcome, Status, task_payload


def tasks_done(worker: WorkerProcess, *outcomes: str) -> float:
    """persist_order tasks the worker finished with any of ``outcomes``."""
    return sum(
        worker.metric("worker_tasks_total", task="persist_order", outcome=o) for o in outcomes
    )


def dead_letters(amqp_url: str) -> list[dict[str, Any]]:
    """Every message in the dead-letter queue (consumed)."""
    queue = durable_queue(get_settings().dead_letter_queue)
    found = []
    with Connection(amqp_url) as conn:
        bound = queue(conn.default_channel)
        bound.declare()
        while (message := bound.get(no_ack=True)) is not None:
            found.append(json.loads(message.body))
    return found


def test_accepted_order_is_persisted_and_marked(harness: Harness, worker: WorkerProcess) -> None:
    harness.seed(1, 10)
    order = harness.reserve(1, 2)
    harness.publish(order)
    harness.wait_until(
        lambda: harness.status(order["order_id"]) == Status.PERSISTED, 20, "persisted"
    )
    assert harness.rows(order["order_id"]) == 1
    assert harness.db_stock(1) == 8
    assert harness.redis_stock(1) == 8
    assert worker.metric("orders_persisted_total") == 1
    assert tasks_done(worker, "persisted") == 1
    assert worker.heartbeat.exists()


def test_order_from_the_asyncio_publisher_is_persisted_by_the_real_worker(
    harness: Harness, worker: WorkerProcess
) -> None:
    harness.seed(1, 10)
    order = harness.reserve(1, 2)

    async def publish() -> None:
        publisher = AmqpPublisher(get_settings())
        await publisher.start()
        try:
            await publisher.publish_order(task_payload(order))
        finally:
            await publisher.close()

    asyncio.run(publish())
    harness.wait_until(
        lambda: harness.status(order["order_id"]) == Status.PERSISTED, 20, "persisted"
    )
    assert harness.rows(order["order_id"]) == 1
    assert harness.db_stock(1) == 8
    assert tasks_done(worker, "persisted") == 1


def test_redelivered_message_is_persisted_once(harness: Harness, worker: WorkerProcess) -> None:
    harness.seed(1, 10)
    order = harness.reserve(1, 3)
    harness.publish(order)
    harness.publish(order)
    harness.wait_until(lambda: tasks_done(worker, "persisted", "duplicate") == 2, 20, "both tasks")
    assert tasks_done(worker, "duplicate") == 1
    assert harness.rows(order["order_id"]) == 1
    assert harness.db_stock(1) == 7
    assert harness.status(order["order_id"]) == Status.PERSISTED


def test_concurrent_orders_never_oversell(harness: Harness, worker: WorkerProcess) -> None:
    harness.seed(1, 100)

    def attempt(_: int) -> Any:
        return harness.store.reserve(
            new_order_id(1), 1, f"user-{uuid.uuid4().hex}", 1, None, 1_700_000_000_000
        )

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(attempt, range(500)))
    accepted = [r.order for r in results if r.outcome is Outcome.ACCEPTED]
    assert len(accepted) == 100
    assert sum(r.outcome is Outcome.SOLD_OUT for r in results) == 400
    for order in accepted:
        harness.publish(order)
    harness.wait_until(
        lambda: harness.scalar("SELECT count(*) FROM orders") == 100, 60, "100 orders persisted"
    )
    assert harness.db_stock(1) == 0
    assert harness.redis_stock(1) == 0
    harness.wait_until(lambda: harness.store.pending_count([1]) == 0, 10, "no pending")
    assert {harness.status(o["order_id"]) for o in accepted} == {Status.PERSISTED}


def test_worker_killed_mid_stream_loses_nothing(
    harness: Harness, worker_process: WorkerProcess
) -> None:
    count = 400
    harness.seed(1, count)
    orders = [harness.reserve(1) for _ in range(count)]
    for order in orders:
        harness.publish(order)
    worker_process.concurrency = 2
    worker_process.start()
    harness.wait_until(
        lambda: harness.scalar("SELECT count(*) FROM orders") >= 5, 30, "the first rows"
    )
    worker_process.kill()
    at_kill = harness.scalar("SELECT count(*) FROM orders")
    assert at_kill < count, "the worker finished before it was killed: nothing was tested"
    worker_process.start()
    harness.wait_until(
        lambda: harness.scalar("SELECT count(*) FROM orders") == count, 90, "every order"
    )
    # Exactly once: each order's units were taken from the stock once.
    assert harness.db_stock(1) == 0
    harness.wait_until(lambda: harness.store.pending_count([1]) == 0, 20, "no pending")
    assert {harness.status(o["order_id"]) for o in orders} == {Status.PERSISTED}


def test_transient_database_error_is_retried(
    harness: Harness, worker_process: WorkerProcess, pg_url: str
) -> None:
    harness.seed(1, 10)
    worker_process.env = {**worker_process.env, "WORKER_LOCK_TIMEOUT_MS": "200"}
    worker_process.start()
    order = harness.reserve(1)
    with psycopg.connect(pg_url) as blocker:
        # Holding this lock makes the worker's statements hit lock_timeout: a transient error.
        blocker.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
        harness.publish(order)
        harness.wait_until(
            lambda: worker_process.metric(
                "worker_tasks_total", task="persist_order", outcome="retry"
            ) >= 1,
            20,
            "a retry",
        )  # fmt: skip
        # Claimed before the transaction: the api can no longer cancel it.
        assert harness.status(order["order_id"]) == Status.PERSISTING
    harness.wait_until(
        lambda: harness.status(order["order_id"]) == Status.PERSISTED, 30, "persisted"
    )
    assert harness.rows(order["order_id"]) == 1
    assert harness.db_stock(1) == 9


def test_permanent_failure_is_dead_lettered_and_compensated(
    harness: Harness, worker: WorkerProcess, amqp_url: str
) -> None:
    harness.seed(1, 5)
    # The database has less stock than Redis believes: the oversell guard must refuse.
    harness.db.execute("UPDATE items SET stock = 1 WHERE id = 1")
    order = harness.reserve(1, 3)
    assert harness.redis_stock(1) == 2
    harness.publish(order)
    harness.wait_until(lambda: harness.status(order["order_id"]) == Status.FAILED, 20, "failed")
    assert harness.redis_stock(1) == 5
    assert harness.rows(order["order_id"]) == 0
    assert harness.db_stock(1) == 1
    stored = harness.store.get_order(order["order_id"])
    assert stored is not None and stored.get("reason", "").startswith("oversell guard")
    [letter] = dead_letters(amqp_url)
    assert letter["kind"] == "persist_order"
    assert letter["payload"]["order_id"] == order["order_id"]
    assert letter["reason"].startswith("oversell guard")
    assert worker.metric("orders_dead_lettered_total") == 1


def test_malformed_message_is_dead_lettered(
    harness: Harness, worker: WorkerProcess, amqp_url: str
) -> None:
    harness.app.send_task(
        PERSIST_ORDER, kwargs={"order": {"order_id": "nope"}}, queue=get_settings().order_queue
    )
    harness.wait_until(lambda: tasks_done(worker, "dead_lettered") == 1, 20, "the dead letter")
    [letter] = dead_letters(amqp_url)
    assert letter["payload"] == {"order_id": "nope"}
    assert "malformed" in letter["reason"]


def test_order_already_failed_in_redis_is_not_persisted(
    harness: Harness, worker: WorkerProcess
) -> None:
    harness.seed(1, 5)
    order = harness.reserve(1)
    # The api gave up on the publish (no confirm in time) and cancelled first, yet the
    # message did reach the broker: the customer was told "failed", so it must stay so.
    assert harness.store.cancel(1, order["order_id"], "publish not confirmed")
    harness.publish(order)
    harness.wait_until(lambda: tasks_done(worker, "cancelled") == 1, 20, "the cancelled task")
    assert harness.rows(order["order_id"]) == 0
    assert harness.db_stock(1) == 5
    assert harness.redis_stock(1) == 5
