"""Orders: acceptance, idempotency, sold out at exactly the stock, per-user limit, broker
and Redis outages, and every bad input's 4xx."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
import redis
from apitest_support import CATALOG_STOCK, Api, BrokerQueue, dead_url, sample

from services.api.main import create_app
from services.messaging import PERSIST_ORDER
from services.settings import Settings
from services.store import OrderStore

pytestmark = pytest.mark.anyio


def order(item_id: int = 1, quantity: int = 1, user_id: str = "alice") -> dict[str, object]:
    """An order request body."""
    return {"item_id": item_id, "quantity": quantity, "user_id": user_id}


def state_store(settings: Settings) -> OrderStore:
    """A synchronous view of the test's Redis state, independent of the api."""
    client = redis.Redis.from_url(f"{settings.redis_url.rsplit('/', 1)[0]}/2")
    return OrderStore(client, settings.redis_prefix, per_user_limit=settings.per_user_limit)


async def test_order_is_reserved_published_and_readable(
    broker_api: Api, queue: BrokerQueue
) -> None:
    published = sample("order_publish_duration_seconds_count")
    response = await broker_api.client.post("/orders", json=order(2, 3))
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "accepted"
    uuid.UUID(body["order_id"])

    status = (await broker_api.client.get(f"/orders/{body['order_id']}")).json()
    assert status["status"] == "accepted" and status["quantity"] == 3 and status["item_id"] == 2
    assert (await broker_api.client.get("/items/2")).json()["stock"] == CATALOG_STOCK - 3

    [(task, kwargs)] = queue.tasks(broker_api.settings.order_queue)
    assert task == PERSIST_ORDER
    assert kwargs["order"] == {
        "order_id": body["order_id"],
        "item_id": 2,
        "user_id": "alice",
        "quantity": 3,
        "accepted_at_ms": status["accepted_at_ms"],
    }
    assert sample("order_publish_duration_seconds_count") - published == 1


async def test_same_idempotency_key_reserves_once(broker_api: Api, queue: BrokerQueue) -> None:
    headers = {"Idempotency-Key": "retry-me-0001"}
    first = await broker_api.client.post("/orders", json=order(3, 2), headers=headers)
    again = await asyncio.gather(
        *(broker_api.client.post("/orders", json=order(3, 2), headers=headers) for _ in range(10))
    )
    assert first.status_code == 202
    assert {r.status_code for r in again} == {200}
    assert {r.json()["order_id"] for r in again} == {first.json()["order_id"]}
    assert (await broker_api.client.get("/items/3")).json()["stock"] == CATALOG_STOCK - 2
    assert queue.count(broker_api.settings.order_queue) == 1

    reused = await broker_api.client.post("/orders", json=order(3, 1), headers=headers)
    assert reused.status_code == 422
    assert reused.json()["error"] == "idempotency_key_reused"


async def test_500_concurrent_orders_on_stock_100_accept_exactly_100(
    broker_api: Api, queue: BrokerQueue
) -> None:
    await broker_api.ctx.store.set_stock(5, 100)
    responses = await asyncio.gather(
        *(broker_api.client.post("/orders", json=order(5, 1, f"user{i}")) for i in range(500))
    )
    statuses = [r.status_code for r in responses]
    assert statuses.count(202) == 100
    assert statuses.count(409) == 400
    assert {r.json()["error"] for r in responses if r.status_code == 409} == {"sold_out"}
    assert (await broker_api.ctx.store.get_stocks([5])) == [0]
    assert queue.count(broker_api.settings.order_queue) == 100


async def test_per_user_limit_is_409(broker_api: Api) -> None:
    limit = broker_api.settings.per_user_limit
    ok = await broker_api.client.post("/orders", json=order(4, limit, "bob"))
    assert ok.status_code == 202
    over = await broker_api.client.post("/orders", json=order(4, 1, "bob"))
    assert over.status_code == 409
    assert over.json()["error"] == "limit_exceeded"
    assert (await broker_api.client.post("/orders", json=order(4, 1, "carol"))).status_code == 202


async def test_broker_down_gives_503_and_restores_stock(api: Api) -> None:
    """The default ``api`` fixture's broker refuses connections."""
    store = state_store(api.settings)
    await api.ctx.store.set_stock(8, 10)
    key = {"Idempotency-Key": "broker-down-1"}
    response = await api.client.post("/orders", json=order(8, 2, "dave"), headers=key)
    assert response.status_code == 503
    assert response.json()["error"] == "broker_unavailable"
    assert response.headers["Retry-After"] == str(api.settings.retry_after_seconds)
    assert store.get_stocks([8]) == [10]
    assert store.client.get(store.keys.bought(8, "dave")) is None
    assert store.pending_count([8]) == 0
    # The item's record of the key was released: a retry is a new attempt, not a replay.
    assert store.client.get(store.keys.idempotency(8, "broker-down-1")) is None
    failed = [
        store.get_order(k.decode().rsplit(":", 1)[1])
        for k in store.client.scan_iter(match=store.keys.order(8, "*"))
    ]
    assert [(o["status"], o["reason"][:7]) for o in failed if o] == [("failed", "broker:")]
    store.client.close()


async def test_redis_down_reads_from_postgres_and_refuses_orders(settings: Settings) -> None:
    state = state_store(settings)
    state.set_stock(1, 42)  # on the real Redis: must stay untouched
    down = settings.model_copy(
        update={"redis_url": dead_url("redis") + "0", "cache_redis_url": dead_url("redis") + "1"}
    )
    app = create_app(down)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            item = await client.get("/items/1")
            assert item.status_code == 200
            assert item.json()["stock"] == CATALOG_STOCK  # the database's, Redis being away
            assert sample("api_degraded", dependency="redis") == 1
            assert sample("api_degraded", dependency="redis_cache") == 1

            refused = await client.post("/orders", json=order(1, 1))
            assert refused.status_code == 503
            assert refused.json()["error"] == "state_unavailable"
            assert "Retry-After" in refused.headers

            ready = await client.get("/readyz")
            assert ready.status_code == 200
            assert ready.json()["status"] == "degraded"
            assert ready.json()["dependencies"]["redis"]["ok"] is False
            assert ready.json()["dependencies"]["database"]["ok"] is True
    assert state.get_stocks([1]) == [42]
    state.client.close()


BAD_BODIES: list[tuple[object, int, str]] = [
    ({"item_id": 1, "quantity": 0, "user_id": "u"}, 422, "validation_error"),
    ({"item_id": 1, "quantity": -2, "user_id": "u"}, 422, "validation_error"),
    ({"item_id": 1, "quantity": 6, "user_id": "u"}, 422, "quantity_too_large"),
    ({"item_id": 0, "quantity": 1, "user_id": "u"}, 422, "validation_error"),
    ({"item_id": "x", "quantity": 1, "user_id": "u"}, 422, "validation_error"),
    ({"item_id": 1, "quantity": 1, "user_id": "a:b"}, 422, "validation_error"),
    ({"item_id": 1, "quantity": 1, "user_id": ""}, 422, "validation_error"),
    ({"item_id": 1, "quantity": 1}, 422, "validation_error"),
    ({"item_id": 1, "quantity": 1, "user_id": "u", "extra": 1}, 422, "validation_error"),
    ([1, 2], 422, "validation_error"),
    ({"item_id": 424242, "quantity": 1, "user_id": "u"}, 404, "item_not_found"),
]


MALFORMED: list[tuple[bytes, dict[str, str], int, str]] = [
    (b'{"item_id": 1, "quantity": ', {}, 400, "malformed_json"),
    (b"\xff\xfe", {}, 400, "malformed_json"),
    (b"x" * 5000, {}, 413, "payload_too_large"),
    (b"{}", {"Content-Length": "abc"}, 400, "bad_request"),
    (
        b'{"item_id":1,"quantity":1,"user_id":"u"}',
        {"Idempotency-Key": "short"},
        400,
        "invalid_idempotency_key",
    ),
    (
        b'{"item_id":1,"quantity":1,"user_id":"u"}',
        {"Idempotency-Key": "bad key with space"},
        400,
        "invalid_idempotency_key",
    ),
]


async def test_every_bad_order_request_gets_its_json_4xx(api: Api) -> None:
    """One app for all the cases (each is independent: nothing here is accepted)."""
    for body, status, code in BAD_BODIES:
        response = await api.client.post("/orders", json=body)
        assert (response.status_code, response.json()["error"]) == (status, code), body
    for content, headers, status, code in MALFORMED:
        response = await api.client.post(
            "/orders", content=content, headers={"Content-Type": "application/json", **headers}
        )
        assert (response.status_code, response.json()["error"]) == (status, code), content[:40]
    orders = f"{api.ctx.keys.prefix}{{item:*}}:order:*"
    left = [k async for k in api.ctx.state_redis.scan_iter(match=orders)]
    assert left == [], "a rejected request left order state behind"


async def test_streamed_oversized_body_is_413(api: Api) -> None:
    async def chunks():  # no Content-Length: chunked transfer
        for _ in range(10):
            yield b"x" * 1000

    response = await api.client.post("/orders", content=chunks())
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"


async def test_unknown_and_invalid_order_ids(api: Api) -> None:
    unknown = await api.client.get(f"/orders/{uuid.uuid4()}")
    assert unknown.status_code == 404 and unknown.json()["error"] == "order_not_found"
    invalid = await api.client.get("/orders/not-a-uuid")
    assert invalid.status_code == 422 and invalid.json()["error"] == "validation_error"
