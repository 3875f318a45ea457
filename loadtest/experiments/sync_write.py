"""Experiment ``queue``: order acceptance with the queue (reserve in Redis, publish, 202)
against ``EXPERIMENT_SYNC_WRITE`` (the order is committed to PostgreSQL inside the
request), with readers running beside the orders all along."""

from __future__ import annotations

from pathlib import Path

from loadtest.experiments.drive import Request, Stream, per_second, percentile_ms, window
from loadtest.experiments.isolated import load_stack
from loadtest.experiments.model import Experiment, Metric, Outcome, Threshold, Variant, compared

NAME = "queue"
TITLE = "Queue vs synchronous write"
CLAIM = (
    "Queueing the write lets the api accept more orders per second at the spike, at a"
    " lower p99, and keeps reads fast while the writes pile up."
)
READERS = 8
BASELINE_ORDERS = 2
SPIKE_ORDERS = 48
BASELINE_S = 2.0
THRESHOLDS = (
    Threshold(
        "the queue accepts >= 1.2x the orders/s",
        ("queue", "accepted_per_s"),
        ("sync", "accepted_per_s"),
        1.2,
    ),
    Threshold(
        "the synchronous write's order p99 is >= 1.2x the queue's",
        ("sync", "order_p99_ms"),
        ("queue", "order_p99_ms"),
        1.2,
    ),
    Threshold(
        "reads' p99 during the spike is >= 1.2x higher with the synchronous write",
        ("sync", "read_p99_ms"),
        ("queue", "read_p99_ms"),
        1.2,
    ),
)
SERIES = "p99 of the orders started in each second (ms)"
METRICS = [
    Metric("accepted_per_s", "orders accepted/s at the spike", "orders/s", lower_is_better=False),
    Metric("order_p99_ms", "order p99 at the spike", "ms"),
    Metric("order_p50_ms", "order p50 at the spike", "ms"),
    Metric("read_p99_ms", "read p99 during the spike", "ms"),
    Metric("read_rps", "reads/s during the spike", "req/s", lower_is_better=False),
    Metric("commits", "PostgreSQL commits during the load", "commits", may_be_zero=True),
    Metric(
        "pending_after_load",
        "orders accepted, not yet persisted, when the load stopped",
        "orders",
        may_be_zero=True,
    ),
]
VARIANTS: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("queue", "queue: reserve, publish, 202", {}),
    ("sync", "synchronous write in the request", {"EXPERIMENT_SYNC_WRITE": "1"}),
)


def _accepted(orders: list[Request]) -> int:
    return sum(r.status == 202 for r in orders)


def measure(
    key: str, label: str, settings: dict[str, str], seconds: float, workdir: Path
) -> Variant:
    """One variant on a stack of its own: readers all along, orders jumping at the spike."""
    total = BASELINE_S + seconds
    plan = [
        Stream("read", 0.0, total, READERS),
        Stream("order", 0.0, BASELINE_S, BASELINE_ORDERS),
        Stream("order", BASELINE_S, total, SPIKE_ORDERS),
    ]
    run = load_stack(f"queue_{key}", settings, plan, workdir)
    orders = window(run.requests, "order", BASELINE_S)
    reads = window(run.requests, "read", BASELINE_S)
    every_order = window(run.requests, "order")
    return Variant(
        key,
        label,
        figures={
            "accepted_per_s": _accepted(orders) / seconds,
            "order_p99_ms": percentile_ms(orders, 0.99),
            "order_p50_ms": percentile_ms(orders, 0.50),
            "read_p99_ms": percentile_ms(reads, 0.99),
            "read_rps": len(reads) / seconds,
            "commits": float(run.database.commits),
            "pending_after_load": float(run.pending_after),
            "orders_accepted": float(_accepted(every_order)),
            "orders_refused": float(len(every_order) - _accepted(every_order)),
        },
        series=per_second(window(run.requests, "order"), total),
    )


def run(quick: bool, workdir: Path) -> Outcome:
    """The queue, then the synchronous write, each on a fresh stack under the same load."""
    seconds = 4.0 if quick else 15.0
    variants = [measure(k, label, s, seconds, workdir) for k, label, s in VARIANTS]
    method = (
        f"{READERS} connections read GET /items/{{id}} throughout; orders (POST /orders,"
        f" a new user each, Zipf-popular items) come from {BASELINE_ORDERS} connections"
        f" for {BASELINE_S:g} s, then from {SPIKE_ORDERS} for {seconds:g} s (the spike),"
        " on an isolated native stack per variant (2 api processes, one gmpworker"
        " worker). The synchronous variant commits each order with the worker's own"
        " persist_orders() in a thread of the api before answering."
    )
    return compared(EXPERIMENT, method, METRICS, variants, THRESHOLDS, series_title=SERIES)


EXPERIMENT = Experiment(NAME, TITLE, CLAIM, run)
