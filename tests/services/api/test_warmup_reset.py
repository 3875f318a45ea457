"""``POST /admin/warmup {ids, reset: true}``: a fresh sale for the named items only, which
never drops the record of an order still accepted or being persisted."""

from __future__ import annotations

import pytest
from apitest_support import ADMIN, CATALOG_STOCK, Api

from services.keys import new_order_id
from services.store import Outcome

pytestmark = pytest.mark.anyio


async def reserve(api: Api, item_id: int, user: str, key: str) -> str:
    """An accepted order, reserved as the api does; its id."""
    order_id = new_order_id(item_id)
    result = await api.ctx.store.reserve(order_id, item_id, user, 1, key, 1)
    assert result.outcome is Outcome.ACCEPTED
    return order_id


async def test_reset_touches_only_the_named_items_and_keeps_orders_in_flight(api: Api) -> None:
    store = api.ctx.store
    await api.client.post("/admin/warmup", json={}, headers=ADMIN)
    in_flight = await reserve(api, 2, "ann", "reset-live-01")
    finished = await reserve(api, 2, "bob", "reset-done-01")
    await store.claim([(2, finished)], 2)
    await store.mark_persisted([(2, finished)], 3)
    claimed = await reserve(api, 2, "cid", "reset-claim-1")
    await store.claim([(2, claimed)], 4)
    elsewhere = await reserve(api, 3, "bob", "reset-other-1")

    response = await api.client.post(
        "/admin/warmup", json={"ids": [2], "reset": True}, headers=ADMIN
    )
    assert response.status_code == 200
    assert response.json()["sale_keys_cleared"] == 3  # finished's hash, key record, bob's count

    assert await store.get_order(finished) is None
    for order_id, status in ((in_flight, "accepted"), (claimed, "persisting")):
        order = await store.get_order(order_id)
        assert order is not None and order["status"] == status
    # The database still has its full stock: the counter holds back the two in flight.
    assert await store.get_stocks([2, 3]) == [CATALOG_STOCK - 2, CATALOG_STOCK - 1]
    order = await store.get_order(elsewhere)
    assert order is not None and order["status"] == "accepted"
    # The in-flight order's key still answers with it: a retry is never a second order.
    retry = await api.client.post(
        "/orders",
        json={"item_id": 2, "quantity": 1, "user_id": "ann"},
        headers={"Idempotency-Key": "reset-live-01"},
    )
    assert (retry.status_code, retry.json()["order_id"]) == (200, in_flight)
