"""Warmup, queued item updates, health, readiness and the metrics endpoint."""

from __future__ import annotations

import pytest
from apitest_support import ADMIN, CATALOG_ITEMS, CATALOG_STOCK, Api, BrokerQueue
from prometheus_client.parser import text_string_to_metric_families

from services.messaging import APPLY_ITEM_UPDATE

pytestmark = pytest.mark.anyio


async def test_warmup_fills_cache_and_keeps_live_stock_unless_reset(api: Api) -> None:
    await api.ctx.store.set_stock(1, 3)  # a running sale
    body = (await api.client.post("/admin/warmup", json={}, headers=ADMIN)).json()
    assert body["items_cached"] == CATALOG_ITEMS and body["missing"] == 0
    assert body["stock_counters_set"] == CATALOG_ITEMS - 1
    assert await api.ctx.store.get_stocks([1, 2]) == [3, CATALOG_STOCK]
    assert await api.ctx.cache_redis.exists(*(api.ctx.keys.item(i) for i in (1, 30))) == 2

    some = (await api.client.post("/admin/warmup", json={"ids": [1, 99999]}, headers=ADMIN)).json()
    assert (some["items_cached"], some["missing"]) == (1, 1)

    reset = (await api.client.post("/admin/warmup", json={"reset": True}, headers=ADMIN)).json()
    assert reset["stock_counters_set"] == CATALOG_ITEMS
    assert await api.ctx.store.get_stocks([1]) == [CATALOG_STOCK]

    bad = await api.client.post("/admin/warmup", json={"ids": ["x"]}, headers=ADMIN)
    assert (bad.status_code, bad.json()["error"]) == (422, "validation_error")


async def test_item_update_is_published_with_increasing_versions(
    broker_api: Api, queue: BrokerQueue
) -> None:
    first = await broker_api.client.put("/items/2", json={"price_cents": 999}, headers=ADMIN)
    second = await broker_api.client.put(
        "/items/2", json={"name": "New", "stock": 7}, headers=ADMIN
    )
    assert (first.status_code, second.status_code) == (202, 202)
    assert second.json()["version"] > first.json()["version"]
    tasks = queue.tasks(broker_api.settings.item_update_queue)
    assert [name for name, _ in tasks] == [APPLY_ITEM_UPDATE] * 2
    assert tasks[0][1]["update"] == {
        "item_id": 2,
        "price_cents": 999,
        "version": first.json()["version"],
    }
    assert tasks[1][1]["update"] == {
        "item_id": 2,
        "name": "New",
        "stock": 7,
        "version": second.json()["version"],
    }


async def test_bad_item_updates(api: Api) -> None:
    cases = [
        ("/items/2", {}, 422, "validation_error"),
        ("/items/2", {"price_cents": -1}, 422, "validation_error"),
        ("/items/2", {"name": ""}, 422, "validation_error"),
        ("/items/777777", {"name": "x"}, 404, "item_not_found"),
        ("/items/2", {"name": "x"}, 503, "broker_unavailable"),  # this app's broker is down
    ]
    for path, body, status, code in cases:
        response = await api.client.put(path, json=body, headers=ADMIN)
        assert (response.status_code, response.json()["error"]) == (status, code), body


async def test_readyz_reports_each_dependency(broker_api: Api, api: Api) -> None:
    assert (await broker_api.client.get("/healthz")).json() == {"status": "ok"}
    ready = (await broker_api.client.get("/readyz")).json()
    assert ready["status"] == "ok"
    assert set(ready["dependencies"]) == {"redis", "redis_cache", "database", "broker"}
    assert all(d["ok"] for d in ready["dependencies"].values())

    degraded = await api.client.get("/readyz")  # broker down
    assert degraded.status_code == 200
    assert degraded.json()["status"] == "degraded"
    assert degraded.json()["dependencies"]["broker"]["ok"] is False
    assert degraded.json()["dependencies"]["broker"]["error"]


def _exposed(text: str, name: str, **labels: str) -> float:
    """The value of the sample carrying exactly ``labels`` in a /metrics exposition (0 when
    absent)."""
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return float(found.value)
    return 0.0


async def test_metrics_expose_route_templates_and_cache_counters(api: Api) -> None:
    """The counters move by what the requests did (deltas: the registry outlives a test)."""
    route = {"method": "GET", "route": "/items/{item_id}", "status": "200"}
    before = (await api.client.get("/metrics")).text
    await api.client.get("/items/12")  # a miss, loaded from the database
    await api.client.get("/items/12")  # then served from the near cache
    await api.client.get("/no/such/path/12345")
    after = (await api.client.get("/metrics")).text

    def moved(name: str, **labels: str) -> float:
        return _exposed(after, name, **labels) - _exposed(before, name, **labels)

    assert moved("http_requests_total", **route) == 2
    assert (
        moved("http_requests_total", method="GET", route="unmatched", status="404") == 1
        and "12345" not in after
    )
    assert moved("cache_lookups_total", result="near_hit") == 1
    assert moved("cache_db_loads_total") == 1
    assert moved("http_request_duration_seconds_count", method="GET", route=route["route"]) == 2


async def test_openapi_documents_the_error_shape(api: Api) -> None:
    schema = (await api.client.get("/openapi.json")).json()
    assert "ErrorBody" in schema["components"]["schemas"]
    assert {"/items/{item_id}", "/orders", "/orders/{order_id}", "/admin/warmup"} <= set(
        schema["paths"]
    )
