"""What the api, the worker and the reconciler agree on about messages: task names,
queue declarations and routing, in one place.

Every process that declares a queue must declare it identically (RabbitMQ refuses a
redeclaration with other arguments), and the publisher's routes must be the worker's.
"""

from __future__ import annotations

from typing import Any

from kombu import Exchange, Queue

from services.settings import Settings

PERSIST_ORDER = "services.worker.tasks.persist_order"
"""``persist_order(order)``, ``order = {order_id, item_id, user_id, quantity, accepted_at_ms}``."""

APPLY_ITEM_UPDATE = "services.worker.tasks.apply_item_update"
"""``apply_item_update(update)``, ``update = {item_id, name?, price_cents?, stock?, version}``."""


def durable_queue(name: str) -> Queue:
    """A durable classic queue on its own direct exchange, as Celery declares a named queue."""
    return Queue(name, Exchange(name, type="direct", durable=True), routing_key=name, durable=True)


def routing_config(settings: Settings) -> dict[str, Any]:
    """Celery settings shared by every app that publishes or consumes the project's tasks:
    durable queues, task routes, publisher confirms (RabbitMQ may drop unconfirmed
    messages), JSON only."""
    return {
        "task_queues": (
            durable_queue(settings.order_queue),
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
