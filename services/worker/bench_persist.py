"""Persisted orders per second: the gmpworker pool (with and without batching) against
Celery's threads and prefork pools.

``python -m services.worker.bench_persist [--orders 20000] [--concurrency 64]``

Every variant gets the same setup: a database and a RabbitMQ vhost of the run's own
(dropped afterwards), the same seeded items, the same N orders published to the order
queue *before* one ``celery -A services.worker.app worker`` process starts with the
variant's pool and the same concurrency. Reported per variant:

- orders/s: N / (last commit - first commit), from the rows' ``persisted_at``;
- p99 publish -> commit: ``persisted_at - accepted_at`` (``accepted_at`` is the publish
  time), so it includes the time an order queued behind the others;
- peak threads and peak RSS of the worker's process tree (read from ``/proc``,
  sampled every 50 ms), and the number of transactions (``xmin``) that committed rows.

The workers run the service's app with task events off (``-A
services.worker.bench_persist``), for every variant alike: with events on and publisher
confirms, Celery's threads pool deadlocks within seconds at concurrency 64 (its worker
threads publish events on a connection whose confirm another thread can read; the
gmpworker pool hands every callback to the consumer thread instead).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import redis
from celery import Celery
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from services.messaging import PERSIST_ORDER
from services.migrate import migrate
from services.settings import get_settings
from services.worker.app import app as service_app

ROOT = Path(__file__).resolve().parents[2]
GMP_POOL = "gmpworker.celery:GMPPool"
ADMIN_URL = os.environ.get("TEST_PG_ADMIN_URL", "postgresql://root@127.0.0.1:5432/postgres")
"""PostgreSQL's maintenance database, where scratch databases are created."""
AMQP_HOST = os.environ.get("TEST_AMQP_HOST", "127.0.0.1:5672")
"""RabbitMQ's host:port, for scratch vhosts."""
SCRATCH_REDIS_URL = "redis://127.0.0.1:6379/2"
"""The Redis database scratch runs use, each under a key prefix of its own."""

app = service_app  # ``celery -A services.worker.bench_persist worker``: the service's app...
app.conf.worker_send_task_events = False  # ...without task events (see the module docstring)


@dataclass(frozen=True)
class Variant:
    """One worker configuration under test."""

    label: str
    pool: str
    batching: bool = False


VARIANTS = (
    Variant("gmpworker + batching", GMP_POOL, batching=True),
    Variant("gmpworker, no batching", GMP_POOL),
    Variant("celery threads", "threads"),
    Variant("celery prefork", "prefork"),
)


@dataclass
class Result:
    """What one variant measured."""

    variant: Variant
    orders: int
    orders_per_second: float
    p99_seconds: float
    transactions: int
    peak_threads: int
    peak_rss_mb: float


# --- isolation ------------------------------------------------------------------------------


@contextmanager
def scratch_database(admin_url: str, prefix: str = "bench_persist") -> Iterator[str]:
    """A fresh migrated database named ``<prefix>_<random>``; dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = psycopg.conninfo.make_conninfo(admin_url, dbname=name)
    try:
        migrate(url)
        yield url
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def scratch_vhost(amqp_host: str, prefix: str = "bench_persist") -> Iterator[str]:
    """A fresh RabbitMQ vhost ``<prefix>_<random>`` for guest (needs ``rabbitmqctl``);
    deleted afterwards."""
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        raise SystemExit("rabbitmqctl not found: the benchmark needs a local RabbitMQ")
    vhost = f"{prefix}_{uuid.uuid4().hex[:8]}"
    subprocess.run([ctl, "-q", "add_vhost", vhost], check=True, capture_output=True)
    subprocess.run(
        [ctl, "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
        check=True,
        capture_output=True,
    )
    try:
        yield f"amqp://guest:guest@{amqp_host}/{vhost}"
    finally:
        subprocess.run([ctl, "-q", "delete_vhost", vhost], capture_output=True)


def clear_redis(url: str, prefix: str) -> None:
    """Delete every key under ``prefix``."""
    client = redis.Redis.from_url(url)
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        client.delete(key)
    client.close()


# --- data -----------------------------------------------------------------------------------


def reset_database(url: str, items: int, stock: int) -> None:
    """No orders; ``items`` items with ``stock`` units each."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE orders, items CASCADE")
        conn.execute(
            "INSERT INTO items (id, name, price_cents, stock, initial_stock)"
            " SELECT i, 'item ' || i, 1000, %s, %s FROM generate_series(1, %s) AS i",
            (stock, stock, items),
        )
        conn.execute("VACUUM ANALYZE items")


def publish_orders(broker_url: str, queue: str, n: int, items: int) -> None:
    """Publish ``n`` one-unit orders, round-robin over the items, stamped with the publish time."""
    app = Celery("bench-publisher", broker=broker_url)
    with app.producer_or_acquire() as producer:
        for i in range(n):
            order = {
                "order_id": str(uuid.uuid4()),
                "item_id": i % items + 1,
                "user_id": f"bench-{i}",
                "quantity": 1,
                "accepted_at_ms": int(time.time() * 1000),
            }
            app.send_task(PERSIST_ORDER, kwargs={"order": order}, queue=queue, producer=producer)
    app.close()


def persisted(url: str) -> int:
    """Orders committed so far."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM orders").fetchone()
    return int(row[0]) if row else 0


def commit_figures(url: str) -> tuple[float, float, int]:
    """(commit span in s, p99 publish->commit in s, transactions) over every committed order."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT extract(epoch FROM max(persisted_at) - min(persisted_at)),"
            " percentile_cont(0.99) WITHIN GROUP"
            "   (ORDER BY extract(epoch FROM persisted_at - accepted_at)),"
            " count(DISTINCT xmin::text)"
            " FROM orders"
        ).fetchone()
    assert row is not None
    return float(row[0] or 0.0), float(row[1] or 0.0), int(row[2])


# --- the worker process -----------------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def threads_and_rss(pid: int) -> tuple[int, int]:
    """Threads and resident kB summed over ``pid``'s process tree."""
    threads = rss = 0
    for proc in process_tree(pid):
        try:
            status = Path(f"/proc/{proc}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("Threads:"):
                threads += int(line.split()[1])
            elif line.startswith("VmRSS:"):
                rss += int(line.split()[1])
    return threads, rss


class PeakSampler(threading.Thread):
    """Samples a process tree's threads and RSS every 50 ms; keeps the peaks."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak_threads = 0
        self.peak_rss_kb = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        """Sample until stopped."""
        while not self._stop_event.wait(0.05):
            threads, rss = threads_and_rss(self.pid)
            self.peak_threads = max(self.peak_threads, threads)
            self.peak_rss_kb = max(self.peak_rss_kb, rss)

    def stop(self) -> None:
        """Stop sampling and wait for the thread."""
        self._stop_event.set()
        self.join()


def start_worker(variant: Variant, env: dict[str, str], concurrency: int, log: Path) -> Any:
    """``celery worker`` on the order queue with the variant's pool."""
    worker_env = {
        **os.environ,
        **env,
        "WORKER_POOL": variant.pool,
        "WORKER_BATCHING": "1" if variant.batching else "0",
        "WORKER_CONCURRENCY": str(concurrency),
        "WORKER_METRICS_PORT": "0",
        "WORKER_HEARTBEAT_FILE": str(log.with_suffix(".hb")),
    }
    command = [
        sys.executable, "-m", "celery", "-A", "services.worker.bench_persist", "worker",
        "--loglevel=WARNING", "--without-mingle", "--without-gossip", "-Q", env["ORDER_QUEUE"],
        "-c", str(concurrency), "-n", f"bench-{uuid.uuid4().hex[:6]}@%h",
    ]  # fmt: skip
    with log.open("wb") as out:
        return subprocess.Popen(command, cwd=ROOT, env=worker_env, stdout=out, stderr=out)


def stop_worker(proc: Any) -> None:
    """Warm shutdown, SIGKILL after 30 s."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


# --- one variant ------------------------------------------------------------------------------


def run_variant(
    variant: Variant, env: dict[str, str], args: argparse.Namespace, progress: Progress, log: Path
) -> Result:
    """Reset, publish, run one worker until every order is committed, measure."""
    url = env["DATABASE_URL"]
    reset_database(url, args.items, args.orders)
    clear_redis(env["REDIS_URL"], env["REDIS_PREFIX"])
    task = progress.add_task(f"{variant.label}: publishing", total=args.orders)
    publish_orders(env["BROKER_URL"], env["ORDER_QUEUE"], args.orders, args.items)
    progress.update(task, description=f"{variant.label}: persisting")
    worker = start_worker(variant, env, args.concurrency, log)
    sampler = PeakSampler(worker.pid)
    sampler.start()
    deadline = time.monotonic() + args.timeout
    try:
        while (done := persisted(url)) < args.orders:
            progress.update(task, completed=done)
            if worker.poll() is not None:
                raise SystemExit(f"{variant.label}: worker exited, see {log}")
            if time.monotonic() > deadline:
                raise SystemExit(f"{variant.label}: {done}/{args.orders} after {args.timeout} s")
            time.sleep(0.25)
        progress.update(task, completed=args.orders)
    finally:
        sampler.stop()
        stop_worker(worker)
    span, p99, transactions = commit_figures(url)
    return Result(
        variant,
        args.orders,
        args.orders / span if span > 0 else float("inf"),
        p99,
        transactions,
        sampler.peak_threads,
        sampler.peak_rss_kb / 1024,
    )


def render(results: list[Result], args: argparse.Namespace) -> Table:
    """The results as a rich table."""
    table = Table(
        title=f"{args.orders} orders, concurrency {args.concurrency}, one worker process each"
    )
    for column in (
        "pool",
        "orders/s",
        "p99 publish->commit (s)",
        "transactions",
        "peak threads",
        "peak RSS (MB)",
    ):
        table.add_column(column, justify="left" if column == "pool" else "right")
    for r in results:
        table.add_row(
            r.variant.label,
            f"{r.orders_per_second:,.0f}",
            f"{r.p99_seconds:.2f}",
            f"{r.transactions:,}",
            str(r.peak_threads),
            f"{r.peak_rss_mb:,.0f}",
        )
    return table


def main(argv: list[str] | None = None) -> None:
    """Run every selected variant and print the table (and a markdown copy)."""
    settings = get_settings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=settings.worker_concurrency)
    parser.add_argument("--items", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=600.0, help="per variant, seconds")
    parser.add_argument(
        "--pools",
        default="all",
        help="comma-separated subset of: batched,gmp,threads,prefork (default all)",
    )
    parser.add_argument(
        "--admin-url",
        default=ADMIN_URL,
    )
    parser.add_argument("--amqp-host", default=AMQP_HOST)
    parser.add_argument("--redis-url", default=SCRATCH_REDIS_URL)
    args = parser.parse_args(argv)
    keys = ("batched", "gmp", "threads", "prefork")
    chosen = keys if args.pools == "all" else tuple(args.pools.split(","))
    variants = [v for key, v in zip(keys, VARIANTS, strict=True) if key in chosen]
    console = Console()
    results: list[Result] = []
    prefix = f"bench:{uuid.uuid4().hex[:8]}:"
    with (
        scratch_database(args.admin_url) as db_url,
        scratch_vhost(args.amqp_host) as broker_url,
        tempfile.TemporaryDirectory() as tmp,
    ):
        env = {
            "DATABASE_URL": db_url,
            "BROKER_URL": broker_url,
            "REDIS_URL": args.redis_url,
            "CACHE_REDIS_URL": args.redis_url,
            "REDIS_PREFIX": prefix,
            "ORDER_QUEUE": "orders",
        }
        try:
            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
            ) as progress:
                for variant in variants:
                    log = Path(tmp) / f"{variant.pool.replace(':', '_')}-{variant.batching}.log"
                    results.append(run_variant(variant, env, args, progress, log))
        finally:
            clear_redis(args.redis_url, prefix)
    console.print(render(results, args))
    console.print(markdown(results, args))


def markdown(results: list[Result], args: argparse.Namespace) -> str:
    """The table in markdown, for the README."""
    lines = [
        f"{args.orders} orders, concurrency {args.concurrency}:",
        "",
        "| pool | orders/s | p99 publish->commit (s) | transactions | peak threads"
        " | peak RSS (MB) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r.variant.label} | {r.orders_per_second:,.0f} | {r.p99_seconds:.2f}"
        f" | {r.transactions:,} | {r.peak_threads} | {r.peak_rss_mb:,.0f} |"
        for r in results
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
