"""What the api, the worker and the reconciler agree on about messages: task names,
queue declarations and routing, in one place.

Every process that declares a queue must declare it identically (RabbitMQ refuses a
redeclaration with other arguments), and the publisher's routes must be the worker's.
"""

from __future__ import annotations

from typing import Any, Literal

from kombu import Exchange, Queue

from services.settings import Settings

PERSIST_ORDER = "services.worker.tasks.persist_order"
"""``persist_order(order)``, ``order = {order_id, item_id, user_id, quantity, accepted_at_ms}``."""

APPLY_ITEM_UPDATE = "services.worker.tasks.apply_item_update"
"""``apply_item_update(update)``, ``update = {item_id, name?, price_cents?, stock?, version}``."""


def durable_queue(name: str, queue_type: Literal["classic", "quorum"] = "classic") -> Queue:
    """A durable queue on its own direct exchange, as Celery declares a named queue.

    A classic queue is declared without ``x-queue-type`` (as before the setting existed),
    so a queue declared by an older release is redeclared with identical arguments.
    RabbitMQ fixes a queue's type at declaration: switching an existing queue to quorum
    means deleting it (once drained) and letting the services declare it anew.
    """
    arguments = {} if queue_type == "classic" else {"x-queue-type": queue_type}
    return Queue(
        name,
        Exchange(name, type="direct", durable=True),
        routing_key=name,
        durable=True,
        queue_arguments=arguments,
    )


def routing_config(settings: Settings) -> dict[str, Any]:
    """Celery settings shared by every app that publishes or consumes the project's tasks:
    durable queues, task routes, publisher confirms (RabbitMQ may drop unconfirmed
    messages), JSON only."""
    return {
        "task_queues": (
            durable_queue(settings.order_queue, settings.order_queue_type),
            durable_queue(settings.item_update_queue),
        ),
        "task_routes": {
            PERSIST_ORDER: {"queue": settings.order_queue},
            APPLY_ITEM_UPDATE: {"queue": settings.item_update_queue},
        },
        "broker_transport_options": {"confirm_publish": True},
        "task_serializer": "json",
        "task_ignore_result": True,
    }
