"""The reconciler as it runs in production, ``python -m services.reconciler``: a pass that
fails because the broker is down is logged and the process goes on, the next pass after
the broker is back republishes the stranded order, and SIGTERM stops it cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from amqp.exceptions import NotFound
from kombu import Connection

from services.catalog import seed
from services.keys import new_order_id
from services.messaging import durable_queue
from services.settings import Settings
from services.store import OrderStore, Outcome
from tests.netfault import FaultProxy
from tests.support import free_port, wait_until

ROOT = Path(__file__).resolve().parents[3]


def _queued_orders(amqp_url: str, queue_name: str) -> list[dict[str, Any]]:
    """The ``order`` argument of every message in the order queue (consumed; none while
    the queue does not exist yet)."""
    found = []
    with Connection(amqp_url) as conn:
        bound = durable_queue(queue_name)(conn.default_channel)
        try:
            while (message := bound.get(no_ack=True)) is not None:
                found.append(json.loads(message.body)[1]["order"])
        except NotFound:
            return []
    return found


def test_a_failed_pass_is_survived_and_the_next_one_republishes(
    service_env: dict[str, str],
    pg_url: str,
    amqp_url: str,
    fault_proxy: Callable[[str, int], FaultProxy],
    tmp_path: Path,
) -> None:
    settings = Settings(**{k.lower(): v for k, v in service_env.items()})
    seed(pg_url, 3, 10)
    store = OrderStore(
        redis.Redis.from_url(settings.redis_url), settings.redis_prefix, per_user_limit=5
    )
    store.set_stock(1, 10)
    stranded = store.reserve(new_order_id(1), 1, f"u-{uuid.uuid4().hex[:8]}", 1, None, 0)
    assert stranded.outcome is Outcome.ACCEPTED and stranded.order is not None

    broker = fault_proxy("127.0.0.1", 5672)
    broker.refuse()
    vhost = amqp_url.rsplit("/", 1)[1]
    log = tmp_path / "reconciler.log"
    env = {
        **os.environ,
        **service_env,
        "BROKER_URL": f"amqp://guest:guest@127.0.0.1:{broker.port}/{vhost}",
        "RECONCILE_INTERVAL_SECONDS": "0.3",
        "RECONCILE_GRACE_SECONDS": "0.1",
        "RECONCILER_METRICS_PORT": str(free_port()),
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.reconciler"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(
            lambda: log.read_text().count("reconcile pass failed") >= 2,
            60,
            "two failed passes while the broker is down",
        )
        assert proc.poll() is None, log.read_text()[-2000:]
        assert _queued_orders(amqp_url, settings.order_queue) == []

        broker.heal()
        republished: list[dict[str, Any]] = []
        wait_until(
            lambda: (
                bool(republished.extend(_queued_orders(amqp_url, settings.order_queue)))
                or bool(republished)
            ),
            60,
            "the stranded order to be republished",
        )
        assert [o["order_id"] for o in republished] == [stranded.order["order_id"]]
    finally:
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
        store.client.close()
    assert proc.returncode == 0, log.read_text()[-2000:]
