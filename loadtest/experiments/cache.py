"""Experiment ``cache``: the same read load with the item cache on, and off
(``EXPERIMENT_CACHE_BYPASS``: every read queries PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

from loadtest.experiments.drive import Stream, per_second, percentile_ms, window
from loadtest.experiments.isolated import CATALOG_ITEMS, load_stack
from loadtest.experiments.model import Metric, Outcome, Variant, judge, ratio_check

NAME = "cache"
TITLE = "Cache in front of the database"
CLAIM = (
    "The cache in front of PostgreSQL serves reads without querying the database,"
    " so the api serves more reads per second at a lower p99."
)
CONNECTIONS = 16
WARMUP_S = 1.0
"""Left out of the latency figures: connections opening, first near-cache fills."""
FEWER_QUERIES = 20.0
MORE_THROUGHPUT = 1.2
LOWER_P99 = 1.0
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
VARIANTS = (
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
    on, off = (v.figures for v in variants)
    checks = [
        ratio_check(
            f"cache off sends >= {FEWER_QUERIES:g}x the item queries per read",
            off["item_queries_per_read"],
            on["item_queries_per_read"],
            at_least=FEWER_QUERIES,
        ),
        ratio_check(
            f"cache on serves >= {MORE_THROUGHPUT:g}x the reads/s",
            on["rps"],
            off["rps"],
            at_least=MORE_THROUGHPUT,
        ),
        ratio_check(
            f"cache off's p99 is >= {LOWER_P99:g}x cache on's",
            off["p99_ms"],
            on["p99_ms"],
            at_least=LOWER_P99,
        ),
    ]
    return Outcome(
        name=NAME,
        title=TITLE,
        claim=CLAIM,
        method=(
            f"{CONNECTIONS} keep-alive connections send GET /items/{{id}} (Zipf over"
            f" {CATALOG_ITEMS} items) for {WARMUP_S:g} + {seconds:g} s to an isolated native"
            " stack (2 api processes), once per variant; latency and req/s over the last"
            f" {seconds:g} s. Database queries are PostgreSQL's own counters (seq + index"
            " scans of items; commits) around the load, divided by every read sent. An index"
            " scan for `id = ANY(...)` counts once per id, so a batched load of n items counts n."
        ),
        metrics=METRICS,
        variants=variants,
        verdict=judge(checks),
        checks=checks,
        series_title="p99 of the reads started in each second (ms)",
    )
