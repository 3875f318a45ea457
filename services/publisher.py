"""Publishing Celery task messages to RabbitMQ with publisher confirms, off the event loop.

A confirmed publish blocks until the broker has the message, so it runs on a small pool of
threads, each with its own kombu connection and producer (a connection is not
thread-safe). The messages are ordinary Celery task messages (protocol 2, JSON), sent by a
Celery app configured like the worker's, so the worker consumes them unchanged:

- ``services.worker.tasks.persist_order(order)`` with ``order = {order_id, item_id,
  user_id, quantity, accepted_at_ms}`` on ``Settings.order_queue``;
- ``services.worker.tasks.apply_item_update(update)`` with ``update = {item_id, name?,
  price_cents?, stock?, version}`` on ``Settings.item_update_queue``.

Queues are declared durable (same definition as the worker's) before the first publish, so
a message published before any worker started is kept; messages are persistent.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from celery import Celery
from kombu import Connection

from services.messaging import APPLY_ITEM_UPDATE, PERSIST_ORDER, routing_config
from services.metrics import ORDER_PUBLISH_LATENCY
from services.settings import Settings

log = logging.getLogger(__name__)


class PublishError(Exception):
    """The broker did not confirm the message (unreachable, nacked or timed out)."""


def make_celery_app(settings: Settings) -> Celery:
    """A publish-only Celery app whose queues and routes match the worker's."""
    app = Celery("flashsale-api", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        **routing_config(settings),
        # The caller decides what a failure means (compensate, 503): no hidden retries.
        task_publish_retry=False,
    )
    return app


class TaskPublisher:
    """Confirmed publishes from a pool of threads, each owning one broker connection."""

    def __init__(self, settings: Settings, app: Celery | None = None) -> None:
        self.app = app or make_celery_app(settings)
        self.order_queue = settings.order_queue
        self.item_update_queue = settings.item_update_queue
        self.timeout = settings.publish_timeout_seconds
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=settings.publish_threads, thread_name_prefix="publish"
        )
        self._local = threading.local()
        self._connections: list[Connection] = []
        self._lock = threading.Lock()

    async def publish_order(self, order: Mapping[str, Any]) -> None:
        """Publish ``persist_order(order)`` and wait for the broker's confirm."""
        started = time.perf_counter()
        await self._publish(PERSIST_ORDER, {"order": dict(order)}, self.order_queue)
        ORDER_PUBLISH_LATENCY.observe(time.perf_counter() - started)

    async def publish_item_update(self, update: Mapping[str, Any]) -> None:
        """Publish ``apply_item_update(update)`` and wait for the broker's confirm."""
        await self._publish(APPLY_ITEM_UPDATE, {"update": dict(update)}, self.item_update_queue)

    async def check(self) -> None:
        """Raise :class:`PublishError` unless the broker accepts a connection."""
        await self._in_thread(self._connection)

    async def _publish(self, name: str, kwargs: dict[str, Any], queue: str) -> None:
        await self._in_thread(self._publish_blocking, name, kwargs, queue)

    async def _in_thread(self, fn: Any, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, fn, *args)
        try:
            # The thread enforces the timeout itself; this bound only guards against a
            # call stuck somewhere kombu's timeouts do not reach.
            return await asyncio.wait_for(future, self.timeout + 1.0)
        except TimeoutError as exc:
            raise PublishError(f"no broker answer within {self.timeout + 1.0:.1f}s") from exc

    def _connection(self) -> Connection:
        """This thread's connection, connected (or :class:`PublishError`)."""
        conn: Connection | None = getattr(self._local, "connection", None)
        if conn is None:
            conn = self.app.connection_for_write(
                connect_timeout=self.timeout, transport_options={"confirm_publish": True}
            )
            self._local.connection = conn
            with self._lock:
                self._connections.append(conn)
        try:
            # One attempt: the caller answers 503 at once rather than queueing requests.
            conn.ensure_connection(max_retries=0, interval_start=0, timeout=self.timeout)
        except Exception as exc:
            self._drop_connection()
            raise PublishError(f"broker unreachable: {exc}") from exc
        return conn

    def _drop_connection(self) -> None:
        conn: Connection | None = getattr(self._local, "connection", None)
        self._local.connection = None
        self._local.producer = None
        if conn is not None:
            with self._lock:
                self._connections.remove(conn)
            conn.collect()

    def _publish_blocking(self, name: str, kwargs: dict[str, Any], queue: str) -> None:
        conn = self._connection()
        producer = getattr(self._local, "producer", None)
        if producer is None:
            producer = self._local.producer = self.app.amqp.Producer(conn)
        try:
            self.app.send_task(
                name,
                kwargs=kwargs,
                queue=queue,
                producer=producer,
                retry=False,
                timeout=self.timeout,
                confirm_timeout=self.timeout,
            )
        except Exception as exc:
            # The channel's state is unknown after a failed confirm: start afresh next time.
            self._drop_connection()
            raise PublishError(f"publish of {name} not confirmed: {exc}") from exc

    def close(self) -> None:
        """Stop the threads and close their connections."""
        self._executor.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.release()
