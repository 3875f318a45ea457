"""An order the worker gives up on (its retries spent while PostgreSQL is down) is not
lost: it stays pending in Redis, and the reconciler's republish has it persisted once the
database is back. The real worker, the real reconciler, PostgreSQL behind the fault proxy."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from psycopg.conninfo import make_conninfo
from workertest_support import Harness, WorkerProcess

from services.reconciler import Reconciler
from services.settings import get_settings
from tests.netfault import FaultProxy
from tests.support import wait_until


def test_an_order_the_worker_gave_up_on_is_republished_and_persisted(
    harness: Harness,
    worker_process: WorkerProcess,
    service_env: dict[str, str],
    pg_url: str,
    fault_proxy: Callable[[str, int], FaultProxy],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    harness.seed(1, 10)
    database = fault_proxy("127.0.0.1", 5432)
    worker_process.env = {
        **service_env,
        "DATABASE_URL": make_conninfo(pg_url, host="127.0.0.1", port=database.port),
        "WORKER_MAX_RETRIES": "0",  # the first transient error is the last try
    }
    worker_process.start()
    database.refuse()
    order = harness.reserve(1)
    harness.publish(order)
    wait_until(lambda: "gave up" in worker_process.log.read_text(), 60, "the worker to give up")
    assert harness.status(order["order_id"]) in ("accepted", "persisting")  # still pending
    assert harness.scalar("SELECT count(*) FROM orders") == 0

    database.heal()
    monkeypatch.setenv("RECONCILE_GRACE_SECONDS", "0.1")
    monkeypatch.setenv("RECONCILE_CLAIM_GRACE_SECONDS", "0.1")
    get_settings.cache_clear()
    reconciler = Reconciler(get_settings())
    try:
        report = reconciler.run_once()
    finally:
        reconciler.close()
    assert report.republished == [order["order_id"]]
    harness.wait_until(
        lambda: harness.status(order["order_id"]) == "persisted", 30, "the republished order"
    )
    assert harness.scalar("SELECT count(*) FROM orders WHERE order_id = %s", order["order_id"]) == 1
    assert harness.db_stock(1) == 9
