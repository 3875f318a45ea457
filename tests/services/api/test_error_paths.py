"""Error answers no other test reaches, each against the real services with one of them
made unreachable (a closed port): readiness 503 when neither store answers, a warm-up that
cannot reach the state Redis, an order for a never-warmed item while PostgreSQL is down,
and an Idempotency-Key reused for another item or user."""

from __future__ import annotations

import contextlib

import pytest
from apitest_support import ADMIN, Api, closed_port, dead_url, running_api
from psycopg.conninfo import make_conninfo

from services.settings import Settings

pytestmark = pytest.mark.anyio

running = contextlib.asynccontextmanager(running_api)


def _database_down(settings: Settings) -> str:
    return make_conninfo(settings.database_url, host="127.0.0.1", port=closed_port())


async def test_readyz_is_503_unavailable_when_neither_redis_nor_postgres_answers(
    settings: Settings,
) -> None:
    down = settings.model_copy(
        update={
            "redis_url": dead_url("redis") + "0",
            "cache_redis_url": dead_url("redis") + "1",
            "database_url": _database_down(settings),
        }
    )
    async with running(down) as api:
        ready = await api.client.get("/readyz")
    assert ready.status_code == 503
    body = ready.json()
    assert body["status"] == "unavailable"
    assert {name for name, dep in body["dependencies"].items() if not dep["ok"]} == {
        "redis",
        "redis_cache",
        "database",
        "broker",
    }


async def test_warmup_that_cannot_reach_the_state_redis_is_503_warmup_failed(
    settings: Settings,
) -> None:
    down = settings.model_copy(update={"redis_url": dead_url("redis") + "0"})
    async with running(down) as api:
        failed = await api.client.post("/admin/warmup", json={"ids": [1, 2]}, headers=ADMIN)
    assert failed.status_code == 503, failed.text
    assert failed.json()["error"] == "warmup_failed"
    assert failed.headers["Retry-After"] == str(settings.retry_after_seconds)


async def test_an_order_for_a_never_warmed_item_while_postgres_is_down_is_503(
    settings: Settings,
) -> None:
    """No stock counter yet: only the database can say whether the item exists."""
    down = settings.model_copy(update={"database_url": _database_down(settings)})
    async with running(down) as api:
        refused = await api.client.post(
            "/orders", json={"item_id": 5, "quantity": 1, "user_id": "dana"}
        )
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"] == "database_unavailable"
        assert refused.headers["Retry-After"] == str(settings.retry_after_seconds)
        assert await api.ctx.store.get_stocks([5]) == [None]  # nothing was reserved


@pytest.mark.parametrize(
    "other", [{"item_id": 4}, {"user_id": "erin"}], ids=["another-item", "another-user"]
)
async def test_a_key_reused_for_another_item_or_user_is_422_and_changes_nothing(
    broker_api: Api, other: dict[str, object]
) -> None:
    headers = {"Idempotency-Key": "reused-key-0001"}
    first_body = {"item_id": 3, "quantity": 1, "user_id": "dave"}
    first = await broker_api.client.post("/orders", json=first_body, headers=headers)
    assert first.status_code == 202, first.text
    stocks = await broker_api.ctx.store.get_stocks([3, 4])

    reused = await broker_api.client.post("/orders", json={**first_body, **other}, headers=headers)

    assert reused.status_code == 422, reused.text
    assert reused.json()["error"] == "idempotency_key_reused"
    assert await broker_api.ctx.store.get_stocks([3, 4]) == stocks
    again = await broker_api.client.post("/orders", json=first_body, headers=headers)
    assert (again.status_code, again.json()["order_id"]) == (200, first.json()["order_id"])
