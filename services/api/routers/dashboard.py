"""The built-in live dashboard: ``GET /dashboard`` (the page) and ``GET /dashboard/stats``.

It shows what the Grafana dashboards show, for when no Prometheus or Grafana runs (the
native stack). The figures come from the api's own metrics registry (all uvicorn
processes, in multiprocess mode), from Redis (live stock, pending orders) and from the
worker's and reconciler's ``/metrics``; any of those may be down, and the page says so
instead of failing. Rates and percentiles are computed here, over a trailing window, the
way Prometheus's ``rate()`` and ``histogram_quantile()`` would.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio
from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import REGISTRY, CollectorRegistry, multiprocess
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.keys import Keys
from services.monitoring.scrape import History, Scrape, Window
from services.settings import get_settings

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
FETCH_TIMEOUT_S = 0.5
STOCK_SCAN_COUNT = 1000
STOCK_RESCAN_S = 10.0
# The monitoring's own requests (this page polling, scrapes, health checks) are not traffic.
MONITORING_ROUTES = ("/metrics", "/dashboard", "/healthz", "/readyz")

router = APIRouter(tags=["dashboard"])
_history = History(window_s=5.0)
_stock_keys: dict[str, tuple[float, list[bytes]]] = {}


class DashboardSettings(BaseSettings):
    """Where the other services' metrics are (``WORKER_METRICS_URL``, ``RECONCILER_METRICS_URL``).

    Defaults follow the native stack: the worker and reconciler on this host, on their
    ``*_METRICS_PORT``. Compose sets the URLs to the service names.
    """

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    worker_metrics_url: str = (
        f"http://127.0.0.1:{os.environ.get('WORKER_METRICS_PORT', '9101')}/metrics"
    )
    reconciler_metrics_url: str = (
        f"http://127.0.0.1:{os.environ.get('RECONCILER_METRICS_PORT', '9102')}/metrics"
    )


def _api_registry() -> CollectorRegistry:
    """This api's metrics: every uvicorn process's when multiprocess mode is on."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # prometheus_client: unannotated
        return registry
    return REGISTRY


async def _fetch_metrics(client: httpx.AsyncClient, url: str) -> str | None:
    """A ``/metrics`` body, or None when the service does not answer."""
    try:
        response = await client.get(url)
        response.raise_for_status()
    except httpx.HTTPError:
        return None
    return response.text


def _is_traffic(labels: Mapping[str, str]) -> bool:
    """False for the monitoring's own requests, which would swamp an idle api's figures."""
    return not labels.get("route", "").startswith(MONITORING_ROUTES)


async def _redis_figures() -> dict[str, int] | None:
    """Live stock summed over every item, and orders pending persistence; None if unreachable."""
    settings = get_settings()
    keys = Keys(settings.redis_prefix)
    try:
        async with redis.asyncio.Redis.from_url(
            settings.redis_url, socket_timeout=FETCH_TIMEOUT_S
        ) as client:
            names = await _stock_key_names(client, keys)
            stock = 0
            for i in range(0, len(names), STOCK_SCAN_COUNT):
                batch = names[i : i + STOCK_SCAN_COUNT]
                stock += sum(int(v) for v in await client.mget(batch) if v is not None)
            pipe = client.pipeline(transaction=False)
            # ``o``, not ``i``: the walrus binds in this scope, where ``i`` is the int above.
            for item_id in {o for name in names if (o := keys.item_of_key(name)) is not None}:
                pipe.zcard(keys.pending(item_id))  # one pending set per item with a counter
            pending = sum(int(n) for n in await pipe.execute())
    except (redis.RedisError, OSError):
        return None
    return {"stock": stock, "pending": int(pending)}


async def _stock_key_names(client: redis.asyncio.Redis, keys: Keys) -> list[bytes]:
    """Every stock counter's name, rescanned every STOCK_RESCAN_S (SCAN, never ``KEYS``).

    A SCAN walks the whole database, so once a second would cost more than the page; the
    counters themselves are read fresh on every poll.
    """
    cached = _stock_keys.get(keys.prefix)
    if cached and time.monotonic() - cached[0] < STOCK_RESCAN_S:
        return cached[1]
    names = [k async for k in client.scan_iter(match=keys.stock_pattern, count=STOCK_SCAN_COUNT)]
    _stock_keys[keys.prefix] = (time.monotonic(), names)
    return names


async def collect() -> tuple[Scrape, dict[str, bool], dict[str, int] | None]:
    """One snapshot of every source, tagged ``source=api|worker|reconciler``, and which answered."""
    urls = DashboardSettings()
    scrape = Scrape()
    scrape.add_registry(_api_registry(), _is_traffic, source="api")
    async with httpx.AsyncClient(timeout=FETCH_TIMEOUT_S) as client:
        worker, reconciler, store = await asyncio.gather(
            _fetch_metrics(client, urls.worker_metrics_url),
            _fetch_metrics(client, urls.reconciler_metrics_url),
            _redis_figures(),
        )
    for source, text in (("worker", worker), ("reconciler", reconciler)):
        if text is not None:
            scrape.add_text(text, source=source)
    up = {"api": True, "worker": worker is not None, "reconciler": reconciler is not None}
    up["redis"] = store is not None
    return scrape, up, store


def _ms(seconds: float | None) -> float | None:
    """Seconds to milliseconds, keeping None."""
    return None if seconds is None else seconds * 1000.0


def _percentiles_ms(w: Window, histogram: str, **match: str) -> dict[str, float | None]:
    """p50, p95 and p99 of a histogram over the window, in milliseconds."""
    return {f"p{int(q * 100)}": _ms(w.quantile(q, histogram, **match)) for q in (0.5, 0.95, 0.99)}


def api_figures(w: Window) -> dict[str, Any]:
    """Traffic, latency, cache, orders, publishing and degraded mode, from the api."""
    api = {"source": "api"}
    lookups = w.rates_by("cache_lookups_total", "result", **api)
    all_lookups = sum(lookups.values())
    hits = sum(v for k, v in lookups.items() if k != "miss")
    statuses = w.rates_by("http_requests_total", "status", **api)
    return {
        "requests_per_s": w.rate("http_requests_total", **api),
        "by_status_per_s": statuses,
        "by_route_per_s": w.rates_by("http_requests_total", "route", **api),
        "latency_ms": _percentiles_ms(w, "http_request_duration_seconds", **api),
        "cache": {
            "hit_ratio": hits / all_lookups if all_lookups else None,
            "lookups_per_s": lookups,
            "single_flight_waits_per_s": w.rate("cache_single_flight_waits_total", **api),
            "db_loads_per_s": w.rate("cache_db_loads_total", **api),
        },
        "orders": {
            "per_s": w.rates_by("orders_total", "outcome", **api),
            "totals": w.now.by("orders_total", "outcome", **api),
        },
        "publish_ms": _percentiles_ms(w, "order_publish_duration_seconds", **api),
        "degraded": w.now.by("api_degraded", "dependency", **api),
    }


def worker_figures(w: Window) -> dict[str, Any]:
    """Tasks, persistence, batches and lag, from the worker."""
    worker = {"source": "worker"}
    return {
        "tasks_per_s": w.rates_by("worker_tasks_total", "outcome", **worker),
        "persisted_per_s": w.rate("orders_persisted_total", **worker),
        "persisted_total": w.now.total("orders_persisted_total", **worker),
        "dead_lettered_total": w.now.total("orders_dead_lettered_total", **worker),
        "batch_size_mean": w.mean("worker_batch_size", **worker),
        "commit_ms": _percentiles_ms(w, "worker_batch_commit_duration_seconds", **worker),
        "lag_ms": _percentiles_ms(w, "order_accept_to_persist_seconds", **worker),
    }


def gmp_figures(w: Window) -> dict[str, Any]:
    """The worker's G-M-P runtime: Gs, Ps, Ms, run queues and scheduler event rates."""
    now = w.now
    runq = now.by("gmp_runqueue_length", "p", source="worker")
    events = ("steals", "handoffs", "retakes", "preemptions", "syscalls", "context_switches")
    return {
        "gomaxprocs": now.maximum("gmp_gomaxprocs", source="worker"),
        "goroutines": now.by("gmp_goroutines", "state", source="worker"),
        "threads": now.by("gmp_threads", "state", source="worker"),
        "procs": now.by("gmp_procs", "state", source="worker"),
        "runqueue_per_p": [runq[p] for p in sorted(runq, key=int)],
        "global_runqueue": now.total("gmp_global_runqueue_length", source="worker"),
        "per_s": {e: w.rate(f"gmp_{e}_total", source="worker") for e in events},
        "totals": {e: now.total(f"gmp_{e}_total", source="worker") for e in events},
    }


def stats_document(w: Window, up: dict[str, bool], store: dict[str, int] | None) -> dict[str, Any]:
    """The whole ``/dashboard/stats`` body."""
    queues = w.now.by("broker_queue_messages", "queue", source="reconciler")
    return {
        "time": time.time(),
        "window_s": w.seconds,
        "up": up,
        "api": api_figures(w),
        "worker": worker_figures(w),
        "gmp": gmp_figures(w),
        "queue": {
            "depth": queues,
            "depth_total": sum(queues.values()) if queues else None,
            "pending": store["pending"] if store else None,
        },
        "stock": {"remaining": store["stock"] if store else None},
        "reconciler": {
            "republished_total": w.now.total(
                "reconciler_orders_republished_total", source="reconciler"
            ),
            "stock_mismatch_items": w.now.maximum(
                "reconciler_stock_mismatch_items", source="reconciler"
            ),
        },
        "swap_forbidden": w.now.by("container_swap_forbidden", "source"),
    }


@router.get("/dashboard", include_in_schema=False)
async def dashboard_page() -> FileResponse:
    """The live dashboard page (HTML; its scripts are served from ``/dashboard/static``)."""
    return FileResponse(STATIC_DIR / "dashboard.html", media_type="text/html")


@router.get("/dashboard/static/{name:path}", include_in_schema=False)
async def dashboard_asset(name: str) -> Response:
    """A file of the page (CSS, JS, the vendored chart library), never outside ``static/``."""
    path = (STATIC_DIR / name).resolve()
    if not path.is_file() or not path.is_relative_to(STATIC_DIR):
        return JSONResponse({"error": "not_found", "detail": f"no asset {name!r}"}, 404)
    return FileResponse(path, headers={"Cache-Control": "no-cache"})


@router.get("/dashboard/stats")
async def dashboard_stats() -> dict[str, Any]:
    """Every figure of the dashboard now: rates and percentiles over the last ~5 s."""
    scrape, up, store = await collect()
    base = _history.push(scrape)
    return stats_document(Window(scrape, base), up, store)
