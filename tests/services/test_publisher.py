"""The asyncio publisher against the real RabbitMQ: confirms, nacks, a broker that is down,
hangs or cuts the connection mid-flow (through ``tests.netfault``), and reconnection."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

import pytest
from kombu import Connection
from kombu.serialization import loads

from services.messaging import PERSIST_ORDER
from services.publisher import AmqpPublisher, PublishError
from services.settings import Settings
from tests.netfault import FaultProxy
from tests.support import free_port, set_policy, wait_until_async

pytestmark = pytest.mark.anyio

QUEUE = "orders"
NEVER = 60.0
"""A confirm time-out no test may wait out: failing before it proves "at once"."""


@pytest.fixture
def anyio_backend() -> str:
    """The api runs on asyncio."""
    return "asyncio"


def order() -> dict[str, Any]:
    """A ``persist_order`` payload."""
    return {
        "order_id": str(uuid.uuid4()),
        "item_id": 1,
        "user_id": "alice",
        "quantity": 1,
        "accepted_at_ms": 1,
    }


def through(proxy: FaultProxy, amqp_url: str) -> str:
    """``amqp_url`` (same vhost) via the proxy."""
    vhost = urlsplit(amqp_url).path
    return f"amqp://guest:guest@127.0.0.1:{proxy.port}{vhost}"


@pytest.fixture
async def publishers() -> AsyncIterator[list[AmqpPublisher]]:
    """Publishers the test started; closed after it."""
    made: list[AmqpPublisher] = []
    yield made
    for publisher in made:
        await publisher.close()


async def started(made: list[AmqpPublisher], url: str, timeout: float = NEVER) -> AmqpPublisher:
    """A publisher on ``url``, started, remembered for closing."""
    publisher = AmqpPublisher(Settings(broker_url=url, publish_timeout_seconds=timeout))
    made.append(publisher)
    await publisher.start()
    return publisher


def queued(amqp_url: str) -> int:
    """Messages ready in the order queue."""
    with Connection(amqp_url) as conn:
        return int(conn.default_channel.queue_declare(QUEUE, passive=True).message_count)


def drain(amqp_url: str) -> list[Any]:
    """Every message in the order queue, removed."""
    with Connection(amqp_url) as conn:
        channel = conn.default_channel
        messages = []
        while (message := channel.basic_get(QUEUE, no_ack=True)) is not None:
            messages.append(message)
        return messages


async def test_many_publishes_in_flight_are_each_confirmed_as_celery_messages(
    amqp_url: str, publishers: list[AmqpPublisher]
) -> None:
    publisher = await started(publishers, amqp_url)
    orders = [order() for _ in range(200)]
    await asyncio.gather(*(publisher.publish_order(o) for o in orders))
    messages = drain(amqp_url)
    assert len(messages) == 200
    first = messages[0]
    assert first.headers["task"] == PERSIST_ORDER
    assert first.headers["id"] == first.properties["correlation_id"]
    assert first.properties["delivery_mode"] == 2
    args, kwargs, embed = loads(first.body, first.content_type, first.content_encoding)
    assert (args, set(embed)) == ([], {"callbacks", "errbacks", "chain", "chord"})
    assert {m.headers["id"] for m in messages} == {m.properties["correlation_id"] for m in messages}
    received = sorted(loads(m.body, m.content_type, m.content_encoding)[1]["order"]["order_id"]
                      for m in messages)  # fmt: skip
    assert received == sorted(o["order_id"] for o in orders)
    assert kwargs["order"] in orders


async def test_a_nack_is_a_publish_error(amqp_url: str, publishers: list[AmqpPublisher]) -> None:
    vhost = urlsplit(amqp_url).path.lstrip("/")
    publisher = await started(publishers, amqp_url)
    set_policy(vhost, "full", f"^{QUEUE}$", '{"max-length": 1, "overflow": "reject-publish"}')
    await publisher.publish_order(order())

    async def second_is_nacked() -> bool:
        # The policy reaches the queue asynchronously: until it does, publishes are kept.
        try:
            await publisher.publish_order(order())
        except PublishError as exc:
            assert "nack" in str(exc)
            return True
        return False

    for _ in range(200):
        if await second_is_nacked():
            break
    else:
        pytest.fail("no publish was nacked by a full reject-publish queue")
    assert publisher.connected  # a nack is about one message, not the connection


async def test_broker_down_fails_at_once_and_reconnects_when_it_is_back(
    amqp_url: str, publishers: list[AmqpPublisher], fault_proxy: Callable[[str, int], FaultProxy]
) -> None:
    proxy = fault_proxy("127.0.0.1", 5672)
    proxy.refuse()
    publisher = await started(publishers, through(proxy, amqp_url))
    assert not publisher.connected
    with pytest.raises(PublishError, match="unreachable"):
        await asyncio.wait_for(publisher.publish_order(order()), NEVER / 10)
    with pytest.raises(PublishError):
        await publisher.check()
    proxy.heal()
    await wait_until_async(lambda: publisher.connected, 30, "the publisher to reconnect")
    await publisher.publish_order(order())
    await publisher.check()
    assert len(drain(amqp_url)) == 1


async def test_unreachable_port_fails_at_once(publishers: list[AmqpPublisher]) -> None:
    publisher = await started(publishers, f"amqp://guest:guest@127.0.0.1:{free_port()}/")
    with pytest.raises(PublishError, match="unreachable"):
        await asyncio.wait_for(publisher.publish_order(order()), NEVER / 10)


async def test_a_hung_broker_times_out_then_fails_fast_until_it_answers_again(
    amqp_url: str, publishers: list[AmqpPublisher], fault_proxy: Callable[[str, int], FaultProxy]
) -> None:
    proxy = fault_proxy("127.0.0.1", 5672)
    publisher = await started(publishers, through(proxy, amqp_url), timeout=1.0)
    await publisher.publish_order(order())
    proxy.blackhole()
    with pytest.raises(PublishError, match="not confirmed"):
        await publisher.publish_order(order())
    # The time-out marked the broker down: the next order is refused without waiting.
    assert not publisher.connected
    with pytest.raises(PublishError, match="unreachable"):
        await publisher.publish_order(order())
    proxy.heal()
    await wait_until_async(lambda: publisher.connected, 30, "the publisher to reconnect")
    await publisher.publish_order(order())
    # The first and the last were confirmed; the one that timed out may or may not have
    # reached the queue (the api cancels such an order, and the worker skips it).
    assert 2 <= len(drain(amqp_url)) <= 3


async def test_connection_cut_fails_every_publish_in_flight_then_reconnects(
    amqp_url: str, publishers: list[AmqpPublisher], fault_proxy: Callable[[str, int], FaultProxy]
) -> None:
    proxy = fault_proxy("127.0.0.1", 5672)
    publisher = await started(publishers, through(proxy, amqp_url))
    await publisher.publish_order(order())
    proxy.hold_replies()  # the confirms are held: the publishes stay in flight
    in_flight = [asyncio.ensure_future(publisher.publish_order(order())) for _ in range(20)]
    await wait_until_async(lambda: queued(amqp_url) == 21, 30, "the 20 messages to arrive")
    assert not any(task.done() for task in in_flight)
    proxy.cut()
    results = await asyncio.wait_for(asyncio.gather(*in_flight, return_exceptions=True), NEVER / 10)
    assert all(isinstance(r, PublishError) for r in results), results
    proxy.heal()
    await wait_until_async(lambda: publisher.connected, 30, "the publisher to reconnect")
    await publisher.publish_order(order())
    assert proxy.connections == 1
