"""A steady order and read load at fixed rates, recorded for the verifier.

The fault suite needs a load that keeps going through a fault at a known rate and says
exactly when each request was sent and what came back, without locust's shapes, think
times or ramps. A pacer thread emits one job per tick; a few sender threads (each with
its own HTTP client) carry them out. Every order has a user and an Idempotency-Key of
its own, so an order can only be accepted twice if the stack duplicates it.

Orders are written as :class:`~loadtest.records.OrderRecord` lines and every request is
counted in :class:`~loadtest.records.RequestAggregator` buckets, the files
:func:`loadtest.records.load_run` reads back for :mod:`loadtest.verifier`.
"""

from __future__ import annotations

import queue
import random
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from loadtest.records import JsonLines, OrderRecord, RequestAggregator

REQUEST_TIMEOUT_S = 10.0
SENDERS = 16


@dataclass(frozen=True)
class LoadPlan:
    """Rates of the steady load, and the items it buys and reads."""

    orders_per_second: float
    reads_per_second: float
    item_ids: Sequence[int]


@dataclass(frozen=True)
class Outcome:
    """One request's result as the suite needs it: when, what, how it ended."""

    kind: str  # "order" or "read"
    sent: float  # epoch
    done: float  # epoch
    status: int  # 0: no answer


class SteadyLoad:
    """Orders and item reads at fixed rates against ``base_url`` until :meth:`stop`."""

    def __init__(self, base_url: str, plan: LoadPlan, record_dir: Path, node: str) -> None:
        self.base_url = base_url
        self.plan = plan
        self.phase = "before"  # set by the caller; written with every record
        self.outcomes: list[Outcome] = []
        self.skipped = 0  # jobs dropped because every sender was busy (the api hung)
        self._jobs: queue.Queue[str | None] = queue.Queue(maxsize=SENDERS * 4)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._orders = JsonLines(record_dir / f"orders-{node}.jsonl")
        self._requests = RequestAggregator(JsonLines(record_dir / f"requests-{node}.jsonl"))
        self._threads = [threading.Thread(target=self._pace, name="load-pacer", daemon=True)]
        self._threads += [
            threading.Thread(target=self._send, name=f"load-sender-{n}", daemon=True)
            for n in range(SENDERS)
        ]
        self._rng = random.Random()

    def start(self) -> None:
        """Start the pacer and the senders."""
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Stop pacing, let the senders finish what they hold, flush the records."""
        self._stop.set()
        for _ in range(SENDERS):
            self._jobs.put(None)
        for thread in self._threads:
            thread.join(timeout=REQUEST_TIMEOUT_S + 5)
        with self._lock:
            self._requests.flush(None)
            self._orders.flush()
            self._orders.close()
            self._requests.out.close()

    def _pace(self) -> None:
        """Emit jobs on a fixed schedule (open model: a slow api does not slow the load)."""
        kinds = [("order", self.plan.orders_per_second), ("read", self.plan.reads_per_second)]
        due = {kind: time.monotonic() for kind, rate in kinds if rate > 0}
        rates = dict(kinds)
        while not self._stop.is_set():
            kind, at = min(due.items(), key=lambda entry: entry[1])
            wait = at - time.monotonic()
            if wait > 0 and self._stop.wait(wait):
                return
            due[kind] = at + 1.0 / rates[kind]
            try:
                self._jobs.put_nowait(kind)
            except queue.Full:
                with self._lock:
                    self.skipped += 1

    def _send(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=REQUEST_TIMEOUT_S) as client:
            while (kind := self._jobs.get()) is not None:
                if kind == "order":
                    self._order(client)
                else:
                    self._read(client)

    def _order(self, client: httpx.Client) -> None:
        item_id = self._rng.choice(self.plan.item_ids)
        user_id = f"f-{uuid.uuid4().hex[:16]}"
        key = uuid.uuid4().hex
        sent = time.time()
        status, retry_after, order_id = 0, False, None
        try:
            response = client.post(
                "/orders",
                json={"item_id": item_id, "quantity": 1, "user_id": user_id},
                headers={"Idempotency-Key": key},
            )
            status = response.status_code
            retry_after = bool(response.headers.get("Retry-After"))
            if status == 202:
                order_id = str(response.json()["order_id"])
        except httpx.HTTPError:
            pass
        done = time.time()
        record = OrderRecord(
            t=sent,
            item_id=item_id,
            quantity=1,
            user_id=user_id,
            key=key,
            status=status,
            ms=(done - sent) * 1000,
            phase=self.phase,
            order_id=order_id,
            retry_after=retry_after,
        )
        self._record("order", record, retry_after)

    def _read(self, client: httpx.Client) -> None:
        sent = time.time()
        status, retry_after = 0, False
        try:
            response = client.get(f"/items/{self._rng.choice(self.plan.item_ids)}")
            status = response.status_code
            retry_after = bool(response.headers.get("Retry-After"))
        except httpx.HTTPError:
            pass
        self._record_request("read", sent, status, retry_after)

    def _record(self, kind: str, record: OrderRecord, retry_after: bool) -> None:
        with self._lock:
            self._orders.write(record.__dict__)
        self._record_request(kind, record.t, record.status, retry_after)

    def _record_request(self, kind: str, sent: float, status: int, retry_after: bool) -> None:
        done = time.time()
        failed = status == 0 or status >= 500
        with self._lock:
            self.outcomes.append(Outcome(kind, sent, done, status))
            self._requests.add(sent, self.phase, status, (done - sent) * 1000, failed, retry_after)
            self._requests.flush(done)
