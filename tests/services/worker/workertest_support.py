"""The real Celery worker subprocess and the harness the worker tests share (imported by
name, like ``apitest_support``: ``conftest`` is not importable reliably, since every test
folder has one)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families

from services.keys import new_order_id
from services.messaging import PERSIST_ORDER
from services.settings import get_settings
from services.store import Order as StoredOrder
from services.store import OrderStore, Outcome, task_payload
from tests.support import free_port, wait_until

ROOT = Path(__file__).resolve().parents[3]


@dataclass
class WorkerProcess:
    """``celery -A services.worker.app worker`` on the test's broker, database and Redis."""

    env: dict[str, str]
    workdir: Path
    concurrency: int = 4
    pool: str = "threads"
    metrics_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def heartbeat(self) -> Path:
        """The heartbeat file the worker touches while consuming."""
        return self.workdir / "heartbeat"

    @property
    def log(self) -> Path:
        """Where this start's output goes."""
        return self.workdir / f"worker-{self.starts}.log"

    def start(self) -> None:
        """Start the worker and wait until it consumes."""
        self.heartbeat.unlink(missing_ok=True)
        self.starts += 1
        env = {
            **os.environ,
            **self.env,
            "WORKER_METRICS_PORT": str(self.metrics_port),
            "WORKER_HEARTBEAT_FILE": str(self.heartbeat),
            "WORKER_POOL": self.pool,
            "WORKER_CONCURRENCY": str(self.concurrency),
        }
        command = [
            sys.executable, "-m", "celery", "-A", "services.worker.app", "worker",
            "--loglevel=INFO", "--without-mingle", "--without-gossip",
            "-n", f"test-{uuid.uuid4().hex[:8]}@%h",
        ]  # fmt: skip
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        wait_until(self._ready, 40, f"the worker to start (log: {self.log})")

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            pytest.fail(f"worker exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
        return self.heartbeat.exists()

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, unacknowledged messages go back to the queue."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    def metric(self, name: str, **labels: str) -> float:
        """The current value of a sample on the worker's /metrics (0 when absent)."""
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    return float(sample.value)
        return 0.0


@dataclass
class Harness:
    """What the tests do to the system around the worker: seed, reserve, publish, inspect."""

    db: psycopg.Connection[Any]
    store: OrderStore
    app: Celery
    wait_until = staticmethod(wait_until)

    def seed(self, item_id: int, stock: int) -> None:
        """An item in PostgreSQL with its Redis stock counter."""
        self.db.execute(
            "INSERT INTO items (id, name, price_cents, stock, initial_stock)"
            " VALUES (%s, %s, 1000, %s, %s)",
            (item_id, f"item {item_id}", stock, stock),
        )
        self.store.set_stock(item_id, stock)

    def reserve(self, item_id: int, quantity: int = 1) -> StoredOrder:
        """Reserve an order in Redis as the api does; fail unless it is accepted."""
        result = self.store.reserve(
            new_order_id(item_id), item_id, f"user-{uuid.uuid4().hex[:8]}", quantity, None,
            int(time.time() * 1000),
        )  # fmt: skip
        assert result.outcome is Outcome.ACCEPTED, result
        assert result.order is not None
        return result.order

    def publish(self, order: StoredOrder) -> None:
        """Publish the ``persist_order`` message for ``order``, as the api does."""
        self.app.send_task(
            PERSIST_ORDER, kwargs={"order": task_payload(order)}, queue=get_settings().order_queue
        )

    def scalar(self, sql: str, *params: Any) -> Any:
        """The single value ``sql`` returns."""
        row = self.db.execute(sql, params).fetchone()
        assert row is not None
        return row[0]

    def rows(self, order_id: str) -> int:
        """Rows the orders table holds for ``order_id``."""
        return int(self.scalar("SELECT count(*) FROM orders WHERE order_id = %s", order_id))

    def db_stock(self, item_id: int) -> int:
        """The item's stock in PostgreSQL."""
        return int(self.scalar("SELECT stock FROM items WHERE id = %s", item_id))

    def redis_stock(self, item_id: int) -> int | None:
        """The item's live stock counter in Redis."""
        return self.store.get_stocks([item_id])[0]

    def status(self, order_id: str) -> str | None:
        """The order's status in Redis."""
        order = self.store.get_order(order_id)
        return None if order is None else order.get("status")
