"""Orders: reserve atomically in Redis, publish with confirms, answer 202 at once."""

from __future__ import annotations

import contextlib
import logging
import re
import time
import uuid
from typing import Annotated

import psycopg
from fastapi import APIRouter, Header
from redis.exceptions import RedisError

from services import db
from services.api.dependencies import ApiContext, Context
from services.api.errors import ApiError, unavailable
from services.api.responses import OrjsonResponse
from services.api.schemas import (
    IDEMPOTENCY_KEY_PATTERN,
    ErrorBody,
    OrderAccepted,
    OrderRequest,
    OrderStatus,
)
from services.metrics import ORDERS
from services.publisher import PublishError
from services.store import Outcome, ReserveResult, task_payload

log = logging.getLogger(__name__)
router = APIRouter(tags=["orders"])

_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)
_ORDER_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {"model": OrderAccepted, "description": "repeated Idempotency-Key: the same order"},
    202: {"model": OrderAccepted, "description": "accepted; persisted asynchronously"},
    400: {"model": ErrorBody, "description": "malformed JSON or Idempotency-Key"},
    404: {"model": ErrorBody, "description": "no such item"},
    409: {"model": ErrorBody, "description": "sold_out, or limit_exceeded (per-user limit)"},
    413: {"model": ErrorBody, "description": "body too large"},
    422: {"model": ErrorBody, "description": "invalid body, or Idempotency-Key reused"},
    503: {"model": ErrorBody, "description": "Redis or broker unavailable; see Retry-After"},
}


def _checked_idempotency_key(key: str | None) -> str | None:
    if key is not None and not _IDEMPOTENCY_KEY.fullmatch(key):
        raise ApiError(
            400,
            "invalid_idempotency_key",
            "Idempotency-Key must be 8 to 128 characters of A-Z a-z 0-9 _ . : -",
        )
    return key


async def _reserve(
    ctx: ApiContext, order_id: str, body: OrderRequest, key: str | None
) -> ReserveResult:
    """Run the reservation script; a missing stock counter is created from the database once.

    A missing counter means the item was never warmed up, so no order of it can be pending
    and the database stock is the live stock; ``SET NX`` keeps a concurrent warmup's value.
    """
    for attempt in range(2):
        result = await ctx.store.reserve(
            order_id, body.item_id, body.user_id, body.quantity, key, int(time.time() * 1000)
        )
        if result.outcome is not Outcome.UNKNOWN_ITEM or attempt:
            return result
        try:
            found = await db.load_items(ctx.db_pool, [body.item_id])
        except (psycopg.Error, TimeoutError) as exc:
            ORDERS.labels("failed").inc()
            raise unavailable(
                "database_unavailable", "cannot check the item", ctx.settings.retry_after_seconds
            ) from exc
        if body.item_id not in found:
            return result
        await ctx.store.set_stocks({body.item_id: found[body.item_id]["stock"]}, overwrite=False)
    raise AssertionError("unreachable")


def _reject(result: ReserveResult, body: OrderRequest) -> ApiError:
    """The 4xx for a reservation that did not happen."""
    if result.outcome is Outcome.SOLD_OUT:
        ORDERS.labels("sold_out").inc()
        return ApiError(409, "sold_out", f"item {body.item_id} has {result.stock_left} left")
    if result.outcome is Outcome.LIMIT_EXCEEDED:
        ORDERS.labels("limit_exceeded").inc()
        # 409, not 429: this is the state of the user's purchases, not a request rate;
        # retrying later will not help.
        return ApiError(
            409, "limit_exceeded", f"user already holds {result.bought} of item {body.item_id}"
        )
    ORDERS.labels("rejected").inc()
    if result.outcome is Outcome.IDEMPOTENCY_CONFLICT:
        return ApiError(
            422, "idempotency_key_reused", "this Idempotency-Key was used for another order"
        )
    return ApiError(404, "item_not_found", f"no item {body.item_id}")


async def _publish_or_compensate(ctx: ApiContext, result: ReserveResult) -> None:
    """Publish the accepted order; if the broker does not confirm, undo the reservation."""
    assert result.order is not None
    try:
        await ctx.publisher.publish_order(task_payload(result.order))
    except PublishError as exc:
        ctx.health.report("broker", False)
        order_id = result.order["order_id"]
        try:
            await ctx.store.compensate(order_id, f"broker: {exc}"[:200])
        except RedisError:
            # Still accepted and pending: the reconciler re-publishes it, so the client is
            # told the truth (accepted), not asked to retry into a second reservation.
            log.error(
                "order %s: publish and compensation both failed; left to the reconciler", order_id
            )
            return
        ORDERS.labels("failed").inc()
        raise unavailable(
            "broker_unavailable",
            "the order could not be queued; nothing was reserved",
            ctx.settings.retry_after_seconds,
        ) from exc
    ctx.health.report("broker", True)


@router.post("/orders", status_code=202, response_model=None, responses=_ORDER_RESPONSES)
async def create_order(
    body: OrderRequest,
    ctx: Context,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> OrjsonResponse:
    """Reserve stock atomically (idempotency key, per-user limit, stock), publish the order
    with a confirm, answer 202; the worker persists it (``GET /orders/{id}`` follows it)."""
    key = _checked_idempotency_key(idempotency_key)
    if body.quantity > ctx.settings.max_quantity:
        ORDERS.labels("rejected").inc()
        raise ApiError(
            422, "quantity_too_large", f"at most {ctx.settings.max_quantity} units per order"
        )
    if key is None and ctx.sold_out.is_sold_out(body.item_id):
        raise ctx.sold_out.answer(body.item_id)
    order_id = str(uuid.uuid4())
    try:
        result = await _reserve(ctx, order_id, body, key)
    except RedisError as exc:
        ctx.health.report("redis", False)
        ORDERS.labels("failed").inc()
        log.warning("order %s: reservation failed: %r", order_id, exc)
        # A timeout is ambiguous (the script may have run): undo whatever it did, so that
        # "nothing was reserved" holds. If even that fails the order, if it exists, stays
        # pending and the reconciler publishes it.
        with contextlib.suppress(RedisError):
            await ctx.store.compensate(order_id, "state store error during reservation")
        raise unavailable(
            "state_unavailable",
            "order state store unreachable; nothing was reserved",
            ctx.settings.retry_after_seconds,
        ) from exc
    ctx.health.report("redis", True)
    ctx.sold_out.learn(body.item_id, result)
    if result.outcome is Outcome.DUPLICATE:
        assert result.order is not None
        ORDERS.labels("duplicate").inc()
        return OrjsonResponse(
            {"order_id": result.order["order_id"], "status": result.order["status"]},
            status_code=200,
        )
    if result.outcome is not Outcome.ACCEPTED:
        raise _reject(result, body)
    await _publish_or_compensate(ctx, result)
    ORDERS.labels("accepted").inc()
    assert result.order is not None
    return OrjsonResponse({"order_id": result.order["order_id"], "status": "accepted"}, 202)


@router.get(
    "/orders/{order_id}",
    response_model=OrderStatus,
    responses={404: {"model": ErrorBody}, 503: {"model": ErrorBody}},
)
async def get_order(order_id: uuid.UUID, ctx: Context) -> OrderStatus:
    """The order's status: ``accepted`` -> ``persisted``, or ``failed`` with a reason."""
    try:
        order = await ctx.store.get_order(str(order_id))
    except RedisError as exc:
        ctx.health.report("redis", False)
        raise unavailable(
            "state_unavailable", "order state store unreachable", ctx.settings.retry_after_seconds
        ) from exc
    if order is None:
        raise ApiError(404, "order_not_found", f"no order {order_id}")
    return OrderStatus.model_validate(order)
