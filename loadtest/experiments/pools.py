"""Experiment ``pools``: the same backlog of orders persisted by one worker process on the
batched gmpworker pool, on Celery's threads pool and on Celery's prefork pool, measured by
:mod:`services.worker.bench_persist` itself."""

from __future__ import annotations

import argparse
import uuid
from pathlib import Path

from rich.progress import Progress

from loadtest.experiments.model import (
    Experiment,
    Metric,
    Outcome,
    Threshold,
    Variant,
    compared,
    ratio_check,
)
from services.settings import get_settings
from services.worker.bench_persist import (
    ADMIN_URL,
    AMQP_HOST,
    SCRATCH_REDIS_URL,
    VARIANTS,
    clear_redis,
    run_variant,
    scratch_database,
    scratch_vhost,
)

NAME = "pools"
TITLE = "Worker pools persisting the same backlog"
CLAIM = (
    "The batched gmpworker pool persists a backlog faster than Celery's threads and prefork"
    " pools, with fewer threads and less memory."
)
FASTER = 1.5
THRESHOLDS = (
    Threshold(
        "the threads pool runs >= 2x batched gmpworker's threads",
        ("threads", "peak_threads"),
        ("batched", "peak_threads"),
        2.0,
    ),
    Threshold(
        "prefork's peak RSS is >= 2x batched gmpworker's",
        ("prefork", "peak_rss_mb"),
        ("batched", "peak_rss_mb"),
        2.0,
    ),
)
METRICS = [
    Metric("orders_per_s", "orders persisted/s", "orders/s", lower_is_better=False),
    Metric("p99_s", "p99 publish -> commit", "s"),
    Metric("transactions", "transactions", "commits"),
    Metric("peak_threads", "peak threads", "threads"),
    Metric("peak_rss_mb", "peak RSS", "MB"),
]
CHOSEN = {"batched": VARIANTS[0], "threads": VARIANTS[2], "prefork": VARIANTS[3]}


def run(quick: bool, workdir: Path) -> Outcome:
    """Each pool in turn on the same scratch database and vhost, the same backlog."""
    orders = 600 if quick else 10_000
    concurrency = 8 if quick else get_settings().worker_concurrency
    args = argparse.Namespace(orders=orders, items=100, concurrency=concurrency, timeout=600.0)
    prefix = f"experiments_pools_{uuid.uuid4().hex[:6]}:"
    variants = []
    with (
        scratch_database(ADMIN_URL, "experiments_pools") as database_url,
        scratch_vhost(AMQP_HOST, "experiments_pools") as broker_url,
    ):
        env = {
            "DATABASE_URL": database_url,
            "BROKER_URL": broker_url,
            "REDIS_URL": SCRATCH_REDIS_URL,
            "CACHE_REDIS_URL": SCRATCH_REDIS_URL,
            "REDIS_PREFIX": prefix,
            "ORDER_QUEUE": "orders",
        }
        try:
            for key, pool in CHOSEN.items():
                # bench_persist reports to a progress of its own; the runner's shows the step.
                result = run_variant(
                    pool, env, args, Progress(disable=True), workdir / f"{key}.log"
                )
                figures = {
                    "orders_per_s": result.orders_per_second,
                    "p99_s": result.p99_seconds,
                    "transactions": float(result.transactions),
                    "peak_threads": float(result.peak_threads),
                    "peak_rss_mb": result.peak_rss_mb,
                }
                variants.append(Variant(key, pool.label, figures))
        finally:
            clear_redis(SCRATCH_REDIS_URL, prefix)
    batched, threads, prefork = (v.figures for v in variants)
    fastest = ratio_check(
        f"batched gmpworker persists >= {FASTER:g}x the best other pool's orders/s",
        batched["orders_per_s"],
        max(threads["orders_per_s"], prefork["orders_per_s"]),
        at_least=FASTER,
    )
    method = (
        f"services.worker.bench_persist: {orders:,} one-unit orders published to a scratch"
        f" vhost before one `celery worker` starts with the pool, concurrency"
        f" {concurrency}, the same scratch database; orders/s from the rows' commit"
        " times, peak threads and RSS of the worker's process tree sampled every 50 ms."
    )
    return compared(EXPERIMENT, method, METRICS, variants, THRESHOLDS, [fastest])


EXPERIMENT = Experiment(NAME, TITLE, CLAIM, run)
