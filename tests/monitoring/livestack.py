"""A live native stack for the monitoring tests, started once per module, under load.

Use :func:`start_live_stack` from a module-scoped fixture.

The api (uvicorn), the Celery worker (gmpworker pool) and the reconciler run as real
processes on free ports, against this module's own PostgreSQL database, RabbitMQ vhost
and Redis key prefix (DBs 2/3), all removed afterwards. ``LiveStack.load()`` drives a
short, realistic mix: item reads (hits, misses, unknown ids) and orders.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import yaml

from tests.support import (
    AMQP_HOST,
    PG_ADMIN_URL,
    REDIS_HOST_URL,
    create_vhost,
    delete_vhost,
    free_port,
    free_ports,
    require,
    unique_name,
)

ROOT = Path(__file__).resolve().parents[2]
DEMO_ITEMS = 50
START_TIMEOUT_S = 60.0


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = START_TIMEOUT_S) -> None:
    """Wait until ``url`` answers 200, failing early with the process's log if it died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args} exited with {proc.returncode} before {url} was up")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} not up after {timeout} s")


@dataclass
class LiveStack:
    """URLs of the running services and the processes behind them."""

    env: dict[str, str]
    api_url: str
    worker_metrics: str
    reconciler_metrics: str
    logs: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def targets(self) -> dict[str, str]:
        """Prometheus job name -> host:port of each service's /metrics."""
        return {
            "api": self.api_url.removeprefix("http://"),
            "worker": self.worker_metrics.removeprefix("http://").removesuffix("/metrics"),
            "reconciler": self.reconciler_metrics.removeprefix("http://").removesuffix("/metrics"),
        }

    def start(self, name: str, *argv: str) -> subprocess.Popen[bytes]:
        """Start one service process with the stack's environment, logging to a file."""
        log = (self.logs / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            list(argv), cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        """Terminate every process this stack started (and only those)."""
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def load(
        self, seconds: float, users: int = 3, stop: threading.Event | None = None
    ) -> dict[int, int]:
        """``users`` concurrent clients reading (hits, misses, unknown ids) and ordering for
        ``seconds`` or until ``stop`` is set, so orders queue up and the worker's Gs pile
        onto run queues; status counts.
        """
        # One Counter per thread: Counter.update is not atomic across threads.
        per_user: list[Counter[int]] = [Counter() for _ in range(users)]
        stop = stop or threading.Event()
        threads = [
            threading.Thread(target=self._user, args=(u, seconds, stop, per_user[u]))
            for u in range(users)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return dict(sum(per_user, Counter()))

    @contextlib.contextmanager
    def loaded(self, max_seconds: float) -> Iterator[dict[int, int]]:
        """:meth:`load` in the background while the block runs (``max_seconds`` at most):
        a test waits for its condition instead of for a fixed load. The yielded status
        counts are filled in when the block ends."""
        statuses: dict[int, int] = {}
        stop = threading.Event()
        loader = threading.Thread(
            target=lambda: statuses.update(self.load(max_seconds, stop=stop)), daemon=True
        )
        loader.start()
        try:
            yield statuses
        finally:
            stop.set()
            loader.join()

    def _user(
        self, user: int, seconds: float, stop: threading.Event, statuses: Counter[int]
    ) -> None:
        deadline = time.monotonic() + seconds
        n = user * 1_000_000
        with httpx.Client(base_url=self.api_url, timeout=5.0) as client:
            while time.monotonic() < deadline and not stop.is_set():
                n += 1
                item = 1 + (n * 7) % DEMO_ITEMS
                responses = [
                    client.get(f"/items/{item}"),
                    client.get(f"/items/{10_000_000 + n % 5}"),  # unknown: negative cache
                    client.get("/items", params={"ids": f"{item},{item % DEMO_ITEMS + 1}"}),
                    client.post(
                        "/orders",
                        json={"item_id": item, "quantity": 1, "user_id": f"u{n}"},
                        headers={"Idempotency-Key": f"k-{uuid.uuid4().hex}"},
                    ),
                ]
                statuses.update(response.status_code for response in responses)


def _run(argv: list[str], env: dict[str, str]) -> None:
    subprocess.run(argv, cwd=ROOT, env=env, check=True, capture_output=True, timeout=120)


def _create_isolation() -> tuple[dict[str, str], str, str]:
    """A fresh database, vhost and Redis prefix: the environment naming them, the db, the vhost."""
    db, prefix = unique_name("db"), unique_name("rk") + ":"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{db}"')
    vhost = create_vhost()
    env = {
        "DATABASE_URL": psycopg.conninfo.make_conninfo(PG_ADMIN_URL, dbname=db),
        "BROKER_URL": f"amqp://guest:guest@{AMQP_HOST}/{vhost}",
        "REDIS_URL": f"{REDIS_HOST_URL}/2",
        "CACHE_REDIS_URL": f"{REDIS_HOST_URL}/3",
        "REDIS_PREFIX": prefix,
    }
    return env, db, vhost


def _drop_isolation(db: str, vhost: str, prefix: str) -> None:
    import psycopg
    import redis

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    delete_vhost(vhost)
    for n in (2, 3):
        with redis.Redis.from_url(f"{REDIS_HOST_URL}/{n}") as client:
            for key in client.scan_iter(match=f"{prefix}*", count=1000):
                client.delete(key)


def start_live_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    """api + worker + reconciler on free ports, isolated, catalog seeded and warmed."""
    isolation, db, vhost = _create_isolation()
    api_port, worker_port, reconciler_port = free_ports(3)
    env = {
        **os.environ,
        **isolation,
        "WORKER_METRICS_PORT": str(worker_port),
        "RECONCILER_METRICS_PORT": str(reconciler_port),
        "WORKER_METRICS_URL": f"http://127.0.0.1:{worker_port}/metrics",
        "RECONCILER_METRICS_URL": f"http://127.0.0.1:{reconciler_port}/metrics",
        "RECONCILE_INTERVAL_SECONDS": "1",
        "DEMO_ITEMS": str(DEMO_ITEMS),
        "DEMO_STOCK": "1000",
        "PYTHONUNBUFFERED": "1",
    }
    logs = tmp_path_factory.mktemp("stack-logs")
    env["WORKER_HEARTBEAT_FILE"] = str(logs / "worker-heartbeat")
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    stack = LiveStack(
        env=env,
        api_url=f"http://127.0.0.1:{api_port}",
        worker_metrics=f"http://127.0.0.1:{worker_port}/metrics",
        reconciler_metrics=f"http://127.0.0.1:{reconciler_port}/metrics",
        logs=logs,
    )
    try:
        py = sys.executable
        _run([py, "-m", "services.migrate"], env)
        _run([py, "-m", "services.catalog", "seed"], env)
        _run([py, "-m", "services.catalog", "warmup"], env)
        api = stack.start(
            "api", py, "-m", "uvicorn", "services.api.main:app", "--port", str(api_port),
            "--host", "127.0.0.1", "--log-level", "warning",
        )  # fmt: skip
        worker = stack.start(
            "worker", py, "-m", "celery", "-A", "services.worker.app", "worker",
            "--loglevel", "WARNING", "--without-heartbeat", "--without-gossip", "--without-mingle",
        )  # fmt: skip
        reconciler = stack.start("reconciler", py, "-m", "services.reconciler")
        wait_http(f"{stack.api_url}/healthz", api)
        wait_http(stack.worker_metrics, worker)
        wait_http(stack.reconciler_metrics, reconciler)
        print(f"\nlive stack: {stack.api_url} logs in {stack.logs}")
        yield stack
    finally:
        stack.stop()
        _drop_isolation(db, vhost, isolation["REDIS_PREFIX"])


@contextlib.contextmanager
def run_prometheus(jobs: dict[str, list[str]], workdir: Path) -> Iterator[str]:
    """A real Prometheus scraping ``jobs`` (name -> host:port list) every second; its URL."""
    binary = shutil.which("prometheus")
    require(binary, "prometheus not found (Debian package `prometheus`)")
    assert binary is not None
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": targets}]}
            for job, targets in jobs.items()
        ],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (workdir / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1h",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/-/ready", proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def wait_targets_up(prometheus: str, jobs: set[str], timeout: float = 30.0) -> None:
    """Wait until Prometheus has scraped every job successfully."""
    deadline = time.monotonic() + timeout
    health: dict[str, str] = {}
    while time.monotonic() < deadline:
        active = httpx.get(f"{prometheus}/api/v1/targets", timeout=5).json()["data"]
        health = {t["labels"]["job"]: t["health"] for t in active["activeTargets"]}
        if all(health.get(job) == "up" for job in jobs):
            return
        time.sleep(0.5)
    raise AssertionError(f"targets not all up after {timeout} s: {health}")


def query(prometheus: str, expr: str) -> dict[str, Any]:
    """``/api/v1/query`` for ``expr`` now; the decoded body."""
    body: dict[str, Any] = httpx.get(
        f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10
    ).json()
    return body
