"""Experiment ``cache``: the same read load with the item cache on, and off
(``EXPERIMENT_CACHE_BYPASS``: every read queries PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

from loadtest.experiments.drive import Stream, per_second, percentile_ms, window
from loadtest.experiments.isolated import CATALOG_ITEMS, load_stack
from loadtest.experiments.model import Experiment, Metric, Outcome, Threshold, Variant, compared

NAME = "cache"
TITLE = "Cache in front of the database"
CLAIM = (
    "The cache in front of PostgreSQL serves reads without querying the database,"
    " so the api serves more reads per second at a lower p99."
)
CONNECTIONS = 16
WARMUP_S = 1.0
"""Left out of the latency figures: connections opening, first near-cache fills."""
THRESHOLDS = (
    Threshold(
        "cache off sends >= 20x the item queries per read",
        ("cache_off", "item_queries_per_read"),
        ("cache_on", "item_queries_per_read"),
        20.0,
    ),
    Threshold(
        "cache on serves >= 1.2x the reads/s", ("cache_on", "rps"), ("cache_off", "rps"), 1.2
    ),
    Threshold(
        "cache off's p99 is >= 1x cache on's", ("cache_off", "p99_ms"), ("cache_on", "p99_ms"), 1.0
    ),
)
SERIES = "p99 of the reads started in each second (ms)"
METRICS = [
    Metric("rps", "reads/s", "req/s", lower_is_better=False),
    Metric("p50_ms", "p50", "ms"),
    Metric("p99_ms", "p99", "ms"),
    Metric(
        "item_queries_per_read",
        "item queries per read (pg_stat_user_tables)",
        "queries",
        may_be_zero=True,
    ),
    Metric("commits_per_read", "commits per read (pg_stat_database)", "commits", may_be_zero=True),
]
VARIANTS: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("cache_on", "cache on (near cache + Redis)", {}),
    ("cache_off", "cache off: reads PostgreSQL directly", {"EXPERIMENT_CACHE_BYPASS": "1"}),
)


def measure(
    key: str, label: str, settings: dict[str, str], seconds: float, workdir: Path
) -> Variant:
    """One variant on a stack of its own: the read load, PostgreSQL's counters around it."""
    total = WARMUP_S + seconds
    run = load_stack(f"cache_{key}", settings, [Stream("read", 0.0, total, CONNECTIONS)], workdir)
    reads = window(run.requests, "read")
    measured = window(reads, "read", WARMUP_S)
    # PostgreSQL counted the warm-up's reads too: divide by every read sent.
    return Variant(
        key,
        label,
        figures={
            "rps": len(measured) / seconds,
            "p50_ms": percentile_ms(measured, 0.50),
            "p99_ms": percentile_ms(measured, 0.99),
            "item_queries_per_read": run.database.item_scans / max(len(reads), 1),
            "commits_per_read": run.database.commits / max(len(reads), 1),
            "reads": float(len(reads)),
            "errors": float(sum(r.status != 200 for r in reads)),
        },
        series=per_second(reads, total),
    )


def run(quick: bool, workdir: Path) -> Outcome:
    """Both variants, one after the other, under the same load."""
    seconds = 4.0 if quick else 20.0
    variants = [measure(k, label, s, seconds, workdir) for k, label, s in VARIANTS]
    method = (
        f"{CONNECTIONS} keep-alive connections send GET /items/{{id}} (Zipf over"
        f" {CATALOG_ITEMS} items) for {WARMUP_S:g} + {seconds:g} s to an isolated native"
        " stack (2 api processes), once per variant; latency and req/s over the last"
        f" {seconds:g} s. Database queries are PostgreSQL's own counters (seq + index"
        " scans of items; commits) around the load, divided by every read sent. An index"
        " scan for `id = ANY(...)` counts once per id, so a batched load of n items counts n."
    )
    return compared(EXPERIMENT, method, METRICS, variants, THRESHOLDS, series_title=SERIES)


EXPERIMENT = Experiment(NAME, TITLE, CLAIM, run)
