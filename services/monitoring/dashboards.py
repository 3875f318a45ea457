"""Source of the Grafana dashboards in ``grafana/dashboards/``.

Regenerate them with ``python -m services.monitoring.dashboards``.

The JSON files are what Grafana provisions and what the tests read; this module writes
them so that every panel shares one look (dark, gradient fills, shared crosshair) and
one datasource uid, and so that a panel is one line of PromQL plus a title, not
eighty lines of hand-edited JSON. ``tests/monitoring`` checks the files match it.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DATASOURCE_UID = "flashsale-prometheus"
DATASOURCE = {"type": "prometheus", "uid": DATASOURCE_UID}
RATE = "$__rate_interval"
DASHBOARD_DIR = Path(__file__).parent / "grafana" / "dashboards"
GRID_WIDTH = 24

Json = dict[str, Any]


@dataclass(frozen=True)
class Query:
    """One PromQL target of a panel."""

    expr: str
    legend: str = ""
    instant: bool = False


def _thresholds(*steps: tuple[float | None, str]) -> Json:
    """Absolute thresholds: ``(None, base colour), (value, colour)...``."""
    return {"mode": "absolute", "steps": [{"value": v, "color": c} for v, c in steps]}


GOOD = _thresholds((None, "green"))
HIGH_IS_BAD = _thresholds((None, "green"), (1000, "orange"), (10000, "red"))


def _targets(queries: tuple[Query, ...], table: bool = False) -> list[Json]:
    """Grafana targets with refIds A, B, C..."""
    return [
        {
            "refId": chr(ord("A") + i),
            "datasource": DATASOURCE,
            "expr": q.expr,
            "legendFormat": q.legend or "__auto",
            "instant": q.instant,
            "range": not q.instant,
            **({"format": "table"} if table else {}),
        }
        for i, q in enumerate(queries)
    ]


def timeseries(
    title: str, *queries: Query, unit: str = "short", stack: bool = False, desc: str = ""
) -> Json:
    """A line chart with soft gradient fills; stacked when parts make a whole."""
    return {
        "type": "timeseries",
        "title": title,
        "description": desc,
        "datasource": DATASOURCE,
        "targets": _targets(queries),
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "min": 0,
                "color": {"mode": "palette-classic"},
                "custom": {
                    "drawStyle": "line",
                    "lineWidth": 2,
                    "lineInterpolation": "smooth",
                    "fillOpacity": 35 if stack else 12,
                    "gradientMode": "opacity",
                    "showPoints": "never",
                    "spanNulls": True,
                    "stacking": {"mode": "normal" if stack else "none", "group": "A"},
                },
            },
            "overrides": [],
        },
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    }


def stat(
    title: str,
    query: Query,
    unit: str = "short",
    thresholds: Json = GOOD,
    mappings: list[Json] | None = None,
    decimals: int | None = None,
) -> Json:
    """A big number with a sparkline, coloured by thresholds."""
    defaults: Json = {
        "unit": unit,
        "color": {"mode": "thresholds"},
        "thresholds": thresholds,
        "mappings": mappings or [],
    }
    if decimals is not None:
        defaults["decimals"] = decimals
    return {
        "type": "stat",
        "title": title,
        "datasource": DATASOURCE,
        "targets": _targets((query,)),
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "background",
            "graphMode": "area",
            "textMode": "auto",
            "justifyMode": "center",
            "orientation": "auto",
        },
    }


def bargauge(title: str, query: Query, unit: str = "short") -> Json:
    """Horizontal bars, one per series, gradient-coloured: a live histogram."""
    return {
        "type": "bargauge",
        "title": title,
        "datasource": DATASOURCE,
        "targets": _targets((query,)),
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "min": 0,
                "color": {"mode": "continuous-GrYlRd"},
                "thresholds": GOOD,
            },
            "overrides": [],
        },
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "displayMode": "gradient",
            "orientation": "horizontal",
            "showUnfilled": True,
        },
    }


def table(title: str, columns: dict[str, Query], desc: str = "") -> Json:
    """Instant queries joined on their labels, one named column per query."""
    targets = _targets(tuple(columns.values()), table=True)
    renames = {f"Value #{t['refId']}": name for t, name in zip(targets, columns, strict=True)}
    return {
        "type": "table",
        "title": title,
        "description": desc,
        "datasource": DATASOURCE,
        "targets": targets,
        "transformations": [
            {"id": "merge", "options": {}},
            {
                "id": "organize",
                "options": {"excludeByName": {"Time": True}, "renameByName": renames},
            },
        ],
        "fieldConfig": {
            "defaults": {"custom": {"align": "center"}, "color": {"mode": "thresholds"}},
            "overrides": [],
        },
        "options": {"showHeader": True, "cellHeight": "sm"},
    }


@dataclass
class Board:
    """Lays panels out left to right on Grafana's 24-column grid."""

    uid: str
    title: str
    description: str
    tags: list[str]
    panels: list[Json] = field(default_factory=list)
    _x: int = 0
    _y: int = 0
    _row_height: int = 0

    def _newline(self) -> None:
        self._y += self._row_height
        self._x = 0
        self._row_height = 0

    def row(self, title: str) -> None:
        """Start a titled row."""
        self._newline()
        self._add({"type": "row", "title": title, "collapsed": False, "panels": []}, 24, 1)

    def add(self, panel: Json, width: int, height: int = 8) -> None:
        """Place a panel, wrapping to a new line when it does not fit."""
        self._add(panel, width, height)

    def _add(self, panel: Json, width: int, height: int) -> None:
        if self._x + width > GRID_WIDTH:
            self._newline()
        panel["id"] = len(self.panels) + 1
        panel["gridPos"] = {"x": self._x, "y": self._y, "w": width, "h": height}
        self.panels.append(panel)
        self._x += width
        self._row_height = max(self._row_height, height)

    def to_json(self) -> Json:
        """The dashboard object Grafana's file provider loads (not wrapped)."""
        return {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": self.tags,
            "editable": True,
            "graphTooltip": 1,
            "refresh": "5s",
            "schemaVersion": 38,
            "version": 1,
            "style": "dark",
            "timezone": "browser",
            "time": {"from": "now-15m", "to": "now"},
            "timepicker": {"refresh_intervals": ["5s", "10s", "30s", "1m"]},
            "templating": {"list": []},
            "annotations": {"list": []},
            "links": [
                {
                    "type": "dashboards",
                    "tags": ["flash-sale"],
                    "asDropdown": False,
                    "title": "Flash sale",
                    "includeVars": False,
                    "keepTime": True,
                }
            ],
            "panels": self.panels,
        }


def _quantiles(metric: str, by: str = "", where: str = "") -> tuple[Query, ...]:
    """p50, p95 and p99 of a histogram over the rate window (``where``: label matchers)."""
    group = f"le{', ' + by if by else ''}"
    selector = f"{metric}_bucket{{{where}}}" if where else f"{metric}_bucket"
    return tuple(
        Query(
            f"histogram_quantile({q}, sum by ({group}) (rate({selector}[{RATE}])))",
            f"p{int(q * 100)}" + (f" {{{{{by}}}}}" if by else ""),
        )
        for q in (0.5, 0.95, 0.99)
    )


# The monitoring's own requests (Prometheus scraping, the built-in page polling) are not traffic.
TRAFFIC = 'route!~"/metrics|/dashboard.*|/healthz|/readyz"'
CACHE_HITS = f'sum(rate(cache_lookups_total{{result=~"hit|near_hit|negative_hit"}}[{RATE}]))'
CACHE_ALL = f"sum(rate(cache_lookups_total[{RATE}]))"
SWAP_MAPPING = [
    {
        "type": "value",
        "options": {
            "1": {"text": "no swap", "color": "green"},
            "0": {"text": "swap on", "color": "red"},
            "-1": {"text": "unknown", "color": "yellow"},
        },
    }
]


def overview() -> Board:
    """ "Flash sale overview": traffic, latency, cache, orders, queue, lag and stock."""
    b = Board(
        "flash-sale-overview",
        "Flash sale overview",
        "The spike end to end: api traffic and latency, cache, orders, broker queue, "
        "worker persistence lag and live stock.",
        ["flash-sale"],
    )
    b.row("At a glance")
    b.add(
        stat(
            "Requests / s", Query(f"sum(rate(http_requests_total{{{TRAFFIC}}}[{RATE}]))"), "reqps"
        ),
        4,
        5,
    )
    b.add(
        stat(
            "p99 latency",
            _quantiles("http_request_duration_seconds", where=TRAFFIC)[2],
            "s",
            _thresholds((None, "green"), (0.1, "orange"), (0.5, "red")),
        ),
        4,
        5,
    )
    b.add(
        stat(
            "Cache hit ratio",
            Query(f"{CACHE_HITS} / {CACHE_ALL}"),
            "percentunit",
            _thresholds((None, "red"), (0.8, "orange"), (0.95, "green")),
            decimals=1,
        ),
        4,
        5,
    )
    b.add(
        stat(
            "Orders accepted / s",
            Query(f'sum(rate(orders_total{{outcome="accepted"}}[{RATE}]))'),
            "reqps",
        ),
        4,
        5,
    )
    b.add(stat("Queue depth", Query("sum(broker_queue_messages)"), "short", HIGH_IS_BAD), 4, 5)
    b.add(
        stat(
            "Stock left",
            Query("max(stock_remaining_units)"),
            "short",
            _thresholds((None, "red"), (1, "blue")),
        ),
        4,
        5,
    )
    b.row("Traffic")
    b.add(
        timeseries(
            "Requests by route",
            Query(f"sum by (route) (rate(http_requests_total{{{TRAFFIC}}}[{RATE}]))", "{{route}}"),
            unit="reqps",
            stack=True,
        ),
        8,
    )
    b.add(
        timeseries(
            "Responses by status",
            Query(
                f"sum by (status) (rate(http_requests_total{{{TRAFFIC}}}[{RATE}]))", "{{status}}"
            ),
            unit="reqps",
            stack=True,
        ),
        8,
    )
    b.add(
        timeseries(
            "Latency percentiles",
            *_quantiles("http_request_duration_seconds", where=TRAFFIC),
            unit="s",
        ),
        8,
    )
    b.row("Cache")
    b.add(
        timeseries(
            "Cache hit ratio",
            Query(f"{CACHE_HITS} / {CACHE_ALL}", "hit ratio"),
            unit="percentunit",
        ),
        8,
    )
    b.add(
        timeseries(
            "Cache lookups by result",
            Query(f"sum by (result) (rate(cache_lookups_total[{RATE}]))", "{{result}}"),
            unit="ops",
            stack=True,
        ),
        8,
    )
    b.add(
        timeseries(
            "Misses: single-flight waits and DB loads",
            Query(f"sum(rate(cache_single_flight_waits_total[{RATE}]))", "single-flight waits"),
            Query(f"sum(rate(cache_db_loads_total[{RATE}]))", "loads from PostgreSQL"),
            unit="ops",
        ),
        8,
    )
    b.row("Orders")
    b.add(
        timeseries(
            "Orders by outcome",
            Query(f"sum by (outcome) (rate(orders_total[{RATE}]))", "{{outcome}}"),
            unit="reqps",
            stack=True,
        ),
        8,
    )
    b.add(
        timeseries(
            "Publish latency (broker confirm)",
            *_quantiles("order_publish_duration_seconds"),
            unit="s",
        ),
        8,
    )
    b.add(
        timeseries(
            "Shed at once: overloaded and sold out from memory",
            Query(
                f"sum by (gate) (rate(api_admission_rejected_total[{RATE}]))",
                "503 overloaded: {{gate}}",
            ),
            Query(f"sum(rate(orders_sold_out_from_memory_total[{RATE}]))", "409 sold out (memory)"),
            unit="reqps",
            desc="Answered without doing the work: beyond a gate's in-flight limit (admission "
            "control), or for an item this process knows is sold out.",
        ),
        8,
    )
    b.add(
        timeseries(
            "Degraded dependencies",
            Query("max by (dependency) (api_degraded)", "{{dependency}}"),
            desc="1 while the api cannot reach a dependency and serves in degraded mode.",
        ),
        8,
    )
    b.row("Queue and persistence")
    b.add(
        timeseries(
            "Queue depth and pending orders",
            Query("sum by (queue) (broker_queue_messages)", "queue {{queue}}"),
            Query("max(orders_pending)", "pending in Redis"),
        ),
        8,
    )
    b.add(
        timeseries(
            "Worker tasks by outcome",
            Query(
                f"sum by (task, outcome) (rate(worker_tasks_total[{RATE}]))",
                "{{task}} {{outcome}}",
            ),
            Query(f"sum(rate(orders_persisted_total[{RATE}]))", "orders persisted"),
            Query(f"sum(rate(orders_dead_lettered_total[{RATE}]))", "dead-lettered"),
            unit="ops",
        ),
        8,
    )
    b.add(
        timeseries(
            "Accept-to-persist lag", *_quantiles("order_accept_to_persist_seconds"), unit="s"
        ),
        8,
    )
    b.add(
        timeseries(
            "Batch size",
            Query(
                f"sum(rate(worker_batch_size_sum[{RATE}]))"
                f" / sum(rate(worker_batch_size_count[{RATE}]))",
                "mean",
            ),
            _quantiles("worker_batch_size")[2],
        ),
        8,
    )
    b.add(
        timeseries(
            "Batch commit latency", *_quantiles("worker_batch_commit_duration_seconds"), unit="s"
        ),
        8,
    )
    b.add(
        timeseries(
            "Stock left and reconciler",
            Query("max(stock_remaining_units)", "stock left"),
            Query("max(reconciler_stock_mismatch_items)", "mismatched items"),
            Query(f"sum(rate(reconciler_orders_republished_total[{RATE}]))", "republished / s"),
        ),
        8,
    )
    b.row("Containers")
    b.add(
        stat(
            "Swap forbidden",
            Query("min by (job) (container_swap_forbidden)", "{{job}}"),
            mappings=SWAP_MAPPING,
            thresholds=_thresholds((None, "red"), (1, "green")),
        ),
        24,
        4,
    )
    return b


def gmp_runtime() -> Board:
    """ "G-M-P runtime": the worker's scheduler, Go's view of it."""
    b = Board(
        "gmp-runtime",
        "G-M-P runtime",
        "The worker's gmpworker scheduler: Gs by state, per-P run queues, Ms, work "
        "stealing and hand-offs during database calls, and a schedtrace-like table.",
        ["flash-sale", "gmpworker"],
    )
    b.row("schedtrace")
    b.add(
        stat("GOMAXPROCS", Query("max(gmp_gomaxprocs)"), thresholds=_thresholds((None, "blue"))),
        4,
        5,
    )
    b.add(stat("Gs alive", Query('sum(gmp_goroutines{state!="dead"})')), 4, 5)
    b.add(stat("Ms (threads)", Query("sum(gmp_threads)")), 4, 5)
    b.add(
        stat("Global run queue", Query("sum(gmp_global_runqueue_length)"), thresholds=HIGH_IS_BAD),
        4,
        5,
    )
    b.add(stat("Steals / s", Query(f"sum(rate(gmp_steals_total[{RATE}]))"), "ops"), 4, 5)
    b.add(stat("Hand-offs / s", Query(f"sum(rate(gmp_handoffs_total[{RATE}]))"), "ops"), 4, 5)
    b.add(
        table(
            "SCHED (as GODEBUG=schedtrace prints it)",
            {
                "gomaxprocs": Query("sum by (instance) (gmp_gomaxprocs)", instant=True),
                "idleprocs": Query('sum by (instance) (gmp_procs{state="idle"})', instant=True),
                "threads": Query("sum by (instance) (gmp_threads)", instant=True),
                "spinningthreads": Query(
                    'sum by (instance) (gmp_threads{state="spinning"})', instant=True
                ),
                "idlethreads": Query('sum by (instance) (gmp_threads{state="idle"})', instant=True),
                "syscallthreads": Query(
                    'sum by (instance) (gmp_threads{state="syscall"})', instant=True
                ),
                "runqueue": Query("sum by (instance) (gmp_global_runqueue_length)", instant=True),
                "local runqs": Query("sum by (instance) (gmp_runqueue_length)", instant=True),
            },
            desc="One SCHED line per worker: the numbers Go's schedtrace prints, now.",
        ),
        16,
        5,
    )
    b.add(
        bargauge(
            "Local run queue per P (now)", Query("max by (p) (gmp_runqueue_length)", "P{{p}}")
        ),
        8,
        5,
    )
    b.row("Gs and Ps")
    b.add(
        timeseries(
            "Gs by state",
            Query(
                'sum by (state) (gmp_goroutines{state=~"runnable|running|syscall|waiting"})',
                "{{state}}",
            ),
            stack=True,
        ),
        12,
    )
    b.add(
        timeseries(
            "Run queue per P and global",
            Query("max by (p) (gmp_runqueue_length)", "P{{p}}"),
            Query("sum(gmp_global_runqueue_length)", "global"),
            stack=True,
        ),
        12,
    )
    b.row("Ms")
    b.add(
        timeseries("Ms by state", Query("sum by (state) (gmp_threads)", "{{state}}"), stack=True),
        12,
    )
    b.add(
        timeseries("Ps by state", Query("sum by (state) (gmp_procs)", "{{state}}"), stack=True),
        12,
    )
    b.row("Scheduler events")
    b.add(
        timeseries(
            "Steals, hand-offs, retakes, preemptions",
            Query(f"sum(rate(gmp_steals_total[{RATE}]))", "steals"),
            Query(f"sum(rate(gmp_handoffs_total[{RATE}]))", "hand-offs"),
            Query(f"sum(rate(gmp_retakes_total[{RATE}]))", "retakes"),
            Query(f"sum(rate(gmp_preemptions_total[{RATE}]))", "preemptions"),
            unit="ops",
        ),
        12,
    )
    b.add(
        timeseries(
            "Syscalls, context switches, Gs spawned",
            Query(f"sum(rate(gmp_syscalls_total[{RATE}]))", "syscalls"),
            Query(f"sum(rate(gmp_context_switches_total[{RATE}]))", "switches"),
            Query(f"sum(rate(gmp_goroutines_spawned_total[{RATE}]))", "spawned"),
            unit="ops",
        ),
        12,
    )
    return b


def datastores() -> Board:
    """ "Datastores": Redis and PostgreSQL through their exporters (compose monitoring profile)."""
    b = Board(
        "flash-sale-datastores",
        "Datastores",
        "Redis (state and cache instances) and PostgreSQL, through "
        "prometheus-redis-exporter and prometheus-postgres-exporter.",
        ["flash-sale", "datastores"],
    )
    b.row("Redis")
    b.add(
        timeseries(
            "Redis commands / s",
            Query(
                f"sum by (instance) (rate(redis_commands_processed_total[{RATE}]))", "{{instance}}"
            ),
            unit="ops",
        ),
        8,
    )
    b.add(
        timeseries(
            "Redis memory used vs max",
            Query("max by (instance) (redis_memory_used_bytes)", "used {{instance}}"),
            Query("max by (instance) (redis_memory_max_bytes)", "max {{instance}}"),
            unit="bytes",
        ),
        8,
    )
    b.add(
        timeseries(
            "Redis clients and evictions",
            Query("sum by (instance) (redis_connected_clients)", "clients {{instance}}"),
            Query(
                f"sum by (instance) (rate(redis_evicted_keys_total[{RATE}]))",
                "evicted/s {{instance}}",
            ),
        ),
        8,
    )
    b.row("PostgreSQL")
    b.add(
        timeseries(
            "Commits / s",
            Query(f"sum by (datname) (rate(pg_stat_database_xact_commit[{RATE}]))", "{{datname}}"),
            unit="ops",
        ),
        8,
    )
    b.add(
        timeseries(
            "Rows inserted / s",
            Query(f"sum by (datname) (rate(pg_stat_database_tup_inserted[{RATE}]))", "{{datname}}"),
            unit="ops",
        ),
        8,
    )
    b.add(
        timeseries(
            "Backends",
            Query("sum by (datname) (pg_stat_database_numbackends)", "{{datname}}"),
        ),
        8,
    )
    return b


BOARDS = {
    "flash-sale-overview.json": overview,
    "gmp-runtime.json": gmp_runtime,
    "datastores.json": datastores,
}


def render(board: Board) -> str:
    """The dashboard file's exact text."""
    return json.dumps(board.to_json(), indent=2) + "\n"


def write_all(directory: Path = DASHBOARD_DIR) -> list[Path]:
    """Write every dashboard file; return their paths."""
    paths = []
    for name, build in BOARDS.items():
        path = directory / name
        path.write_text(render(build()))
        paths.append(path)
    return paths


if __name__ == "__main__":
    for written in write_all(Path(sys.argv[1]) if len(sys.argv) > 1 else DASHBOARD_DIR):
        print(written)
