"""Batched order persistence on the gmpworker pool: a real worker, RabbitMQ, PostgreSQL, Redis.

Transactions are counted exactly through ``xmin`` (the id of the transaction that
inserted each row): rows sharing an ``xmin`` were committed by one batch.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import psycopg
import pytest
from workertest_support import Harness, WorkerProcess

from services.messaging import PERSIST_ORDER
from services.store import Status
from services.worker.batching import OrderBatcher, settled_outcomes
from services.worker.orders import CommitOutcome
from services.worker.persistence import Order, PersistResult

pytestmark = pytest.mark.timeout(180)

GMP_POOL = "gmpworker.celery:GMPPool"


def on_gmp_pool(worker: WorkerProcess, *, batch_size: int, deadline_ms: float) -> None:
    """Configure (not start) ``worker`` on the gmpworker pool with batching."""
    worker.pool = GMP_POOL
    worker.env = {
        **worker.env,
        "BATCH_SIZE": str(batch_size),
        "BATCH_DEADLINE_MS": str(deadline_ms),
        "GMP_MAXPROCS": "1",
    }


def rows_per_transaction(harness: Harness) -> list[int]:
    """How many order rows each committing transaction inserted."""
    rows = harness.db.execute(
        "SELECT count(*) FROM orders GROUP BY xmin::text ORDER BY 1 DESC"
    ).fetchall()
    return [int(r[0]) for r in rows]


def publish_orders(harness: Harness, item_id: int, n: int) -> list[str]:
    """Reserve and publish ``n`` one-unit orders; their ids."""
    orders = [harness.reserve(item_id, 1) for _ in range(n)]
    for order in orders:
        harness.publish(order)
    return [o["order_id"] for o in orders]


def all_persisted(harness: Harness, order_ids: list[str]) -> bool:
    """Every order marked persisted in Redis."""
    return all(harness.status(oid) == Status.PERSISTED for oid in order_ids)


def test_batches_never_exceed_batch_size(harness: Harness, worker_process: WorkerProcess) -> None:
    on_gmp_pool(worker_process, batch_size=10, deadline_ms=200)
    worker_process.concurrency = 40
    worker_process.start()
    harness.seed(1, 1000)
    ids = publish_orders(harness, 1, 120)
    harness.wait_until(lambda: all_persisted(harness, ids), 60, "120 orders persisted")
    sizes = rows_per_transaction(harness)
    assert sum(sizes) == 120  # every order once...
    assert max(sizes) <= 10  # ...no batch above BATCH_SIZE...
    assert len(sizes) <= 60  # ...and orders really shared transactions
    assert max(sizes) > 1
    assert harness.db_stock(1) == 880
    assert worker_process.metric("worker_batch_size_count") == len(sizes)
    assert (
        worker_process.metric("worker_tasks_total", task="persist_order", outcome="persisted")
        == 120
    )


def test_partial_batch_is_committed_when_the_deadline_passes(
    harness: Harness, worker_process: WorkerProcess
) -> None:
    on_gmp_pool(worker_process, batch_size=100, deadline_ms=600)
    worker_process.concurrency = 8
    worker_process.start()
    harness.seed(1, 10)
    published = time.time()
    ids = publish_orders(harness, 1, 3)
    harness.wait_until(lambda: all_persisted(harness, ids), 20, "3 orders persisted")
    assert rows_per_transaction(harness) == [3]  # one batch, far from full
    committed = harness.scalar("SELECT extract(epoch FROM max(persisted_at)) FROM orders")
    waited = float(committed) - published
    # The batch waited for its 600 ms deadline (a timer never fires early), not for a full
    # batch; how much later it fired is the machine's business, so no upper bound.
    assert waited >= 0.55


def test_failed_batch_is_retried_order_by_order(
    harness: Harness, worker_process: WorkerProcess, amqp_url: str
) -> None:
    on_gmp_pool(worker_process, batch_size=50, deadline_ms=300)
    worker_process.start()
    harness.seed(1, 100)
    good = [harness.reserve(1, 1) for _ in range(3)]
    bad = dict(good[0], order_id=str(uuid.uuid4()), user_id="nul\x00byte")  # PostgreSQL refuses
    for order in [*good, bad]:
        harness.publish(order)
    ids = [o["order_id"] for o in good]
    harness.wait_until(lambda: all_persisted(harness, ids), 30, "the good orders")
    harness.wait_until(
        lambda: worker_process.metric("orders_dead_lettered_total") == 1, 30, "the bad order DLQ'd"
    )
    assert all(harness.rows(oid) == 1 for oid in ids)
    assert harness.rows(bad["order_id"]) == 0
    assert rows_per_transaction(harness) == [1, 1, 1]  # the batch failed; each went alone
    assert harness.db_stock(1) == 97


def test_sigkill_mid_batch_persists_every_order_exactly_once(
    harness: Harness, worker_process: WorkerProcess, pg_url: str
) -> None:
    on_gmp_pool(worker_process, batch_size=100, deadline_ms=100)
    worker_process.concurrency = 40
    worker_process.start()
    harness.seed(1, 100)
    # Hold the item's row lock so the batch's transaction blocks mid-way in the worker.
    blocker = psycopg.connect(pg_url)
    blocker.execute("SELECT stock FROM items WHERE id = 1 FOR UPDATE")
    ids = publish_orders(harness, 1, 30)
    harness.wait_until(lambda: _waiting_on_lock(harness), 20, "the batch to block on the lock")
    worker_process.kill()
    blocker.rollback()
    blocker.close()
    assert sum(harness.rows(oid) for oid in ids) == 0  # nothing was committed
    worker_process.start()
    harness.wait_until(lambda: all_persisted(harness, ids), 60, "the redelivered orders")
    assert all(harness.rows(oid) == 1 for oid in ids)
    assert harness.db_stock(1) == 70
    assert harness.redis_stock(1) == 70


def _waiting_on_lock(harness: Harness) -> bool:
    return bool(
        harness.scalar(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
    )


# --- the batcher on its own (a real Runtime, a fake commit) ----------------------------


def _order() -> Order:
    return Order(str(uuid.uuid4()), 1, "u", 1, 0)


def test_batcher_answers_each_order_with_its_own_outcome() -> None:
    import gmpworker as gmp

    batches: list[list[Order]] = []
    lock = threading.Lock()

    def commit(orders: Any) -> CommitOutcome:
        with lock:
            batches.append(list(orders))
        result = PersistResult(inserted=[o for o in orders if o.user_id != "dup"])
        result.duplicates = [o for o in orders if o.user_id == "dup"]
        return CommitOutcome(result)

    async def main() -> list[str | None]:
        batcher = OrderBatcher(4, 0.05, commit)
        gmp.go(batcher.run)
        orders = [_order() for _ in range(6)] + [Order(str(uuid.uuid4()), 1, "dup", 1, 0)]
        results: gmp.Chan[tuple[int, str | None]] = gmp.Chan(len(orders))

        async def one(i: int, order: Order) -> None:
            await results.send((i, await batcher.submit(order)))

        for i, order in enumerate(orders):
            gmp.go(one, i, order)
        answers: list[str | None] = [None] * len(orders)
        for _ in orders:
            i, answer = await results.recv() or (0, None)
            answers[i] = answer
        batcher.close()
        return answers

    answers = gmp.run(main, procs=1)
    assert answers[:6] == ["persisted"] * 6
    assert answers[6] == "duplicate"
    assert sorted(len(b) for b in batches) == [3, 4]  # full at 4, the rest at the deadline


def test_settled_outcomes_leave_failed_orders_out() -> None:
    a, b, c, d = (_order() for _ in range(4))
    outcome = CommitOutcome(
        PersistResult(inserted=[a], duplicates=[b], failed=[(c, "oversell")]), cancelled=[d]
    )
    assert settled_outcomes(outcome) == {
        a.order_id: ["persisted"],
        b.order_id: ["duplicate"],
        d.order_id: ["cancelled"],
    }


def test_an_order_twice_in_one_batch_is_persisted_then_duplicate() -> None:
    order = _order()
    outcome = CommitOutcome(PersistResult(inserted=[order], duplicates=[order]))
    assert settled_outcomes(outcome) == {order.order_id: ["persisted", "duplicate"]}


def test_persist_order_is_batched_only_by_a_pool_with_a_batcher() -> None:
    from services.worker.batching import current_batcher
    from services.worker.tasks import persist_order

    assert persist_order.name == PERSIST_ORDER
    assert current_batcher() is None  # no gmpworker pool in this process...
    assert persist_order.native_body() is None  # ...so the plain run persists each order
