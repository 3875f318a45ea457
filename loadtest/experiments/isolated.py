"""A native stack of an experiment's own, and what PostgreSQL and the api count.

Each variant of an experiment gets a fresh ``python -m services.stack up --detach`` with its
own database, RabbitMQ vhost, Redis key prefix, ports and run directory, so variants never
share state with each other, with the tests or with anyone's ``make up``. The runner sets
``EXPERIMENTS_ALLOWED=1`` for these stacks only: that is what lets an experiment-only mode on.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg
import redis
from prometheus_client.parser import text_string_to_metric_families

from loadtest.experiments.drive import Request, Stream, run_plan
from loadtest.runner import PYTHON, ROOT, RunnerError, free_port
from services.admin_token import bearer_header
from services.keys import Keys
from services.settings import EXPERIMENTS_ALLOWED
from services.store import OrderStore
from services.worker.bench_persist import (
    ADMIN_URL,
    AMQP_HOST,
    SCRATCH_REDIS_URL,
    clear_redis,
    scratch_database,
    scratch_vhost,
)

CACHE_REDIS_URL = SCRATCH_REDIS_URL[:-1] + "3"
"""The cache Redis of an experiment's stack: another logical database, as natively."""
CATALOG_ITEMS = 1000
STACK_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Stack:
    """A running isolated stack: where it answers and where its state lives."""

    base_url: str
    database_url: str
    prefix: str
    env: dict[str, str]
    run_dir: Path

    def metrics(self) -> dict[str, float]:
        """The api's Prometheus samples summed by name (labels dropped)."""
        with urllib.request.urlopen(f"{self.base_url}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        totals: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
        return totals

    def post(self, path: str) -> None:
        """POST an empty JSON body to an admin route (e.g. ``/admin/warmup``) with the stack's
        admin token; raise on an error status."""
        headers = {"Content-Type": "application/json", **bearer_header(self.env["ADMIN_TOKEN"])}
        request = urllib.request.Request(f"{self.base_url}{path}", data=b"{}", headers=headers)
        with urllib.request.urlopen(request, timeout=60):
            pass

    @property
    def port(self) -> int:
        """The api's port."""
        return int(self.base_url.rsplit(":", 1)[1])

    def stop(self) -> None:
        """Stop the stack now (idempotent): its database backends exit and so publish their
        statistics, which idle backends may otherwise hold back for up to 10 s."""
        with contextlib.suppress(RunnerError, subprocess.TimeoutExpired):
            _stack_command(self.env, "down")

    def drop_cache(self) -> None:
        """Empty the item cache: Redis entries deleted, every near cache told to forget all."""
        keys = Keys(self.prefix)
        clear_redis(CACHE_REDIS_URL, f"{self.prefix}item:")
        with redis.Redis.from_url(CACHE_REDIS_URL) as client:
            client.publish(keys.invalidate_channel, b"*")


def _stack_command(env: dict[str, str], command: str) -> None:
    proc = subprocess.run(
        [PYTHON, "-m", "services.stack", command, *(["--detach"] if command == "up" else [])],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=STACK_TIMEOUT_S,
    )
    if proc.returncode != 0:
        raise RunnerError(
            f"services.stack {command} failed ({proc.returncode}):\n"
            + (proc.stdout + proc.stderr)[-2000:]
        )


@contextlib.contextmanager
def native_stack(name: str, settings: dict[str, str]) -> Iterator[Stack]:
    """Start an isolated native stack with ``settings`` (environment variables) on top of the
    experiments' defaults; stop it and remove its database, vhost and keys afterwards."""
    tag = f"experiments_{name}"
    with (
        scratch_database(ADMIN_URL, tag) as database_url,
        scratch_vhost(AMQP_HOST, tag) as broker_url,
        tempfile.TemporaryDirectory(prefix=f"{tag}-run-") as run_dir,
    ):
        prefix = f"{tag}_{uuid.uuid4().hex[:6]}:"
        api_port = free_port()
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "BROKER_URL": broker_url,
            "REDIS_URL": SCRATCH_REDIS_URL,
            "CACHE_REDIS_URL": CACHE_REDIS_URL,
            "REDIS_PREFIX": prefix,
            "API_PORT": str(api_port),
            "WORKER_METRICS_PORT": str(free_port()),
            "RECONCILER_METRICS_PORT": str(free_port()),
            "STACK_RUN_DIR": run_dir,
            "DEMO_ITEMS": str(CATALOG_ITEMS),
            # Enough stock and a loose per-user limit: the order load must measure
            # acceptance, not sold-out answers.
            "DEMO_STOCK": "1000000",
            "PER_USER_LIMIT": "1000000",
            # The reconciler's periodic passes would add their own queries to the
            # database statistics the experiments read.
            "RECONCILE_INTERVAL_SECONDS": "3600",
            "ADMIN_TOKEN": secrets.token_urlsafe(24),
            EXPERIMENTS_ALLOWED: "1",
            **settings,
        }
        stack = Stack(f"http://127.0.0.1:{api_port}", database_url, prefix, env, Path(run_dir))
        try:
            _stack_command(env, "up")
            yield stack
        finally:
            stack.stop()
            for url in (SCRATCH_REDIS_URL, CACHE_REDIS_URL):
                clear_redis(url, prefix)


@dataclass(frozen=True)
class DatabaseCounters:
    """PostgreSQL's own statistics of one database: scans of ``items`` and commits."""

    item_scans: int
    commits: int

    def __sub__(self, other: DatabaseCounters) -> DatabaseCounters:
        return DatabaseCounters(self.item_scans - other.item_scans, self.commits - other.commits)


_COUNTERS = """
SELECT coalesce(t.seq_scan, 0) + coalesce(t.idx_scan, 0), d.xact_commit
FROM pg_stat_database d
LEFT JOIN pg_stat_user_tables t ON t.relname = 'items'
WHERE d.datname = current_database()
"""
IDLE_FLUSH_S = 11.0
"""PostgreSQL 15 backends publish their statistics at a transaction's end at most once a
second; an idle backend with pending statistics publishes them within 10 s."""


def settled_counters(database_url: str) -> DatabaseCounters:
    """:func:`database_counters` once every idle backend has published its statistics
    (the reconciler's first pass at start, the warm-up)."""
    time.sleep(IDLE_FLUSH_S)
    return database_counters(database_url)


def database_counters(database_url: str) -> DatabaseCounters:
    """Item scans and committed transactions published so far."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(_COUNTERS).fetchone()
    assert row is not None
    # This very query commits one transaction; leave it out of the count.
    return DatabaseCounters(int(row[0]), int(row[1]) - 1)


@dataclass(frozen=True)
class StackRun:
    """What one load on an isolated stack produced."""

    requests: list[Request]
    database: DatabaseCounters
    """PostgreSQL's counters over the load (published by every backend, see :meth:`Stack.stop`)."""
    metrics: dict[str, float]
    """The api's Prometheus counters over the load."""
    pending_after: int
    """Orders accepted and not yet persisted when the load stopped (the queue's backlog)."""


def load_stack(
    name: str,
    settings: dict[str, str],
    plan: Sequence[Stream],
    workdir: Path,
    prepare: Callable[[Stack], None] | None = None,
) -> StackRun:
    """Start an isolated stack with ``settings``, ``prepare`` it (e.g. drop the cache), wait
    for the database statistics to settle, run ``plan``, and measure around the load."""
    with native_stack(name, settings) as stack:
        if prepare is not None:
            prepare(stack)
        before = settled_counters(stack.database_url)
        metrics_before = stack.metrics()
        requests = run_plan(plan, stack.port, CATALOG_ITEMS, workdir / f"{name}.json")
        metrics_after = stack.metrics()
        with redis.Redis.from_url(SCRATCH_REDIS_URL) as client:
            pending = OrderStore(client, stack.prefix, per_user_limit=1).pending_count()
        stack.stop()
        after = database_counters(stack.database_url)
    metrics = {k: v - metrics_before.get(k, 0.0) for k, v in metrics_after.items()}
    return StackRun(requests, after - before, metrics, pending)
