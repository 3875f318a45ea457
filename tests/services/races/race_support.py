"""The race harness (imported by name, like ``apitest_support``): the api in-process
behind TCP fault proxies in front of the real Redis and RabbitMQ, a worker in-process (the
same functions the Celery tasks call, with a hook between claim and commit), the real
reconciler, and the invariants every race test ends on.

Invariants (:meth:`Race.check`), after :meth:`Race.settle` let the worker and the reconciler
finish everything in flight:

- every HTTP answer was true: a 202/200 order is persisted (row + Redis status), a 503
  that said "nothing was reserved" left no order behind for its key, an ``outcome_unknown``
  order is either persisted or does not exist;
- a retry with each Idempotency-Key creates nothing new;
- for every item, Redis stock == PostgreSQL stock - pending units (none pending by then);
- no accepted order was dead-lettered (nothing in the DLQ) unless a test expects it.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg
import pytest
from celery import Celery
from kombu import Connection

from services.api.dependencies import ApiContext
from services.api.routers import orders as orders_router
from services.messaging import durable_queue
from services.reconciler import Reconciler
from services.settings import Settings
from services.store import OrderStore, Status, parse_order
from services.worker.context import WorkerContext
from services.worker.orders import CommitOutcome, commit_orders, dead_letter_order
from services.worker.persistence import Order
from tests.netfault import FaultProxy
from tests.support import wait_until_async

ITEMS = {1: 10, 2: 10, 3: 10}
"""The catalog of every race test: item id -> stock."""
SETTLE_SECONDS = 30.0


@dataclass
class Answer:
    """One ``POST /orders`` as the client saw it."""

    item_id: int
    user_id: str
    quantity: int
    key: str | None
    status: int
    body: dict[str, Any]

    @property
    def code(self) -> str | None:
        """The error code of an error answer."""
        error = self.body.get("error")
        return error if isinstance(error, str) else None

    @property
    def order_id(self) -> str | None:
        """The order id the answer carried (202, 200, or 503 outcome_unknown)."""
        if "order_id" in self.body:
            return str(self.body["order_id"])
        detail = self.body.get("detail")
        return str(detail["order_id"]) if isinstance(detail, dict) else None


@dataclass
class Race:
    """Everything a race test drives and inspects."""

    api_settings: Settings
    settings: Settings
    ctx: ApiContext
    client: httpx.AsyncClient
    worker: WorkerContext
    celery: Celery
    store: OrderStore
    db: psycopg.Connection[Any]
    redis_proxy: FaultProxy
    broker_proxy: FaultProxy
    reconciler: Reconciler
    answers: list[Answer] = field(default_factory=list)

    async def order(
        self, item_id: int, user_id: str, quantity: int = 1, key: str | None = None
    ) -> Answer:
        """``POST /orders``, recorded for the invariants."""
        headers = {"Idempotency-Key": key} if key else {}
        response = await self.client.post(
            "/orders",
            json={"item_id": item_id, "user_id": user_id, "quantity": quantity},
            headers=headers,
        )
        answer = Answer(item_id, user_id, quantity, key, response.status_code, response.json())
        self.answers.append(answer)
        return answer

    async def heal_redis(self) -> None:
        """Heal the Redis proxy and wait until the api's Redis breaker closed again (a
        time-out opens it; its probe closes it)."""
        self.redis_proxy.heal()
        await wait_until_async(
            lambda: not self.ctx.health.circuit_open("redis"), 15, "the Redis breaker"
        )

    async def publisher_connected(self) -> None:
        """Wait until the api's publisher has its confirm channel (through the proxy)."""
        await wait_until_async(
            lambda: bool(getattr(self.ctx.publisher, "connected", True)), 15, "publisher"
        )

    # --- the broker, seen directly (not through the proxy) ----------------------------

    def take_messages(self) -> list[dict[str, Any]]:
        """Every ``persist_order`` message in the order queue (consumed)."""
        return [kwargs["order"] for kwargs in self._drain(self.settings.order_queue)]

    def dead_letters(self) -> list[dict[str, Any]]:
        """Every message in the dead-letter queue (consumed)."""
        return self._drain(self.settings.dead_letter_queue, celery_body=False)

    def queued(self) -> int:
        """Messages ready in the order queue."""
        with Connection(self.settings.broker_url) as conn:
            bound = durable_queue(self.settings.order_queue)(conn.default_channel)
            bound.declare()
            return int(bound.queue_declare(passive=True).message_count)

    def _drain(self, name: str, *, celery_body: bool = True) -> list[dict[str, Any]]:
        found = []
        with Connection(self.settings.broker_url) as conn:
            bound = durable_queue(name)(conn.default_channel)
            bound.declare()
            while (message := bound.get(no_ack=True)) is not None:
                body = json.loads(message.body)
                found.append(body[1] if celery_body else body)
        return found

    # --- the worker, in-process --------------------------------------------------------

    def commit(
        self,
        messages: Sequence[dict[str, Any]],
        before_commit: Callable[[Sequence[Order]], None] | None = None,
        worker: WorkerContext | None = None,
    ) -> CommitOutcome:
        """What the worker does with one batch: commit, then dead-letter the failures."""
        ctx = worker or self.worker
        outcome = commit_orders(
            ctx, [Order.from_message(m) for m in messages], before_commit=before_commit
        )
        for failed, reason in outcome.result.failed:
            dead_letter_order(ctx, self.celery, failed.to_message(), reason)
        return outcome

    def settle(self) -> None:
        """Let the worker and the reconciler finish everything in flight."""
        deadline = time.monotonic() + SETTLE_SECONDS
        while True:
            messages = self.take_messages()
            if messages:
                self.commit(messages)
            self.reconciler.run_once()
            if not messages and self.store.pending_count(list(ITEMS)) == 0 and not self.queued():
                return
            if time.monotonic() > deadline:
                pytest.fail(f"still pending after {SETTLE_SECONDS}s: {self.orders()}")

    # --- inspection ----------------------------------------------------------------------

    def orders(self) -> list[dict[str, Any]]:
        """Every order hash in Redis under the test's prefix."""
        pattern = f"{self.settings.redis_prefix}{{item:*}}:order:*"
        found = []
        for key in self.store.client.scan_iter(match=pattern):
            order = parse_order(self.store.client.hgetall(key))
            if order is not None:
                found.append(dict(order))
        return found

    def rows(self) -> dict[str, tuple[int, int]]:
        """order id -> (item id, quantity) of every persisted row."""
        return {
            str(order_id): (int(item_id), int(quantity))
            for order_id, item_id, quantity in self.db.execute(
                "SELECT order_id, item_id, quantity FROM orders"
            )
        }

    def stocks(self) -> dict[int, tuple[int | None, int]]:
        """item id -> (Redis stock, PostgreSQL stock)."""
        db_stock = dict(self.db.execute("SELECT id, stock FROM items").fetchall())
        ids = sorted(db_stock)
        in_redis = self.store.get_stocks(ids)
        return {i: (r, int(db_stock[i])) for i, r in zip(ids, in_redis, strict=True)}

    async def check(self, *, dead_letters: int = 0) -> None:
        """Settle, then assert every invariant of the module docstring."""
        await asyncio.to_thread(self.settle)
        rows = self.rows()
        orders = {o["order_id"]: o for o in self.orders()}
        # Redis stock == PostgreSQL stock - pending units (nothing pending after settling).
        assert self.store.pending_count(list(ITEMS)) == 0
        for item_id, (in_redis, in_db) in self.stocks().items():
            assert in_redis is None or in_redis == in_db, (item_id, in_redis, in_db)
        # Every persisted row belongs to one order per key, and Redis agrees.
        for order_id in rows:
            assert orders.get(order_id, {}).get("status") == Status.PERSISTED, order_id
        per_key = Counter(
            o.get("idempotency_key") for o in orders.values() if o["order_id"] in rows
        )
        assert all(n == 1 for key, n in per_key.items() if key), per_key
        for answer in self.answers:
            self._check_answer(answer, rows, orders)
        assert len(self.dead_letters()) == dead_letters
        await self._check_retries(rows)

    def _check_answer(
        self, answer: Answer, rows: dict[str, Any], orders: dict[str, dict[str, Any]]
    ) -> None:
        if answer.status in (200, 202):
            assert answer.order_id in rows, f"{answer} was told accepted, is not persisted"
        elif answer.code == "outcome_unknown":
            assert answer.order_id in rows or answer.order_id not in orders, answer
        elif answer.status == 503:
            # "Nothing was reserved": no order of this attempt survives (another attempt
            # with the same key may have made one: then it is that one, told 202/200).
            told = {a.order_id for a in self.answers if a.key == answer.key and a.status < 300}
            persisted_for_key = {
                o for o, order in orders.items() if order.get("idempotency_key") == answer.key
            } & set(rows)
            assert not answer.key or persisted_for_key <= told, (answer, persisted_for_key)

    async def _check_retries(self, rows: dict[str, Any]) -> None:
        """Each key once more: the same order back, never a new one."""
        before = len(rows)
        for answer in list(self.answers):
            if not answer.key or answer.order_id not in rows:
                continue
            again = await self.order(answer.item_id, answer.user_id, answer.quantity, answer.key)
            assert (again.status, again.order_id) == (200, answer.order_id), again
        assert len(self.rows()) == before


def cancel_waits_for(monkeypatch: pytest.MonkeyPatch, condition: Callable[[], bool]) -> None:
    """Make the api's cancel (after a failed publish) wait until ``condition()`` holds, so
    the test, not the machine's load, decides whether it comes after the worker's step."""
    real_cancel = orders_router._cancel

    async def cancel_when_told(ctx: Any, order: Any, reason: str) -> bool:
        await wait_until_async(condition, 15, "the test's go-ahead for the api's cancel")
        return await real_cancel(ctx, order, reason)

    monkeypatch.setattr(orders_router, "_cancel", cancel_when_told)


class Gate:
    """A point a thread stops at until the test opens it (the worker between claim and commit)."""

    def __init__(self) -> None:
        self.reached = threading.Event()
        self._open = threading.Event()

    def __call__(self, _: Any = None) -> None:
        self.reached.set()
        if not self._open.wait(30):
            raise TimeoutError("the test never opened the gate")

    def open(self) -> None:
        """Let the held thread go on."""
        self._open.set()


def seed(db: psycopg.Connection[Any]) -> None:
    """The race catalog in PostgreSQL (no Redis counters: they are created on first use)."""
    for item_id, stock in ITEMS.items():
        db.execute(
            "INSERT INTO items (id, name, price_cents, stock, initial_stock)"
            " VALUES (%s, %s, 100, %s, %s)",
            (item_id, f"item {item_id}", stock, stock),
        )
