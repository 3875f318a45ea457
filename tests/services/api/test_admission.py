"""Admission control: beyond a gate's limit of requests in flight, ``503 overloaded`` with
Retry-After at once, counted; the admitted ones finish normally and free their places."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from apitest_support import Api, running_api, sample
from starlette.types import Receive, Scope, Send

from services.api.admission import AdmissionMiddleware, Gate
from services.settings import Settings
from tests.netfault import FaultProxy
from tests.support import wait_until_async

pytestmark = pytest.mark.anyio

LIMIT = 3


def order(user: str) -> dict[str, object]:
    """An order of one unit of item 1."""
    return {"item_id": 1, "quantity": 1, "user_id": user}


@pytest.fixture
async def held_api(
    broker_settings: Settings, fault_proxy: Callable[[str, int], FaultProxy]
) -> AsyncIterator[tuple[Api, FaultProxy]]:
    """The api with an order limit of ``LIMIT``, its broker behind a fault proxy."""
    proxy = fault_proxy("127.0.0.1", 5672)
    vhost = broker_settings.broker_url.rsplit("/", 1)[1]
    settings = broker_settings.model_copy(
        update={
            "broker_url": f"amqp://guest:guest@127.0.0.1:{proxy.port}/{vhost}",
            "order_admission_limit": LIMIT,
            "publish_timeout_seconds": 60.0,
        }
    )
    async for api in running_api(settings):
        yield api, proxy


async def test_orders_beyond_the_limit_get_503_overloaded_at_once(
    held_api: tuple[Api, FaultProxy],
) -> None:
    api, proxy = held_api
    assert (await api.client.post("/orders", json=order("first"))).status_code == 202
    proxy.hold_replies()  # confirms are held: admitted orders stay in flight
    admitted = [
        asyncio.create_task(api.client.post("/orders", json=order(f"u{i}"))) for i in range(LIMIT)
    ]
    gate = next(g for g in api_gates(api) if g.name == "orders")
    await wait_until_async(lambda: gate.in_flight == LIMIT, 30, "the gate to fill")
    rejected_before = sample("api_admission_rejected_total", gate="orders")
    labels = {"method": "POST", "route": "/orders", "status": "503"}
    answered_503 = sample("http_requests_total", **labels)

    refused = await asyncio.wait_for(api.client.post("/orders", json=order("late")), 10)

    assert refused.status_code == 503
    assert refused.json()["error"] == "overloaded"
    assert refused.headers["Retry-After"] == str(api.settings.retry_after_seconds)
    assert sample("api_admission_rejected_total", gate="orders") == rejected_before + 1
    assert sample("http_requests_total", **labels) == answered_503 + 1
    assert not any(task.done() for task in admitted)
    # Nothing was reserved for the refused order: only the first and the admitted ones.
    assert await api.ctx.store.get_stocks([1]) == [100 - 1 - LIMIT]
    proxy.release_replies()
    assert [r.status_code for r in await asyncio.gather(*admitted)] == [202] * LIMIT
    assert gate.in_flight == 0
    assert (await api.client.post("/orders", json=order("after"))).status_code == 202


def api_gates(api: Api) -> list[Gate]:
    """The gates of the running app's admission middleware."""
    app = api.client._transport.app  # type: ignore[attr-defined]
    stack = app.middleware_stack
    while not isinstance(stack, AdmissionMiddleware):
        stack = stack.app
    return stack.gates


async def test_reads_have_their_own_gate_and_other_routes_none() -> None:
    """The middleware alone, around an app whose requests wait for a release."""
    release = asyncio.Event()

    async def slow_app(scope: Scope, receive: Receive, send: Send) -> None:
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    gates = [Gate("orders", "POST", "/orders", 1, exact=True), Gate("reads", "GET", "/items", 2)]
    app = AdmissionMiddleware(slow_app, gates, retry_after_seconds=1)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api")
    async with client:
        reads = [asyncio.create_task(client.get(f"/items/{i}")) for i in range(2)]
        other = asyncio.create_task(client.get("/healthz"))
        await wait_until_async(lambda: gates[1].in_flight == 2, 10, "two reads in flight")
        refused = await client.get("/items?ids=1,2")
        order_admitted = asyncio.create_task(client.post("/orders", json={}))
        await wait_until_async(lambda: gates[0].in_flight == 1, 10, "an order in flight")
        release.set()
        statuses = [r.status_code for r in await asyncio.gather(*reads, other, order_admitted)]
    assert refused.status_code == 503
    assert refused.json()["error"] == "overloaded"
    assert refused.headers["Retry-After"] == "1"
    assert statuses == [200, 200, 200, 200]
    assert [g.in_flight for g in gates] == [0, 0]


async def test_a_request_beyond_the_limit_takes_the_first_place_freed_within_its_wait() -> None:
    gate = Gate("orders", "POST", "/orders", 1, exact=True, wait_seconds=30.0)
    assert await gate.enter()
    waiting = asyncio.create_task(gate.enter())
    await wait_until_async(lambda: len(gate.waiting) == 1, 10, "the second to queue")
    assert not waiting.done()
    gate.leave()  # the place passes to the waiting request, it is not freed
    assert await waiting
    assert gate.in_flight == 1
    gate.leave()
    assert gate.in_flight == 0


async def test_a_request_that_waits_in_vain_is_refused_and_holds_no_place() -> None:
    gate = Gate("orders", "POST", "/orders", 1, exact=True, wait_seconds=0.05)
    assert await gate.enter()
    assert not await gate.enter()
    gate.leave()
    assert gate.in_flight == 0
    assert await gate.enter()
