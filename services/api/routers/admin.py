"""Admin operations before a sale."""

from __future__ import annotations

import psycopg
from fastapi import APIRouter
from redis.exceptions import RedisError

from services.api.auth import UNAUTHORIZED_RESPONSE, AdminOnly
from services.api.dependencies import Context
from services.api.errors import unavailable
from services.api.schemas import ErrorBody, WarmupRequest, WarmupResult
from services.catalog import warmup

router = APIRouter(tags=["admin"], dependencies=[AdminOnly], responses=UNAUTHORIZED_RESPONSE)


@router.post(
    "/admin/warmup",
    response_model=WarmupResult,
    responses={503: {"model": ErrorBody, "description": "Redis or PostgreSQL unavailable"}},
)
async def warmup_items(ctx: Context, body: WarmupRequest | None = None) -> WarmupResult:
    """Preload items (all, or ``ids``) into the cache and their live stock counters.

    Existing stock counters are kept (a running sale is never clobbered) unless ``reset``,
    a fresh sale for the named items only, which never drops an order still accepted or
    being persisted (see :mod:`services.catalog`).
    """
    request = body or WarmupRequest()
    try:
        counts = await warmup(ctx.db_pool, ctx.cache, ctx.store, request.ids, reset=request.reset)
    except (RedisError, psycopg.Error, TimeoutError) as exc:
        raise unavailable(
            "warmup_failed", f"{type(exc).__name__}: {exc}", ctx.settings.retry_after_seconds
        ) from exc
    return WarmupResult(**counts.__dict__)
