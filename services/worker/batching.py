"""Batched order persistence on gmpworker Gs: many ``persist_order`` tasks, one transaction.

Under the gmpworker pool (``gmpworker.celery.GMPPool``) each ``persist_order`` task's
native body hands its order to one batcher G over a :class:`gmpworker.Chan` and parks
on a reply channel of its own. The batcher collects orders until the batch is full
(``Settings.batch_size``) or ``Settings.batch_deadline_ms`` passed since the batch's
first order (``select`` on the channel and a timer), commits the batch in ONE
transaction (``await syscall(commit_orders, ...)``: ``persist_orders`` plus the
"persisted" marks in Redis), and only then answers every waiting task. A task returns,
and Celery acknowledges its message (``acks_late``), only after that: an order is
never acknowledged before its row is committed.

A batch that fails (any exception) answers each of its tasks "not settled": each
task then runs the ordinary single-order body in syscall mode (``DeferToSync``), which
persists it alone, so the bad order is isolated and the others commit; a transient error
is retried by ``autoretry_for``, a permanent one is dead-lettered. The same happens
to an order the batch left out (unknown item, oversell guard) and to a malformed
message. Nothing is acknowledged without being persisted or dead-lettered.

Other pools (threads, prefork) never see the batcher: ``persist_order``'s plain ``run``
persists each order in its own transaction. ``WORKER_BATCHING=0`` does the same on the
gmpworker pool (for comparison; see ``services.worker.bench_persist``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Coroutine, Sequence
from functools import lru_cache
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

import gmpworker as gmp
from gmpworker.celery import DeferToSync, GTask, runtime_started, runtime_stopping
from services.settings import get_settings
from services.worker.context import get_context
from services.worker.orders import CommitOutcome, commit_orders
from services.worker.persistence import InvalidOrderError, Order

log = logging.getLogger(__name__)

SETTLED = ("persisted", "duplicate", "cancelled")
"""Outcomes a batch can give an order; anything else is retried on its own."""

_Request = tuple[Order, "gmp.Chan[str | None]"]


class BatchingOptions(BaseSettings):
    """``WORKER_BATCHING``: batch orders on the gmpworker pool (default on)."""

    model_config = SettingsConfigDict(env_prefix="WORKER_", env_file=".env", extra="ignore")

    batching: bool = Field(True, description="batch persist_order commits on the gmpworker pool")


@lru_cache(maxsize=1)
def get_batching_options() -> BatchingOptions:
    """The process-wide batching options, read once."""
    return BatchingOptions()


def _commit_batch(orders: Sequence[Order]) -> CommitOutcome:
    """The blocking part: one transaction for ``orders``, then their Redis marks."""
    return commit_orders(get_context(), orders)


def settled_outcomes(outcome: CommitOutcome) -> dict[str, list[str]]:
    """Outcomes per order id, for the orders a batch settled (failed ones are left out).

    An id may come twice in one batch (a redelivery next to its original): its first
    occurrence is the one inserted, the next ones are duplicates, so the list is in
    occurrence order.
    """
    result = outcome.result
    settled: dict[str, list[str]] = {}
    for orders, name in (
        (result.inserted, "persisted"),
        (result.duplicates, "duplicate"),
        (outcome.cancelled, "cancelled"),
    ):
        for order in orders:
            settled.setdefault(order.order_id, []).append(name)
    return settled


class OrderBatcher:
    """One G that turns a stream of orders into batched commits; see the module docstring."""

    def __init__(
        self,
        size: int,
        deadline_seconds: float,
        commit: Callable[[Sequence[Order]], CommitOutcome] = _commit_batch,
    ) -> None:
        if size < 1 or deadline_seconds <= 0:
            raise ValueError(f"batch size {size} and deadline {deadline_seconds}s must be > 0")
        self.size = size
        self.deadline = deadline_seconds
        self._commit = commit
        self._orders: gmp.Chan[_Request] = gmp.Chan()

    async def submit(self, order: Order) -> str | None:
        """Inside a G: wait until ``order``'s batch committed; its outcome, or None.

        None means the batch did not settle this order (the batch failed, the order was
        left out, or the batcher is closed): the caller must persist it on its own.
        """
        reply: gmp.Chan[str | None] = gmp.Chan(1)
        try:
            await self._orders.send((order, reply))
        except gmp.ChanClosedError:
            return None
        return await reply.recv()

    def close(self) -> None:
        """Stop taking orders; the batcher G ends once its current batch is answered."""
        with contextlib.suppress(gmp.ChanClosedError):
            self._orders.close()

    async def run(self) -> None:
        """The batcher G: collect, commit, answer; until :meth:`close`."""
        while True:
            first = await self._orders.recv()
            if first is None:
                return
            await self._flush(await self._collect(first))

    async def _collect(self, first: _Request) -> list[_Request]:
        """``first`` plus what arrives until the batch is full or the deadline passes."""
        batch = [first]
        timer = gmp.Timer(self.deadline)
        try:
            while len(batch) < self.size:
                index, request, ok = await gmp.select(
                    gmp.recv_case(self._orders), gmp.recv_case(timer.c)
                )
                if index == 1 or not ok:  # deadline, or closed: commit what we have
                    break
                batch.append(request)
        finally:
            timer.stop()
        return batch

    async def _flush(self, batch: list[_Request]) -> None:
        """Commit ``batch`` in one transaction, then answer every waiting task."""
        orders = [order for order, _ in batch]
        try:
            outcome = await gmp.syscall(self._commit, orders, block=True)
            settled = settled_outcomes(outcome)
        except Exception:
            log.exception("batch of %d orders failed; each is retried on its own", len(batch))
            settled = {}
        for order, reply in batch:
            outcomes = settled.get(order.order_id)
            reply.try_send(outcomes.pop(0) if outcomes else None)


_lock = threading.Lock()
_batcher: OrderBatcher | None = None


def current_batcher() -> OrderBatcher | None:
    """The running batcher of this process (None outside the gmpworker pool)."""
    return _batcher


@runtime_started.connect
def start_batcher(sender: Any = None, runtime: Any = None, **_: Any) -> None:
    """Start the batcher G on the pool's Runtime (when batching is on)."""
    global _batcher
    if runtime is None or not get_batching_options().batching:
        return
    settings = get_settings()
    batcher = OrderBatcher(settings.batch_size, settings.batch_deadline_ms / 1000)
    with _lock:
        _batcher = batcher
    runtime.submit(batcher.run)
    log.info(
        "order batching on: up to %d orders or %.0f ms per transaction",
        settings.batch_size,
        settings.batch_deadline_ms,
    )


@runtime_stopping.connect
def stop_batcher(sender: Any = None, runtime: Any = None, **_: Any) -> None:
    """Close the batcher so the Runtime can drain (the pool's tasks have all ended)."""
    global _batcher
    with _lock:
        batcher, _batcher = _batcher, None
    if batcher is not None:
        batcher.close()


class BatchedOrderTask(GTask):
    """Base of ``persist_order``: its native body goes through the batcher.

    Without a batcher (other pools, ``WORKER_BATCHING=0``) the pool runs the task's
    ordinary ``run``; with one, :meth:`persist_batched` runs as a G and falls back to
    ``run`` (``DeferToSync``) for every order the batch did not settle.
    """

    def native_body(self) -> Callable[..., Coroutine[Any, Any, Any]] | None:
        """The batched body while a batcher runs, else None (plain ``run``)."""
        return self.persist_batched if _batcher is not None else None

    async def persist_batched(self, order: dict[str, Any]) -> str:
        """Hand the order to the batcher and return its outcome once committed."""
        batcher = _batcher
        if batcher is None:
            raise DeferToSync("no batcher")
        try:
            parsed = Order.from_message(order)
        except InvalidOrderError as exc:
            raise DeferToSync("malformed: the single-order body dead-letters it") from exc
        outcome = await batcher.submit(parsed)
        if outcome is None:
            raise DeferToSync(f"order {parsed.order_id} not settled by its batch")
        return outcome
