"""Orders: reserve atomically in Redis, publish with confirms, answer 202 at once."""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Annotated

import psycopg
from fastapi import APIRouter, Header
from pydantic.json_schema import SkipJsonSchema
from redis.exceptions import RedisError

from services import db
from services.api import experiment_modes
from services.api.dependencies import ApiContext, Context
from services.api.errors import ApiError, unavailable
from services.api.redis_sent import forget_sends, may_have_sent
from services.api.responses import OrjsonResponse
from services.api.schemas import (
    IDEMPOTENCY_KEY_PATTERN,
    ErrorBody,
    OrderAccepted,
    OrderRequest,
    OrderStatus,
)
from services.breaker import DependencyDown
from services.keys import new_order_id
from services.metrics import ORDERS
from services.publisher import PublishError
from services.store import Order, Outcome, ReserveResult, task_payload

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
    503: {
        "model": ErrorBody,
        "description": "broker_unavailable or state_unavailable: nothing was reserved; "
        "outcome_unknown: the detail carries the order_id, retry with the same "
        "Idempotency-Key or GET /orders/{order_id}; see Retry-After",
    },
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
    """Run the reservation; a missing stock counter is created from the database once.

    A missing counter means the item was never warmed up, so no order of it can be pending
    and the database stock is the live stock; the counter records the row's version, so an
    item update committed after this read is applied to it exactly once.
    """
    for attempt in range(2):
        forget_sends()
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
        item = found[body.item_id]
        await ctx.store.init_stocks({body.item_id: (item["stock"], item["version"])})
    raise AssertionError("unreachable")


async def _reserve_or_explain(
    ctx: ApiContext, order_id: str, body: OrderRequest, key: str | None
) -> ReserveResult:
    """:func:`_reserve`, with a Redis failure turned into the 503 that is true.

    The client's own retry already re-sent the script once with the same order id. If it
    still failed, "nothing was reserved" holds only if no attempt's bytes left this
    process; otherwise the outcome is unknown and the client gets the order id (the order,
    if it exists, is pending and the reconciler publishes it).
    """
    try:
        return await _reserve(ctx, order_id, body, key)
    except RedisError as exc:
        ctx.health.report("redis", False)
        ORDERS.labels("failed").inc()
        log.warning("order %s: reservation failed: %r", order_id, exc)
        retry_after = ctx.settings.retry_after_seconds
        if not may_have_sent():
            raise unavailable(
                "state_unavailable",
                "order state store unreachable; nothing was reserved",
                retry_after,
            ) from exc
        raise ApiError(
            503,
            "outcome_unknown",
            {
                "order_id": order_id,
                "message": "the reservation may or may not have been made: retry with the "
                f"same Idempotency-Key, or GET /orders/{order_id}",
            },
            {"Retry-After": str(retry_after)},
        ) from exc


def _refuse_while_state_down(ctx: ApiContext) -> None:
    """503 at once, touching nothing, while the state Redis is known to be down."""
    if ctx.health.circuit_open("redis"):
        ORDERS.labels("failed").inc()
        raise unavailable(
            "state_unavailable",
            "order state store unreachable; nothing was reserved",
            ctx.settings.retry_after_seconds,
        )


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


async def _cancel(ctx: ApiContext, order: Order, reason: str) -> bool:
    """Cancel an order whose publish failed; whether it was cancelled (else it stands)."""
    try:
        return await ctx.store.cancel(order["item_id"], order["order_id"], reason[:200])
    except RedisError:
        # Still accepted and pending: the reconciler publishes it, so the answer is 202.
        log.error("order %s: publish and cancel both failed; left to the reconciler", order)
        return False


async def _publish_or_cancel(ctx: ApiContext, order: Order) -> None:
    """Publish the accepted order; if the broker does not confirm, cancel it if still possible.

    Any publish failure may hide a message the broker did take (a late confirm), so the
    cancel is a transition a worker's claim may already have beaten: the answer follows
    the cancel's result, never the publish error alone.
    """
    try:
        await ctx.publisher.publish_order(task_payload(order))
    except PublishError as exc:
        ctx.health.report("broker", False)
        if not await _cancel(ctx, order, f"broker: {exc}"):
            log.warning("order %s: publish failed but the order stands", order["order_id"])
            return
        ctx.sold_out.stock_returned(order["item_id"])
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
    idempotency_key: Annotated[
        str | SkipJsonSchema[None],
        Header(
            alias="Idempotency-Key",
            description="Optional, but what makes a retry safe: the same key never yields a "
            "second order, whatever became of the first attempt (it returns that order, 200). "
            "Bound to its item, user and quantity for IDEMPOTENCY_TTL_SECONDS: another "
            "request with it is a 422. A 503 that said nothing was reserved frees it for the "
            "same request. Without a key every request is a new order attempt.",
            json_schema_extra={"pattern": IDEMPOTENCY_KEY_PATTERN},
        ),
    ] = None,
) -> OrjsonResponse:
    """Reserve stock atomically (idempotency key, per-user limit, stock), publish the order
    with a confirm, answer 202; the worker persists it (``GET /orders/{id}`` follows it).

    The Idempotency-Key is optional but what makes a retry safe: with it, a retry never
    yields a second order, whatever became of the first attempt (see the README's "The
    order's state machine"). Without it every request is a new order attempt.
    """
    key = _checked_idempotency_key(idempotency_key)
    if body.quantity > ctx.settings.max_quantity:
        ORDERS.labels("rejected").inc()
        raise ApiError(
            422, "quantity_too_large", f"at most {ctx.settings.max_quantity} units per order"
        )
    if key is None and ctx.sold_out.is_sold_out(body.item_id):
        raise ctx.sold_out.answer(body.item_id)
    _refuse_while_state_down(ctx)
    order_id = new_order_id(body.item_id)
    result = await _reserve_or_explain(ctx, order_id, body, key)
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
    assert result.order is not None
    if ctx.settings.experiment_sync_write:  # experiment-only: write inside the request
        await experiment_modes.persist_in_request(ctx, result)
    else:
        await _publish_or_cancel(ctx, result.order)
    ORDERS.labels("accepted").inc()
    return OrjsonResponse({"order_id": order_id, "status": "accepted"}, 202)


@router.get(
    "/orders/{order_id}",
    response_model=OrderStatus,
    responses={404: {"model": ErrorBody}, 503: {"model": ErrorBody}},
)
async def get_order(order_id: uuid.UUID, ctx: Context) -> OrderStatus:
    """The order's status: ``accepted`` -> ``persisting`` -> ``persisted``, or ``failed``
    with a reason (the state machine is in the README)."""
    try:
        ctx.breakers["redis"].check()  # known down: answer now, not after a time-out
        order = await ctx.store.get_order(str(order_id))
    except (RedisError, DependencyDown) as exc:
        ctx.health.report("redis", False)
        raise unavailable(
            "state_unavailable", "order state store unreachable", ctx.settings.retry_after_seconds
        ) from exc
    if order is None:
        raise ApiError(404, "order_not_found", f"no order {order_id}")
    return OrderStatus.model_validate(order)
