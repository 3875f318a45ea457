"""Item reads (cache-aside, live stock from Redis) and queued admin updates."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from redis.exceptions import RedisError

from services.api.auth import UNAUTHORIZED_RESPONSE, AdminOnly
from services.api.dependencies import Context
from services.api.errors import ApiError, unavailable
from services.api.responses import OrjsonResponse
from services.api.schemas import (
    IDS_PATTERN,
    MAX_BATCH_IDS,
    MAX_ITEM_ID,
    ErrorBody,
    Item,
    ItemBatch,
    ItemUpdateQueued,
    ItemUpdateRequest,
)
from services.publisher import PublishError

router = APIRouter(tags=["items"])

ItemIdPath = Annotated[int, Path(ge=1, le=MAX_ITEM_ID, description="item id")]
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "no such item"}
}
_READ_UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorBody, "description": "overloaded, or neither Redis nor PostgreSQL answers"}
}
_IDS = re.compile(IDS_PATTERN)


def parse_ids(raw: str) -> list[int]:
    """``"1,2,3"`` -> ``[1, 2, 3]`` (deduplicated, order kept), or a 422 naming the problem.

    Exactly what ``IDS_PATTERN`` (the schema's) allows, no more: no spaces, no empty parts.
    """
    if raw.count(",") >= MAX_BATCH_IDS:
        raise ApiError(422, "too_many_ids", f"at most {MAX_BATCH_IDS} ids per request")
    if not _IDS.fullmatch(raw):
        raise ApiError(
            422, "invalid_ids", f"ids must be item ids (1 to {MAX_ITEM_ID}) separated by commas"
        )
    return list(dict.fromkeys(map(int, raw.split(","))))


async def with_live_stock(ctx: Context, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copies of ``items`` whose ``stock`` is the live Redis counter.

    Where the counter is missing, or Redis is down, the database's stock stays (a read
    must not fail because the state Redis is away: the caller is degraded, not broken);
    while its circuit is open Redis is not even asked.
    """
    if not items or ctx.health.circuit_open("redis"):
        return items
    try:
        stocks = await ctx.stock_reader.get_many([ctx.keys.stock(i["id"]) for i in items])
    except RedisError:
        ctx.health.report("redis", False)
        return items
    ctx.health.report("redis", True)
    return [
        item if stock is None else {**item, "stock": int(stock)}
        for item, stock in zip(items, stocks, strict=True)
    ]


@router.get(
    "/items/{item_id}",
    response_model=None,
    responses={200: {"model": Item}, **_NOT_FOUND, **_READ_UNAVAILABLE},
)
async def get_item(item_id: ItemIdPath, ctx: Context) -> OrjsonResponse:
    """One item: near cache, Redis, then PostgreSQL (single-flight); stock is live."""
    item = await ctx.cache.get(item_id)
    if item is None:
        raise ApiError(404, "item_not_found", f"no item {item_id}")
    (live,) = await with_live_stock(ctx, [item])
    return OrjsonResponse(live)


@router.get(
    "/items", response_model=None, responses={200: {"model": ItemBatch}, **_READ_UNAVAILABLE}
)
async def get_items(
    ctx: Context,
    ids: Annotated[
        str,
        Query(
            max_length=4096,
            description=f"comma-separated item ids, {MAX_BATCH_IDS} at most",
            json_schema_extra={"pattern": IDS_PATTERN},
        ),
    ],
) -> OrjsonResponse:
    """Several items in one call; unknown ids are listed under ``missing``."""
    wanted = parse_ids(ids)
    found = await ctx.cache.get_many(wanted)
    items = [item for i in wanted if (item := found[i]) is not None]
    missing = [i for i in wanted if found[i] is None]
    return OrjsonResponse({"items": await with_live_stock(ctx, items), "missing": missing})


@router.put(
    "/items/{item_id}",
    status_code=202,
    response_model=ItemUpdateQueued,
    dependencies=[AdminOnly],
    responses={
        **UNAUTHORIZED_RESPONSE,
        **_NOT_FOUND,
        503: {"model": ErrorBody, "description": "broker unavailable"},
    },
)
async def update_item(
    item_id: ItemIdPath, body: ItemUpdateRequest, ctx: Context
) -> ItemUpdateQueued:
    """Queue an admin update; the worker applies it if its version is the newest and then
    invalidates the cache (see :class:`services.api.dependencies.VersionClock`)."""
    if await ctx.cache.get(item_id) is None:
        raise ApiError(404, "item_not_found", f"no item {item_id}")
    version = ctx.versions.next()
    update = {"item_id": item_id, "version": version, **body.model_dump(exclude_none=True)}
    try:
        await ctx.publisher.publish_item_update(update)
    except PublishError as exc:
        ctx.health.report("broker", False)
        raise unavailable("broker_unavailable", str(exc), ctx.settings.retry_after_seconds) from exc
    ctx.health.report("broker", True)
    return ItemUpdateQueued(item_id=item_id, version=version)
