"""A tiny Celery app for the pool contract tests, configured from the environment.

``TEST_BROKER_URL`` (a vhost of the test's own), ``TEST_REDIS_URL`` + ``TEST_PREFIX``
(where tasks leave traces), ``TEST_PG_URL`` (for the database-blocking task), and
``GMP_POOL_ROUTE``: ``conf`` selects the pool through ``worker_pool`` in the config;
anything else leaves the pool to the command line (``-P custom`` + env).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import psycopg
import redis
from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded

import gmpworker as gmp
from gmpworker.celery import GTask

app = Celery("gmptest", broker=os.environ.get("TEST_BROKER_URL", "amqp://"), backend="rpc://")
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_serializer="json",
    accept_content=["json"],
    result_serializer="json",
    broker_connection_retry_on_startup=True,
    gmp_maxprocs=int(os.environ.get("GMP_MAXPROCS", "1")),
)
if os.environ.get("GMP_POOL_ROUTE") == "conf":
    app.conf.worker_pool = "gmpworker.celery:GMPPool"

PREFIX = os.environ.get("TEST_PREFIX", "gmptest:")
_redis = redis.Redis.from_url(os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/2"))


def trace(event: str) -> None:
    """Leave ``event`` in the test's Redis list (the test reads what ran, in order)."""
    _redis.rpush(f"{PREFIX}events", event)


@app.task
def add(x: int, y: int) -> dict[str, Any]:
    """A result, and where it ran: the G id and whether it ran on a gmpworker M."""
    return {
        "sum": x + y,
        "goid": gmp.current_goid(),
        "thread": threading.current_thread().name,
    }


@app.task
def boom(message: str) -> None:
    """A task whose G raises."""
    raise ValueError(message)


@app.task(bind=True, autoretry_for=(ConnectionError,), default_retry_delay=0, max_retries=3)
def flaky(self: Any, key: str, failures: int) -> int:
    """Fails ``failures`` times (counted in Redis), then returns how many tries it took."""
    tries = int(_redis.incr(f"{PREFIX}tries:{key}"))
    if tries <= failures:
        raise ConnectionError(f"try {tries}")
    return tries


@app.task
def record(tag: str, seconds: float) -> str:
    """Sleep ``seconds`` (in short steps, so it can be interrupted), then leave ``tag``."""
    trace(f"start:{tag}")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.02)
    trace(f"done:{tag}")
    return tag


@app.task
def db_sleep(tag: str, seconds: float) -> float:
    """Block in PostgreSQL (``pg_sleep``) and return how long it took."""
    started = time.monotonic()
    with psycopg.connect(os.environ["TEST_PG_URL"]) as conn:
        trace(f"db_sleep:start:{tag}")
        conn.execute("SELECT pg_sleep(%s)", (seconds,))
    trace(f"db_sleep:{tag}")
    return time.monotonic() - started


@app.task
def stamp(tag: str) -> float:
    """Leave ``tag`` and return the wall clock at which it ran."""
    trace(tag)
    return time.time()


@app.task(soft_time_limit=0.3)
def soft_sync() -> str:
    """Runs until the soft limit interrupts it, then reports it cleanly."""
    try:
        while True:
            time.sleep(0.02)
    except SoftTimeLimitExceeded:
        return "soft"


@app.task(time_limit=0.3)
def hard_sync(tag: str) -> None:
    """Never ends on its own; the hard limit must stop it."""
    trace(f"start:{tag}")
    while True:
        time.sleep(0.02)


@app.task(base=GTask)
async def async_record(tag: str, seconds: float) -> str:
    """``record``'s native twin: parks on a timer between its two traces."""
    trace(f"start:{tag}")
    await gmp.sleep(seconds)
    trace(f"done:{tag}")
    return tag


@app.task(base=GTask, time_limit=0.3)
async def async_hard(tag: str) -> None:
    """Parks far beyond its hard limit: the limit must end it at the await."""
    trace(f"start:{tag}")
    await gmp.sleep(30)
    trace(f"done:{tag}")


@app.task(base=GTask, bind=True)
async def async_sleep(self: Any, seconds: float) -> dict[str, Any]:
    """A native body: parks on a gmpworker timer, no thread held while it waits."""
    await gmp.sleep(seconds)
    return {"id": self.request.id, "goid": gmp.current_goid()}


@app.task(base=GTask)
async def async_fanout(n: int) -> int:
    """A native body using go + channels: ``n`` child Gs each send one value."""
    ch: gmp.Chan[int] = gmp.Chan()

    async def child(i: int) -> None:
        await gmp.sleep(0.01)
        await ch.send(i)

    for i in range(n):
        gmp.go(child, i)
    total = 0
    for _ in range(n):
        total += await ch.recv() or 0
    return total


@app.task(base=GTask, soft_time_limit=0.3)
async def async_soft() -> str:
    """Parks far beyond its soft limit; SoftTimeLimitExceeded arrives at the await.

    Having caught it, the body awaits again (a sleep, a channel hand-off) and ends
    normally: the soft limit is delivered once, not at every later park point.
    """
    try:
        await gmp.sleep(30)
    except SoftTimeLimitExceeded:
        await gmp.sleep(0.05)
        ch: gmp.Chan[str] = gmp.Chan(1)
        await ch.send("soft")
        return await ch.recv() or "lost"
    return "not interrupted"


@app.task(base=GTask, bind=True, autoretry_for=(ConnectionError,), default_retry_delay=0)
async def async_flaky(self: Any, key: str, failures: int) -> int:
    """Like ``flaky`` but native: autoretry applies to the replayed exception."""
    tries = int(await gmp.syscall(_redis.incr, f"{PREFIX}tries:{key}"))
    if tries <= failures:
        raise ConnectionError(f"try {tries}")
    return tries


@app.task
def die_once(key: str) -> str:
    """The first delivery's G dies (SystemExit escapes the tracer); the next one succeeds."""
    if int(_redis.incr(f"{PREFIX}tries:{key}")) == 1:
        raise SystemExit("this G dies")
    return "second life"
