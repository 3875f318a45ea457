"""The real worker (gmpworker pool) behind the TCP fault proxy in front of the real RabbitMQ.

- A broker connection cut for a moment: the worker reconnects, persists what comes next
  and acknowledges every message (the queue's unacked count returns to 0).
- A broker gone for good: the worker exits (status 75) instead of running on without
  consuming, so a restart policy replaces it.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

import pytest
from workertest_support import Harness, WorkerProcess

from services.settings import get_settings
from services.worker.liveness import EXIT_STATUS
from tests.netfault import FaultProxy
from tests.support import require, wait_until

GMP_POOL = "gmpworker.celery:GMPPool"
ITEM = 1


def _through_proxy(
    fault_proxy: Callable[[str, int], FaultProxy], worker: WorkerProcess
) -> FaultProxy:
    """Point the worker's broker URL at a new proxy in front of the real broker."""
    parts = urlsplit(worker.env["BROKER_URL"])
    proxy = fault_proxy(parts.hostname or "127.0.0.1", parts.port or 5672)
    netloc = f"{parts.username}:{parts.password}@127.0.0.1:{proxy.port}"
    worker.env = {**worker.env, "BROKER_URL": urlunsplit(parts._replace(netloc=netloc))}
    return proxy


def _order_queue_counts(broker_url: str) -> tuple[int, int]:
    """(ready, unacknowledged) messages of the order queue, from rabbitmqctl."""
    ctl = shutil.which("rabbitmqctl")
    require(ctl, "rabbitmqctl not found")
    assert ctl is not None
    vhost = urlsplit(broker_url).path.lstrip("/")
    out = subprocess.run(
        [ctl, "-q", "--no-table-headers", "list_queues", "-p", vhost, "name",
         "messages_ready", "messages_unacknowledged"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    for line in out.splitlines():
        name, ready, unacked = line.split()
        if name == get_settings().order_queue:
            return int(ready), int(unacked)
    return 0, 0


def _persist(harness: Harness, count: int) -> list[str]:
    orders = [harness.reserve(ITEM) for _ in range(count)]
    for order in orders:
        harness.publish(order)
    ids = [order["order_id"] for order in orders]
    wait_until(lambda: all(harness.rows(i) == 1 for i in ids), 60, f"{count} orders persisted")
    return ids


@pytest.mark.timeout(240)
def test_after_a_broker_cut_the_worker_reconnects_and_acks_everything(
    fault_proxy: Callable[[str, int], FaultProxy],
    worker_process: WorkerProcess,
    harness: Harness,
) -> None:
    harness.seed(ITEM, 500)
    proxy = _through_proxy(fault_proxy, worker_process)
    worker_process.pool = GMP_POOL
    worker_process.start()
    _persist(harness, 20)

    proxy.refuse()  # the broker goes away: every connection reset, new ones refused
    wait_until(
        lambda: "Connection to broker lost" in worker_process.log.read_text(),
        60,
        "the worker to notice the lost connection",
    )
    proxy.heal()
    for _ in range(3):  # several rounds, each on the reconnected channel
        _persist(harness, 20)
    wait_until(
        lambda: _order_queue_counts(harness.app.conf.broker_url) == (0, 0),
        60,
        "the order queue to hold nothing ready or unacknowledged",
    )
    assert worker_process.proc is not None and worker_process.proc.poll() is None


@pytest.mark.timeout(240)
def test_a_worker_whose_broker_is_gone_for_good_exits(
    fault_proxy: Callable[[str, int], FaultProxy], worker_process: WorkerProcess
) -> None:
    proxy = _through_proxy(fault_proxy, worker_process)
    worker_process.env = {**worker_process.env, "WORKER_BROKER_LOST_EXIT_SECONDS": "3"}
    worker_process.pool = GMP_POOL
    worker_process.start()

    proxy.refuse()
    process = worker_process.proc
    assert process is not None
    wait_until(lambda: process.poll() is not None, 120, "the cut-off worker to exit")
    assert process.returncode == EXIT_STATUS
    assert "no consumer heartbeat" in worker_process.log.read_text()
