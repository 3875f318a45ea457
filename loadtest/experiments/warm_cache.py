"""Experiment ``warmup``: the spike's first seconds on a cache warmed before the sale
(``POST /admin/warmup``) and on a cold one (every cached item dropped just before)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from loadtest.experiments.drive import Stream, per_second, percentile_ms, window
from loadtest.experiments.isolated import CATALOG_ITEMS, Stack, load_stack
from loadtest.experiments.model import Experiment, Metric, Outcome, Threshold, Variant, compared

NAME = "warmup"
TITLE = "Pre-warmed vs cold cache at the spike"
CLAIM = (
    "Warming the cache before the sale keeps the spike's arrival second fast and keeps"
    " its first seconds off the database."
)
CONNECTIONS = 64
"""Every shopper arrives in the same instant: the spike's worst case."""
THRESHOLDS = (
    Threshold(
        "the cold spike sends >= 10x the item queries",
        ("cold", "item_queries"),
        ("warm", "item_queries"),
        10.0,
    ),
    Threshold(
        "the cold arrival second's p99 is >= 1.2x the warm one's",
        ("cold", "p99_arrival_ms"),
        ("warm", "p99_arrival_ms"),
        1.2,
    ),
)
SERIES = "p99 of the reads started in each second (ms)"
METRICS = [
    Metric("p99_arrival_ms", "p99 in the arrival second", "ms"),
    Metric("p99_ms", "p99 over the spike", "ms"),
    Metric("rps", "reads/s over the spike", "req/s", lower_is_better=False),
    Metric(
        "item_queries",
        "item queries during the spike (pg_stat_user_tables)",
        "queries",
        may_be_zero=True,
    ),
    Metric("db_loads", "items loaded from PostgreSQL (app counter)", "items", may_be_zero=True),
    Metric(
        "single_flight_waits",
        "single-flight collapses (misses that waited)",
        "misses",
        may_be_zero=True,
    ),
]


def _warm(stack: Stack) -> None:
    stack.post("/admin/warmup")


VARIANTS: tuple[tuple[str, str, Callable[[Stack], None]], ...] = (
    ("warm", "warmed before the spike", _warm),
    ("cold", "cold: cache dropped before the spike", Stack.drop_cache),
)


def measure(
    key: str, label: str, prepare: Callable[[Stack], None], seconds: float, workdir: Path
) -> Variant:
    """One variant on a stack of its own: prepare the cache, then every connection at once."""
    run = load_stack(
        f"warmup_{key}", {}, [Stream("read", 0.0, seconds, CONNECTIONS)], workdir, prepare
    )
    reads = window(run.requests, "read")
    return Variant(
        key,
        label,
        figures={
            "p99_arrival_ms": percentile_ms(window(reads, "read", 0.0, 1.0), 0.99),
            "p99_ms": percentile_ms(reads, 0.99),
            "rps": len(reads) / seconds,
            "item_queries": float(run.database.item_scans),
            "db_loads": run.metrics.get("cache_db_loads_total", 0.0),
            "single_flight_waits": run.metrics.get("cache_single_flight_waits_total", 0.0),
            "reads": float(len(reads)),
            "errors": float(sum(r.status != 200 for r in reads)),
        },
        series=per_second(reads, seconds),
    )


def run(quick: bool, workdir: Path) -> Outcome:
    """Warm, then cold, each on a fresh stack under the same spike."""
    seconds = 4.0 if quick else 15.0
    variants = [measure(k, label, prep, seconds, workdir) for k, label, prep in VARIANTS]
    method = (
        f"{CONNECTIONS} connections open at the same instant and read GET /items/{{id}}"
        f" (Zipf over {CATALOG_ITEMS} items) for {seconds:g} s, on an isolated native"
        " stack per variant; just before, the warm variant calls POST /admin/warmup and"
        " the cold one deletes every cached item and clears the near caches. Queries"
        " are PostgreSQL's counters around the spike (the warm-up's own are before it)."
    )
    return compared(EXPERIMENT, method, METRICS, variants, THRESHOLDS, series_title=SERIES)


EXPERIMENT = Experiment(NAME, TITLE, CLAIM, run)
