"""Flash-sale shoppers for locust, with the spike shape and the recording the verifier reads.

Run alone (``locust -f loadtest/locustfile.py --headless --host http://127.0.0.1:8000``) or
distributed (``--master`` / ``--worker``); ``python -m loadtest spike`` does it for you.

Environment (every process that runs users; the ``SPIKE_*`` ones matter on the master):

- ``LOADTEST_RECORD_DIR``: directory for the records (shared by all processes of a run);
  unset, nothing is recorded and the run cannot be verified.
- ``LOADTEST_ITEMS``: catalog ids, e.g. ``1-1000`` (default ``1-$DEMO_ITEMS``, i.e. 1-1000).
- ``LOADTEST_ZIPF_EXPONENT`` (1.1), ``LOADTEST_HOT_ITEMS`` (20: the spike buys among these),
  ``LOADTEST_THINK_MIN`` / ``LOADTEST_THINK_MAX`` (0.3 / 1.5 s between a shopper's actions).
- ``SPIKE_PRESET`` (default|full|smoke) and ``SPIKE_*`` sizes: see :mod:`loadtest.schedule`.

Behaviour: before midnight shoppers mostly browse (single items and batches, Zipf-popular),
a few percent ask for ids that do not exist (penetration traffic), and a few buy. When the
spike starts, half of every shopper's actions become orders on the hottest items, the
crowd multiplies, and accepted orders are polled until persisted. Sold out (409) and the
per-user limit (409/429) are expected answers, not errors.
"""

from __future__ import annotations

import itertools
import os
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any

# Locust imports this file by path and puts only its own folder on sys.path: make the
# repository root importable too, so ``locust -f loadtest/locustfile.py`` works anywhere.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gevent
from locust import FastHttpUser, between, events, task
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

from loadtest.popularity import Zipf, parse_ids
from loadtest.records import (
    RECORD_DIR_ENV,
    TIMELINE_FILE,
    JsonLines,
    OrderRecord,
    RequestAggregator,
    Tick,
    node_name,
)
from loadtest.shape import PHASE_MESSAGE, SpikeShape

__all__ = ["Shopper", "SpikeShape"]

ITEM_IDS = parse_ids(os.environ.get("LOADTEST_ITEMS") or f"1-{os.environ.get('DEMO_ITEMS', 1000)}")
POPULARITY = Zipf(ITEM_IDS, float(os.environ.get("LOADTEST_ZIPF_EXPONENT", "1.1")))
HOT_ITEMS = int(os.environ.get("LOADTEST_HOT_ITEMS", "20"))
THINK = (
    float(os.environ.get("LOADTEST_THINK_MIN", "0.3")),
    float(os.environ.get("LOADTEST_THINK_MAX", "1.5")),
)
# Ids far above the catalog, from a small pool: a penetration flood repeats ids, which is
# what the negative cache is for; a fresh pool per process would also be fine.
UNKNOWN_IDS = [max(ITEM_IDS) + 1_000_000 + n for n in range(200)]
ORDER_QUANTITIES = (1, 1, 1, 2, 2, 3)
MAX_POLLS = 8
POLL_SHARE = 0.35  # chance an action polls an awaited order instead of shopping

# Action weights per phase: browse, batch browse, unknown id, order.
MIX: dict[str, tuple[int, int, int, int]] = {
    "baseline": (76, 16, 3, 5),
    "spike": (38, 9, 3, 50),
    "recovery": (72, 16, 3, 9),
}
EXPECTED_ORDER_REFUSALS = {409, 429}  # sold out, per-user limit


class _RunState:
    """This process's view of the run: current phase and the record files."""

    phase = "baseline"
    record_dir = os.environ.get(RECORD_DIR_ENV)
    orders: JsonLines | None = None
    requests: RequestAggregator | None = None
    timeline: JsonLines | None = None
    timeline_writer: gevent.Greenlet | None = None


_user_ids = itertools.count(1)


class Shopper(FastHttpUser):
    """A shopper on the sale's site."""

    wait_time = between(*THINK)

    def on_start(self) -> None:
        """Give the shopper an identity and an empty list of orders to watch."""
        self.user_id = f"{node_name()}-{next(_user_ids)}"
        self.rng = random.Random()
        self.awaiting: dict[str, int] = {}  # order id -> polls so far

    @task
    def shop(self) -> None:
        """One action, chosen by the phase's mix (or a status poll while orders are awaited)."""
        if self.awaiting and self.rng.random() < POLL_SHARE:
            self.poll_order()
            return
        action = self.rng.choices(
            (self.view_item, self.view_batch, self.view_unknown, self.place_order),
            weights=MIX[_RunState.phase],
        )[0]
        action()

    def view_item(self) -> None:
        """A product page of a Zipf-popular item."""
        item_id = POPULARITY.pick(self.rng)
        self._get(f"/items/{item_id}", "/items/[id]", {200})

    def view_batch(self) -> None:
        """A listing: several Zipf-popular items at once."""
        ids = {POPULARITY.pick(self.rng) for _ in range(self.rng.randint(3, 10))}
        self._get(f"/items?ids={','.join(map(str, sorted(ids)))}", "/items?ids=[batch]", {200})

    def view_unknown(self) -> None:
        """Penetration traffic: an id that does not exist must be a fast 404."""
        self._get(f"/items/{self.rng.choice(UNKNOWN_IDS)}", "/items/[unknown]", {404})

    def place_order(self) -> None:
        """Buy a popular item (among the hottest during the spike) and record the outcome."""
        phase = _RunState.phase
        item_id = POPULARITY.pick(self.rng, HOT_ITEMS if phase == "spike" else None)
        quantity = self.rng.choice(ORDER_QUANTITIES)
        key = uuid.uuid4().hex
        sent = time.time()
        with self.client.post(
            "/orders",
            json={"item_id": item_id, "quantity": quantity, "user_id": self.user_id},
            headers={"Idempotency-Key": key},
            name="/orders",
            catch_response=True,
        ) as resp:
            status = resp.status_code or 0
            order_id = None
            if status == 202:
                order_id = str(resp.json()["order_id"])
                self.awaiting[order_id] = 0
                resp.success()
            elif status in EXPECTED_ORDER_REFUSALS:
                resp.success()
            else:
                resp.failure(f"order answered {status}")
                # An outcome_unknown 503 carries the order id: not a refusal, the order
                # may exist (the verifier traces it).
                order_id = _outcome_unknown(resp)
            if _RunState.orders is not None:
                record = OrderRecord(
                    t=sent,
                    item_id=item_id,
                    quantity=quantity,
                    user_id=self.user_id,
                    key=key,
                    status=status,
                    ms=(time.time() - sent) * 1000,
                    phase=phase,
                    order_id=order_id,
                    retry_after=_has_retry_after(resp),
                )
                _RunState.orders.write(record.__dict__)

    def poll_order(self) -> None:
        """Check an accepted order's status; stop watching once it is final or after a while."""
        order_id = self.rng.choice(list(self.awaiting))
        with self.client.get(
            f"/orders/{order_id}", name="/orders/[id]", catch_response=True
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"order status answered {resp.status_code}")
                return
            self.awaiting[order_id] += 1
            if resp.json().get("status") in ("persisted", "failed") or (
                self.awaiting[order_id] >= MAX_POLLS
            ):
                del self.awaiting[order_id]

    def _get(self, path: str, name: str, expected: set[int]) -> None:
        with self.client.get(path, name=name, catch_response=True) as resp:
            if resp.status_code in expected:
                resp.success()
            else:
                resp.failure(f"expected {sorted(expected)}, got {resp.status_code}")


def _outcome_unknown(response: Any) -> str | None:
    """The order id of a ``503 outcome_unknown`` (the reservation may exist), else None."""
    try:
        body = response.json()
    except ValueError:
        return None
    if not isinstance(body, dict) or body.get("error") != "outcome_unknown":
        return None
    detail = body.get("detail")
    if not isinstance(detail, dict):
        return None
    order_id = detail.get("order_id")
    return str(order_id) if order_id else None


def _has_retry_after(response: Any) -> bool:
    headers = getattr(response, "headers", None)
    return bool(headers and headers.get("Retry-After"))


# --- recording -------------------------------------------------------------------------------


def _on_phase(environment: Environment, msg: Any, **_: Any) -> None:
    _RunState.phase = msg.data


@events.init.add_listener  # type: ignore[untyped-decorator]  # locust: unannotated
def _on_init(environment: Environment, **_: Any) -> None:
    runner = environment.runner
    assert runner is not None, "locust fires init with a runner"
    if not isinstance(runner, MasterRunner):
        runner.register_message(PHASE_MESSAGE, _on_phase)
    if _RunState.record_dir is None:
        return
    record_dir = Path(_RunState.record_dir)
    node = node_name()
    if not isinstance(runner, MasterRunner):
        _RunState.orders = JsonLines(record_dir / f"orders-{node}.jsonl")
        _RunState.requests = RequestAggregator(JsonLines(record_dir / f"requests-{node}.jsonl"))
        gevent.spawn(_flush_every_second)
    if not isinstance(runner, WorkerRunner):
        _RunState.timeline = JsonLines(record_dir / TIMELINE_FILE)


def _flush_every_second() -> None:
    while True:
        gevent.sleep(1)
        _flush(final=False)


def _flush(final: bool) -> None:
    if _RunState.requests is not None:
        _RunState.requests.flush(None if final else time.time())
    if _RunState.orders is not None:
        _RunState.orders.flush()


@events.request.add_listener  # type: ignore[untyped-decorator]  # locust: unannotated
def _on_request(
    start_time: float,
    response_time: float,
    response: Any,
    exception: BaseException | None,
    **_: Any,
) -> None:
    if _RunState.requests is None:
        return
    status = getattr(response, "status_code", 0) or 0
    _RunState.requests.add(
        start_time,
        _RunState.phase,
        status,
        response_time,
        exception is not None,
        status == 503 and _has_retry_after(response),
    )


@events.test_start.add_listener  # type: ignore[untyped-decorator]  # locust: unannotated
def _on_test_start(environment: Environment, **_: Any) -> None:
    if _RunState.timeline is not None and isinstance(environment.shape_class, SpikeShape):
        _RunState.timeline_writer = gevent.spawn(
            _write_timeline, environment, environment.shape_class
        )


def _tick(environment: Environment, shape: SpikeShape, phase: str) -> Tick:
    runner = environment.runner
    assert runner is not None
    stats = runner.stats.total
    now = time.time()
    return Tick(
        t=now,
        elapsed=round(shape.get_run_time(), 3),  # type: ignore[no-untyped-call]  # locust
        phase=phase,
        phase_start=shape.phase_started_at if phase == shape.phase else now,
        target_users=shape.target_users if phase != "stopped" else 0,
        users=runner.user_count,
        rps=round(stats.current_rps, 2),
        fail_ratio=round(stats.fail_ratio, 5),
        p95_ms=stats.get_current_response_time_percentile(0.95),
    )


def _write_timeline(environment: Environment, shape: SpikeShape) -> None:
    assert _RunState.timeline is not None
    while True:
        if shape.phase is not None:
            _RunState.timeline.write(_tick(environment, shape, shape.phase).__dict__)
            _RunState.timeline.flush()
        gevent.sleep(1)


@events.test_stop.add_listener  # type: ignore[untyped-decorator]  # locust: unannotated
def _on_test_stop(environment: Environment, **_: Any) -> None:
    if _RunState.timeline_writer is not None:
        _RunState.timeline_writer.kill()
        _RunState.timeline_writer = None
    if _RunState.timeline is not None and isinstance(environment.shape_class, SpikeShape):
        _RunState.timeline.write(_tick(environment, environment.shape_class, "stopped").__dict__)
        _RunState.timeline.flush()
    _flush(final=True)


@events.quitting.add_listener  # type: ignore[untyped-decorator]  # locust: unannotated
def _on_quitting(environment: Environment, **_: Any) -> None:
    _flush(final=True)
