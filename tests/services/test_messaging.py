"""The order queue's type (``ORDER_QUEUE_TYPE``): how the services declare it, and what
RabbitMQ does with it, on the real local broker."""

from __future__ import annotations

import pytest
from amqp.exceptions import PreconditionFailed
from kombu import Connection, Queue

from services.messaging import routing_config
from services.publisher import AmqpPublisher
from services.settings import Settings


def _order_queue(queue_type: str) -> Queue:
    settings = Settings(order_queue="orders", order_queue_type=queue_type)  # type: ignore[arg-type]
    (queue,) = (q for q in routing_config(settings)["task_queues"] if q.name == "orders")
    return queue


def test_classic_is_declared_without_a_type_argument() -> None:
    # Identical to the declaration before the setting existed, so an existing queue
    # is redeclared without a PRECONDITION_FAILED.
    assert _order_queue("classic").queue_arguments == {}
    assert _order_queue("quorum").queue_arguments == {"x-queue-type": "quorum"}


def test_unknown_queue_type_is_refused() -> None:
    with pytest.raises(ValueError, match="order_queue_type"):
        Settings(order_queue_type="stream")  # type: ignore[arg-type]


def test_quorum_queue_is_redeclared_alike_and_its_type_cannot_change(amqp_url: str) -> None:
    with Connection(amqp_url) as conn:
        channel = conn.channel()
        _order_queue("quorum")(channel).declare()
        # Every service declares it the same way: a second declaration is accepted.
        _order_queue("quorum")(conn.channel()).declare()
        # The type is fixed at declaration: asking for a classic queue of that name is
        # refused (only deleting the queue changes its type; a policy cannot).
        classic = _order_queue("quorum")
        classic.queue_arguments = {"x-queue-type": "classic"}
        with pytest.raises(PreconditionFailed):
            classic(conn.channel()).declare()


@pytest.fixture
def anyio_backend() -> str:
    """The api runs on asyncio."""
    return "asyncio"


@pytest.mark.anyio
async def test_the_api_publisher_declares_the_configured_type(amqp_url: str) -> None:
    """The api's aio-pika publisher declares the order queue as the worker does: with
    ``ORDER_QUEUE_TYPE=quorum`` a worker's declaration afterwards is accepted."""
    publisher = AmqpPublisher(Settings(broker_url=amqp_url, order_queue_type="quorum"))
    try:
        await publisher.start()
        await publisher.publish_order(
            {"order_id": "o-1", "item_id": 1, "user_id": "u", "quantity": 1, "accepted_at_ms": 1}
        )
    finally:
        await publisher.close()
    with Connection(amqp_url) as conn:
        _order_queue("quorum")(conn.channel()).declare()
        with pytest.raises(PreconditionFailed):
            _order_queue("classic")(conn.channel()).declare()
