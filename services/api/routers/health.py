"""Liveness, readiness (each dependency checked) and Prometheus metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Response

from services import db
from services.api.dependencies import ApiContext, Context
from services.api.responses import OrjsonResponse
from services.api.schemas import DependencyStatus, Readiness
from services.metrics import render_latest

router = APIRouter(tags=["health"])

CHECK_TIMEOUT_SECONDS = 1.5


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive and its event loop answers."""
    return {"status": "ok"}


async def _timed(check: Callable[[], Awaitable[Any]]) -> DependencyStatus:
    started = time.perf_counter()
    try:
        await asyncio.wait_for(check(), CHECK_TIMEOUT_SECONDS)
    except Exception as exc:
        return DependencyStatus(ok=False, error=f"{type(exc).__name__}: {exc}"[:300] or "error")
    return DependencyStatus(ok=True, latency_ms=round((time.perf_counter() - started) * 1000, 2))


async def check_dependencies(ctx: ApiContext) -> dict[str, DependencyStatus]:
    """Check every dependency concurrently and record the results in ``api_degraded``."""
    checks: dict[str, Callable[[], Awaitable[Any]]] = {
        "redis": ctx.state_redis.ping,
        "redis_cache": ctx.cache_redis.ping,
        "database": lambda: db.ping(ctx.db_pool),
        "broker": ctx.publisher.check,
    }
    results = await asyncio.gather(*(_timed(check) for check in checks.values()))
    statuses = dict(zip(checks, results, strict=True))
    for name, status in statuses.items():
        ctx.health.report(name, status.ok)
    return statuses


def readiness_status(deps: dict[str, DependencyStatus]) -> str:
    """``ok``; ``degraded`` while reads can still be served (cache or database up) but
    something is down; ``unavailable`` when neither Redis nor PostgreSQL answers."""
    if all(d.ok for d in deps.values()):
        return "ok"
    if deps["database"].ok or (deps["redis"].ok and deps["redis_cache"].ok):
        return "degraded"
    return "unavailable"


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
async def readyz(ctx: Context) -> OrjsonResponse:
    """Each dependency's state. 200 for ``ok`` and ``degraded`` (a degraded api still serves
    reads, so a load balancer should keep it); 503 only for ``unavailable``."""
    deps = await check_dependencies(ctx)
    status = readiness_status(deps)
    body = Readiness(status=status, dependencies=deps)
    return OrjsonResponse(body.model_dump(), status_code=503 if status == "unavailable" else 200)


@router.get("/metrics", include_in_schema=False)
async def metrics() -> Response:
    """Prometheus exposition (merged across processes when ``PROMETHEUS_MULTIPROC_DIR`` is set)."""
    payload, content_type = render_latest()
    return Response(payload, media_type=content_type)
