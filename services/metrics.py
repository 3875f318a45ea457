"""Every Prometheus metric the services export, named by Prometheus conventions.

One module so the Grafana dashboards, the built-in dashboard and the tests can be
checked against a single list. Processes that run several workers (uvicorn
``--workers``) set ``PROMETHEUS_MULTIPROC_DIR`` and expose :func:`render_latest`,
which aggregates every process's files.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500)

# --- api -------------------------------------------------------------------------------------
HTTP_REQUESTS = Counter(
    "http_requests_total", "HTTP requests served by the api.", ["method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "http_request_duration_seconds",
    "Time to serve an HTTP request.",
    ["method", "route"],
    buckets=LATENCY_BUCKETS,
)
CACHE_LOOKUPS = Counter(
    "cache_lookups_total",
    "Item cache lookups by result: near_hit, hit, negative_hit, miss.",
    ["result"],
)
CACHE_SINGLE_FLIGHT_WAITS = Counter(
    "cache_single_flight_waits_total",
    "Cache misses that waited for another loader of the same key instead of loading.",
)
CACHE_DB_LOADS = Counter("cache_db_loads_total", "Items loaded from PostgreSQL on a cache miss.")
ORDERS = Counter(
    "orders_total",
    "Order requests by outcome: accepted, duplicate, sold_out, limit_exceeded, rejected, failed.",
    ["outcome"],
)
ORDER_PUBLISH_LATENCY = Histogram(
    "order_publish_duration_seconds",
    "Time to publish an accepted order and get the broker's confirm.",
    buckets=LATENCY_BUCKETS,
)
ADMISSION_REJECTED = Counter(
    "api_admission_rejected_total",
    "Requests answered 503 overloaded at once: their gate had its limit in flight.",
    ["gate"],
)
ORDERS_SOLD_OUT_FROM_MEMORY = Counter(
    "orders_sold_out_from_memory_total",
    "Orders answered 409 sold_out from the in-process sold-out flag, without Redis.",
)
API_DEGRADED = Gauge(
    "api_degraded",
    "1 while a dependency (Redis, broker, database) is unreachable.",
    ["dependency"],
    multiprocess_mode="max",
)
ADMISSION_GATES = ("orders", "reads")
"""The api's admission gates (``services.api.admission``), exported at 0 from the start."""
for _gate in ADMISSION_GATES:
    ADMISSION_REJECTED.labels(_gate)
CIRCUIT_BREAKER_OPEN = Gauge(
    "circuit_breaker_open",
    "1 while a dependency's circuit breaker is open (requests fail fast), 0 when closed.",
    ["dependency"],
    multiprocess_mode="max",
)
CIRCUIT_BREAKER_TRIPS = Counter(
    "circuit_breaker_trips_total",
    "Times a dependency's circuit breaker opened.",
    ["dependency"],
)

# --- worker ----------------------------------------------------------------------------------
WORKER_TASKS = Counter(
    "worker_tasks_total", "Tasks finished by the worker, by outcome.", ["task", "outcome"]
)
ORDERS_PERSISTED = Counter("orders_persisted_total", "Orders committed to PostgreSQL.")
ORDERS_DEAD_LETTERED = Counter(
    "orders_dead_lettered_total",
    "Orders that failed permanently and went to the dead-letter queue.",
)
BATCH_SIZE = Histogram(
    "worker_batch_size", "Orders committed per database transaction.", buckets=BATCH_BUCKETS
)
BATCH_COMMIT_LATENCY = Histogram(
    "worker_batch_commit_duration_seconds",
    "Time to commit one batch of orders.",
    buckets=LATENCY_BUCKETS,
)
ACCEPT_TO_PERSIST = Histogram(
    "order_accept_to_persist_seconds",
    "Time from the api accepting an order to its row being committed.",
    buckets=LAG_BUCKETS,
)

# --- reconciler ------------------------------------------------------------------------------
QUEUE_MESSAGES = Gauge(
    "broker_queue_messages",
    "Messages ready in a broker queue.",
    ["queue"],
    multiprocess_mode="max",
)
ORDERS_REPUBLISHED = Counter(
    "reconciler_orders_republished_total",
    "Accepted orders found missing from the database after the grace period and published again.",
)
STOCK_MISMATCHES = Gauge(
    "reconciler_stock_mismatch_items",
    "Items whose Redis stock differs from the database after pending orders are counted.",
    multiprocess_mode="max",
)
STOCK_REPAIRS = Counter(
    "reconciler_stock_repairs_total",
    "Stock counters corrected by the reconciler (drift confirmed by two measurements).",
)
PENDING_ORDERS = Gauge(
    "orders_pending",
    "Orders accepted in Redis and not yet persisted.",
    multiprocess_mode="max",
)

STOCK_REMAINING = Gauge(
    "stock_remaining_units",
    "Units left in the Redis stock counters, summed over every item.",
    multiprocess_mode="max",
)

# --- every container -------------------------------------------------------------------------
SWAP_FORBIDDEN = Gauge(
    "container_swap_forbidden",
    "1 when the process's cgroup forbids swap, 0 when swap is allowed, -1 when unknown.",
    multiprocess_mode="max",
)


def render_latest() -> tuple[bytes, str]:
    """The exposition text and its content type, merged across processes when configured."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # prometheus_client: unannotated
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
