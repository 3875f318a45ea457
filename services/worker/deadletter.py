"""The dead-letter queue: where messages that can never succeed are kept, with the reason.

Chosen over RabbitMQ's dead-letter exchange (``x-dead-letter-exchange`` on the work
queues) because:

- Celery acknowledges a task that raised, so a DLX only sees a message if the task
  rejects it by hand; publishing explicitly is just as much code and keeps the reason
  (a DLX only adds ``x-death`` headers, not why the order was impossible);
- queue arguments must be identical wherever a queue is declared (RabbitMQ refuses a
  redeclaration with other arguments), so a DLX would couple the api's publisher, the
  worker and every tool that declares ``orders`` to one exact declaration.

The message is published with publisher confirms *before* the original is acknowledged,
so a crash in between leaves the original to be redelivered (a possible duplicate in the
DLQ, keyed by ``order_id``), never a lost message.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from celery import Celery

from services.messaging import durable_queue


def publish_dead_letter(
    app: Celery,
    queue_name: str,
    *,
    kind: str,
    payload: Mapping[str, Any],
    reason: str,
    task_id: str | None = None,
) -> None:
    """Publish ``payload`` to the dead-letter queue and wait for the broker's confirm."""
    queue = durable_queue(queue_name)
    body = {
        "kind": kind,
        "payload": dict(payload),
        "reason": reason,
        "task_id": task_id,
        "dead_lettered_at_ms": int(time.time() * 1000),
    }
    with app.producer_or_acquire() as producer:
        producer.publish(
            body,
            exchange=queue.exchange,
            routing_key=queue.routing_key,
            declare=[queue],
            serializer="json",
            delivery_mode=2,
            retry=True,
            retry_policy={"max_retries": 5, "interval_start": 0.2, "interval_step": 0.5},
        )
