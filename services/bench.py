"""Benchmark of the api's hot paths, side by side in one run against one api process.

    python -m services.bench [--seconds 5] [--connections 32]

Starts one uvicorn process (1 worker, uvloop, httptools) on a database, Redis prefix and
order queue of its own (created, then dropped), seeds and warms a catalog, and drives
four cases in turn from a separate load-generator process:

- ``floor``: a bare endpoint returning a constant (the most this app can serve);
- ``cache_hit``: ``GET /items/{id}`` on warm items (near cache, live stock from Redis);
- ``db_read``: the same item read straight from PostgreSQL (a bench-only route);
- ``order``: ``POST /orders`` acceptance (Lua reservation + confirmed publish; no
  worker consumes, the queue is deleted afterwards);
- ``publish_only``: the same confirmed publishes through the api's own publisher, in
  this process, with no HTTP and no Redis: the broker's ceiling for order acceptance.

The load generator is a minimal keep-alive HTTP/1.1 client on asyncio streams (httpx
would cost more CPU than the server on a small machine). It prints req/s, p50 and p99
per case and each case's ratio to the floor.

    python -m services.bench orders [--seconds 10]

is the order path under ``wrk`` instead (old and new publisher, 1,024 connections with
admission control, sold-out orders): see :mod:`services.bench_orders`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any

import psycopg
import redis
from fastapi import FastAPI, Path
from kombu import Connection
from pydantic import SecretStr
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from services import admin_token, db
from services.api.dependencies import Context
from services.api.errors import ApiError
from services.api.main import create_app
from services.api.responses import OrjsonResponse
from services.catalog import seed
from services.migrate import migrate
from services.publisher import make_publisher
from services.settings import Settings

HOT_ITEMS = 100
"""Items the read and order cases spread over."""


# --- the api under test ------------------------------------------------------------------------


def bench_app() -> FastAPI:
    """The api plus the two bench-only routes (uvicorn ``--factory`` target)."""
    app = create_app()

    @app.get("/bench/constant", include_in_schema=False)
    async def constant() -> OrjsonResponse:
        return OrjsonResponse({"ok": True})

    @app.get("/bench/items/{item_id}/db", include_in_schema=False)
    async def item_from_database(
        item_id: Annotated[int, Path(ge=1)], ctx: Context
    ) -> OrjsonResponse:
        found = await db.load_items(ctx.db_pool, [item_id])
        if item_id not in found:
            raise ApiError(404, "item_not_found", f"no item {item_id}")
        return OrjsonResponse(found[item_id])

    return app


# --- load generator ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One benchmarked request kind."""

    name: str
    method: str
    path: str
    """May contain ``{item}``, replaced by an item id per request."""
    body: str | None = None
    """May contain ``{item}`` and ``{user}``."""


CASES = (
    Case("floor", "GET", "/bench/constant"),
    Case("cache_hit", "GET", "/items/{item}"),
    Case("db_read", "GET", "/bench/items/{item}/db"),
    Case(
        "order",
        "POST",
        "/orders",
        '{{"item_id": {item}, "quantity": 1, "user_id": "{user}"}}',
    ),
)


def request_bytes(
    case: Case, host: str, rng: random.Random, n: int, pick: Callable[[random.Random], int]
) -> bytes:
    """One HTTP/1.1 request of ``case`` for the item ``pick(rng)``; ``n`` makes the user
    of an order unique within its connection."""
    item = pick(rng)
    path = case.path.format(item=item)
    head = f"{case.method} {path} HTTP/1.1\r\nHost: {host}\r\n"
    if case.body is None:
        return (head + "\r\n").encode()
    body = case.body.format(item=item, user=f"u{os.getpid()}x{id(rng)}x{n}").encode()
    head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def hot_item(rng: random.Random) -> int:
    """An item among the :data:`HOT_ITEMS` first, uniformly."""
    return rng.randint(1, HOT_ITEMS)


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> int:
    """Send one request on a keep-alive connection and read its whole answer: the status."""
    writer.write(data)
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)
    return int(head[9:12])


async def _connection_loop(
    case: Case, host: str, port: int, until: float, warm_until: float, out: dict[str, Any]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    rng = random.Random()
    n = 0
    try:
        while (now := time.perf_counter()) < until:
            n += 1
            status = await exchange(reader, writer, request_bytes(case, host, rng, n, hot_item))
            if now >= warm_until:
                out["latencies"].append(time.perf_counter() - now)
                out["statuses"][status] = out["statuses"].get(status, 0) + 1
    finally:
        writer.close()


async def _drive(
    case: Case, port: int, seconds: float, warmup: float, connections: int
) -> dict[str, Any]:
    out: dict[str, Any] = {"latencies": [], "statuses": {}}
    start = time.perf_counter()
    warm_until, until = start + warmup, start + warmup + seconds
    await asyncio.gather(
        *(
            _connection_loop(case, "127.0.0.1", port, until, warm_until, out)
            for _ in range(connections)
        )
    )
    return _summary(case.name, out["latencies"], time.perf_counter() - warm_until, out["statuses"])


def _summary(
    name: str, latencies: list[float], measured: float, statuses: dict[str, int]
) -> dict[str, Any]:
    """One row: completed operations per second and latency percentiles."""
    ordered = sorted(latencies)

    def pct(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else 0

    return {
        "case": name,
        "requests": len(ordered),
        "rps": len(ordered) / max(measured, 1e-9),
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "statuses": statuses,
    }


async def _publish_ceiling(
    settings: Settings, seconds: float, warmup: float, concurrency: int
) -> dict[str, Any]:
    """The broker's share of an order: confirmed publishes through the api's own publisher
    (same threads, same confirms) with no HTTP, no request handling and no Redis. Order
    acceptance close to this rate is bounded by the broker, not by the event loop."""
    publisher = make_publisher(settings)
    await publisher.start()
    latencies: list[float] = []
    start = time.perf_counter()
    warm_until, until = start + warmup, start + warmup + seconds

    async def publish_loop() -> None:
        while (began := time.perf_counter()) < until:
            order = {
                "order_id": str(uuid.uuid4()),
                "item_id": 1,
                "user_id": "bench",
                "quantity": 1,
                "accepted_at_ms": int(time.time() * 1000),
            }
            await publisher.publish_order(order)
            if began >= warm_until:
                latencies.append(time.perf_counter() - began)

    try:
        await asyncio.gather(*(publish_loop() for _ in range(concurrency)))
    finally:
        await publisher.close()
    measured = time.perf_counter() - warm_until
    return _summary("publish_only", latencies, measured, {"confirmed": len(latencies)})


def _load_main(args: argparse.Namespace) -> None:
    """Load-generator process: drive one case, print its figures as JSON."""
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    case = next(c for c in CASES if c.name == args.case)
    result = asyncio.run(_drive(case, args.port, args.seconds, args.warmup, args.connections))
    print(json.dumps(result))


# --- orchestration -----------------------------------------------------------------------------


def raise_file_limit() -> None:
    """Lift this process's open-file limit to the hard limit: a thousand connections need
    more descriptors than the usual soft limit of 1,024 (the api and the load generator)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class BenchEnv:
    """An isolated database, Redis prefix and queue names for one run."""

    settings: Settings
    admin_url: str
    db_name: str

    def environ(self) -> dict[str, str]:
        """The api process's environment."""
        s = self.settings
        return {
            "DATABASE_URL": s.database_url,
            "REDIS_URL": s.redis_url,
            "CACHE_REDIS_URL": s.cache_redis_url,
            "REDIS_PREFIX": s.redis_prefix,
            "BROKER_URL": s.broker_url,
            "ORDER_QUEUE": s.order_queue,
            "ITEM_UPDATE_QUEUE": s.item_update_queue,
            "PER_USER_LIMIT": str(s.per_user_limit),
            "ADMIN_TOKEN": self.admin_token,
        }

    @property
    def admin_token(self) -> str:
        """This run's admin token (made up for it, see :func:`bench_env`)."""
        return admin_token.configured(self.settings.admin_token) or ""


@contextlib.contextmanager
def bench_env(base: Settings) -> Iterator[BenchEnv]:
    """Create the run's database (migrated, seeded) and names; remove everything after."""
    tag = uuid.uuid4().hex[:8]
    admin_url = psycopg.conninfo.make_conninfo(base.database_url, dbname="postgres")
    db_name = f"bench_{tag}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db_name}"')
    settings = base.model_copy(
        update={
            "database_url": psycopg.conninfo.make_conninfo(base.database_url, dbname=db_name),
            "redis_prefix": f"bench_{tag}:",
            "order_queue": f"bench_orders_{tag}",
            "item_update_queue": f"bench_updates_{tag}",
            "per_user_limit": 1_000_000,
            "admin_token": SecretStr(secrets.token_urlsafe(admin_token.TOKEN_BYTES)),
        }
    )
    env = BenchEnv(settings, admin_url, db_name)
    try:
        migrate(settings.database_url)
        seed(settings.database_url, max(HOT_ITEMS, 1000), 10**9)
        yield env
    finally:
        _cleanup(env)


def _cleanup(env: BenchEnv) -> None:
    s = env.settings
    with psycopg.connect(env.admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{env.db_name}" WITH (FORCE)')
    for url in (s.redis_url, s.cache_redis_url):
        with redis.Redis.from_url(url) as client:
            for keys in _batches(client.scan_iter(match=f"{s.redis_prefix}*", count=1000)):
                client.delete(*keys)
    with Connection(s.broker_url) as conn:
        for queue in (s.order_queue, s.item_update_queue):
            with contextlib.suppress(Exception):
                # kombu's stub types the channel as the abstract StdChannel (no queue_delete).
                conn.default_channel.queue_delete(queue)  # type: ignore[attr-defined]


def _batches(it: Iterator[bytes], size: int = 1000) -> Iterator[list[bytes]]:
    batch: list[bytes] = []
    for key in it:
        batch.append(key)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@contextlib.contextmanager
def api_process(
    env: BenchEnv, port: int, extra_env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """uvicorn, 1 worker, uvloop + httptools, until it answers /healthz; ``extra_env``
    overrides settings (e.g. ``PUBLISHER``)."""
    cmd = [
        sys.executable, "-m", "uvicorn", "services.bench:bench_app", "--factory",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--loop", "uvloop", "--http", "httptools", "--log-level", "warning", "--no-access-log",
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd,
        env={**os.environ, **env.environ(), **(extra_env or {})},
        preexec_fn=raise_file_limit,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the api did not start") from None
                time.sleep(0.2)
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def admin_post(url: str, body: dict[str, Any], token: str) -> Any:
    headers = {"Content-Type": "application/json", **admin_token.bearer_header(token)}
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def run(seconds: float, warmup: float, connections: int, console: Console) -> list[dict[str, Any]]:
    """Run every case against one api process; return the figures."""
    results = []
    with bench_env(Settings()) as env:
        port = free_port()
        with api_process(env, port), Progress(console=console, transient=True) as progress:
            warmed = admin_post(f"http://127.0.0.1:{port}/admin/warmup", {}, env.admin_token)
            console.print(f"warmup: {warmed}")
            task = progress.add_task("benchmark", total=len(CASES) + 1)
            for case in CASES:
                progress.update(task, description=f"{case.name} ({seconds:.0f}s)")
                out = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "services.bench",
                        "_load",
                        "--case",
                        case.name,
                        "--port",
                        str(port),
                        "--seconds",
                        str(seconds),
                        "--warmup",
                        str(warmup),
                        "--connections",
                        str(connections),
                    ],
                    check=True,
                    capture_output=True,
                    text=True,
                )
                results.append(json.loads(out.stdout.strip().splitlines()[-1]))
                progress.advance(task)
            progress.update(task, description=f"publish_only ({seconds:.0f}s)")
            ceiling = _publish_ceiling(env.settings, seconds, warmup, connections)
            results.append(asyncio.run(ceiling))
    return results


def report(results: list[dict[str, Any]], console: Console) -> None:
    """Print the table: req/s, p50, p99, ratio to the floor, status codes."""
    floor = next(r["rps"] for r in results if r["case"] == "floor")
    table = Table(title="api hot paths, one uvicorn process (uvloop, httptools)")
    for column in ("case", "req/s", "p50 ms", "p99 ms", "vs floor", "statuses"):
        table.add_column(column, justify="left" if column in ("case", "statuses") else "right")
    for r in results:
        table.add_row(
            r["case"],
            f"{r['rps']:,.0f}",
            f"{r['p50_ms']:.2f}",
            f"{r['p99_ms']:.2f}",
            f"{r['rps'] / floor:.0%}",
            ", ".join(f"{k}: {v}" for k, v in sorted(r["statuses"].items())),
        )
    console.print(table)
    by_case = {r["case"]: r["rps"] for r in results}
    console.print(
        f"cache hit / floor = {by_case['cache_hit'] / floor:.2f} (target >= 0.60), "
        f"cache hit / db read = {by_case['cache_hit'] / by_case['db_read']:.1f}x (target >= 3x), "
        f"order acceptance / confirmed-publish ceiling = "
        f"{by_case['order'] / by_case['publish_only']:.2f}"
    )


def main(argv: list[str] | None = None) -> None:
    """Command line (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m services.bench", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    orders = sub.add_parser("orders", help="the order path under wrk (services.bench_orders)")
    orders.add_argument("--seconds", type=float, default=10.0, help="measured time per case")
    orders.add_argument("--json", action="store_true", help="print the figures as JSON too")
    load = sub.add_parser("_load", help="internal: the load-generator process")
    load.add_argument("--case", required=True, choices=[c.name for c in CASES])
    load.add_argument("--port", type=int, required=True)
    for p in (parser, load):
        p.add_argument("--seconds", type=float, default=5.0, help="measured time per case")
        p.add_argument("--warmup", type=float, default=1.0, help="unmeasured lead-in per case")
        p.add_argument("--connections", type=int, default=32, help="concurrent keep-alive conns")
        p.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args(argv)
    if args.command == "_load":
        _load_main(args)
        return
    if args.command == "orders":
        from services import bench_orders  # imports this module: not at the top

        rows = bench_orders.run(args.seconds, Console())
        bench_orders.report(rows, Console())
        if args.json:
            print(json.dumps(rows))
        return
    console = Console()
    results = run(args.seconds, args.warmup, args.connections, console)
    report(results, console)
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
