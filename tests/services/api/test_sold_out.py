"""Sold-out items answered from memory in every api process, and never while stock is
left: two app instances on one Redis prefix stand for two api processes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from apitest_support import ADMIN, Api, running_api, sample

from services.settings import Settings
from tests.support import wait_until_async

pytestmark = pytest.mark.anyio

ITEM = 11


def order(user: str, quantity: int = 1) -> dict[str, object]:
    """An order of ``quantity`` units of ``ITEM``."""
    return {"item_id": ITEM, "quantity": quantity, "user_id": user}


@pytest.fixture
async def two_apis(broker_settings: Settings) -> AsyncIterator[tuple[Api, Api]]:
    """Two api instances sharing the broker, database and Redis prefix."""
    async for first in running_api(broker_settings):
        async for second in running_api(broker_settings):
            yield first, second


async def test_the_last_unit_flags_the_item_in_every_process(two_apis: tuple[Api, Api]) -> None:
    a, b = two_apis
    await a.ctx.store.set_stock(ITEM, 1)
    assert (await a.client.post("/orders", json=order("alice"))).status_code == 202
    assert a.ctx.sold_out.is_sold_out(ITEM)
    await wait_until_async(lambda: b.ctx.sold_out.is_sold_out(ITEM), 10, "b to hear it")
    from_memory = sample("orders_sold_out_from_memory_total")

    answer = await b.client.post("/orders", json=order("bob"))

    assert answer.status_code == 409
    assert answer.json()["error"] == "sold_out"
    assert sample("orders_sold_out_from_memory_total") == from_memory + 1


async def test_raising_the_stock_clears_the_flag_everywhere(two_apis: tuple[Api, Api]) -> None:
    a, b = two_apis
    await a.ctx.store.set_stock(ITEM, 0)
    assert (await a.client.post("/orders", json=order("alice"))).status_code == 409
    await wait_until_async(lambda: b.ctx.sold_out.is_sold_out(ITEM), 10, "b to hear it")
    # What the worker does after an admin update raised the stock: the Redis counter,
    # then the item's invalidation.
    await a.ctx.store.set_stock(ITEM, 2)
    await a.ctx.cache.invalidate([ITEM])
    await wait_until_async(
        lambda: not (a.ctx.sold_out.is_sold_out(ITEM) or b.ctx.sold_out.is_sold_out(ITEM)),
        10,
        "both to forget it",
    )
    assert (await b.client.post("/orders", json=order("bob"))).status_code == 202
    assert (await a.client.post("/orders", json=order("carol"))).status_code == 202


async def test_a_warmup_clears_every_flag(two_apis: tuple[Api, Api]) -> None:
    a, b = two_apis
    await a.ctx.store.set_stock(ITEM, 0)
    assert (await b.client.post("/orders", json=order("alice"))).status_code == 409
    await wait_until_async(lambda: a.ctx.sold_out.is_sold_out(ITEM), 10, "a to hear it")
    warm = await a.client.post("/admin/warmup", json={"reset": True}, headers=ADMIN)
    assert warm.status_code == 200
    await wait_until_async(
        lambda: not (a.ctx.sold_out.is_sold_out(ITEM) or b.ctx.sold_out.is_sold_out(ITEM)),
        10,
        "both to forget it",
    )
    assert (await b.client.post("/orders", json=order("bob"))).status_code == 202


async def test_stock_too_low_for_one_order_is_not_sold_out(broker_api: Api) -> None:
    a = broker_api
    await a.ctx.store.set_stock(ITEM, 2)
    refused = await a.client.post("/orders", json=order("alice", quantity=3))
    assert refused.status_code == 409
    assert not a.ctx.sold_out.is_sold_out(ITEM)
    assert (await a.client.post("/orders", json=order("alice", quantity=2))).status_code == 202


async def test_orders_alternating_between_processes_sell_exactly_the_stock(
    two_apis: tuple[Api, Api],
) -> None:
    """No false sold-out: while stock is left every order is accepted, in either process."""
    a, b = two_apis
    stock = 12
    await a.ctx.store.set_stock(ITEM, stock)
    statuses = [
        (await (a, b)[i % 2].client.post("/orders", json=order(f"user{i}"))).status_code
        for i in range(stock + 6)
    ]
    assert statuses == [202] * stock + [409] * 6
    assert await a.ctx.store.get_stocks([ITEM]) == [0]


@pytest.fixture
async def short_flag_api(broker_settings: Settings) -> AsyncIterator[Api]:
    """The api whose sold-out flags live 0.2 s."""
    async for api in running_api(broker_settings.model_copy(update={"sold_out_ttl_seconds": 0.2})):
        yield api


async def test_stock_given_back_without_a_message_is_seen_after_the_flags_lifetime(
    short_flag_api: Api,
) -> None:
    """A cancelled order gives its stock back without any announcement: the flag expires."""
    api, board = short_flag_api, short_flag_api.ctx.sold_out
    await api.ctx.store.set_stock(ITEM, 0)
    assert (await api.client.post("/orders", json=order("alice"))).status_code == 409
    assert board.is_sold_out(ITEM)
    await api.ctx.store.set_stock(ITEM, 1)
    await wait_until_async(lambda: not board.is_sold_out(ITEM), 10, "the flag to expire")
    assert (await api.client.post("/orders", json=order("bob"))).status_code == 202


async def test_an_idempotent_retry_gets_its_order_back_after_the_sell_out(
    two_apis: tuple[Api, Api],
) -> None:
    a, b = two_apis
    await a.ctx.store.set_stock(ITEM, 1)
    key = {"Idempotency-Key": "retry-after-sellout"}
    first = await a.client.post("/orders", json=order("alice"), headers=key)
    assert first.status_code == 202
    await wait_until_async(lambda: b.ctx.sold_out.is_sold_out(ITEM), 10, "b to hear it")
    retry = await b.client.post("/orders", json=order("alice"), headers=key)
    assert retry.status_code == 200
    assert retry.json()["order_id"] == first.json()["order_id"]


async def test_the_last_unit_given_back_by_a_failed_publish_is_not_sold_out(api: Api) -> None:
    """The ``api`` fixture's broker refuses connections: the last unit is reserved (the
    item flagged), the publish fails, the cancel gives the unit back and drops the flag."""
    await api.ctx.store.set_stock(ITEM, 1)
    refused = await api.client.post("/orders", json=order("alice"))
    assert refused.status_code == 503
    assert refused.json()["error"] == "broker_unavailable"
    assert await api.ctx.store.get_stocks([ITEM]) == [1]
    assert not api.ctx.sold_out.is_sold_out(ITEM)
