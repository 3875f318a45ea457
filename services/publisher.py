"""Publishing Celery task messages to RabbitMQ with pipelined publisher confirms, on the
event loop.

:class:`AmqpPublisher` keeps one AMQP connection per process (aio-pika) with one channel
in confirm mode. Every publish writes its message and awaits its own confirm, so many
publishes are in flight at once and RabbitMQ confirms them together (one disk write
covers a batch): throughput no longer depends on one confirm round trip per thread.

The messages are ordinary Celery task messages (protocol 2, JSON), built by Celery's own
``app.amqp.as_task_v2`` and serialized by kombu as Celery's producer does, so the worker
consumes them unchanged:

- ``services.worker.tasks.persist_order(order)`` with ``order = {order_id, item_id,
  user_id, quantity, accepted_at_ms}`` on ``Settings.order_queue``;
- ``services.worker.tasks.apply_item_update(update)`` with ``update = {item_id, name?,
  price_cents?, stock?, version}`` on ``Settings.item_update_queue``.

Queues are declared durable (as the worker declares them) on every (re)connection, so a
message published before any worker started is kept; messages are persistent.

Failure is always :class:`PublishError`, never a wait: a nack, a confirm time-out or a
lost connection fails the publishes in flight, and while no connection is open (the
background task reconnects with backoff) a publish fails at once. A confirm time-out also
drops the connection: a broker that stopped answering is treated as down, so the requests
after it fail fast instead of each waiting out the time-out.

``Settings.publisher = "threads"`` selects :class:`services.publisher_threads.ThreadedPublisher`
(the previous kombu publisher); it is kept only for ``python -m services.bench`` to
measure what this one changed, in the same run.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any

import aio_pika
import aio_pika.abc
from celery import Celery
from kombu.serialization import dumps

from services.messaging import APPLY_ITEM_UPDATE, PERSIST_ORDER, routing_config
from services.metrics import ORDER_PUBLISH_LATENCY
from services.settings import Settings

log = logging.getLogger(__name__)

RECONNECT_BACKOFF_START = 0.1
RECONNECT_BACKOFF_MAX = 2.0
HEARTBEAT_SECONDS = 10
"""A silent broker is noticed within about this long even when nothing is published."""


class PublishError(Exception):
    """The broker did not confirm the message (unreachable, nacked, timed out or lost)."""


class TaskPublisher(abc.ABC):
    """The project's two tasks on top of one confirmed ``_publish``; the subclasses differ
    in how a message reaches the broker."""

    def __init__(self, settings: Settings, app: Celery | None) -> None:
        self.app = app or make_celery_app(settings)
        self.timeout = settings.publish_timeout_seconds
        self.order_queue = settings.order_queue
        self.item_update_queue = settings.item_update_queue

    async def publish_order(self, order: Mapping[str, Any]) -> None:
        """Publish ``persist_order(order)`` and wait for the broker's confirm."""
        started = time.perf_counter()
        await self._publish(PERSIST_ORDER, {"order": dict(order)}, self.order_queue)
        ORDER_PUBLISH_LATENCY.observe(time.perf_counter() - started)

    async def publish_item_update(self, update: Mapping[str, Any]) -> None:
        """Publish ``apply_item_update(update)`` and wait for the broker's confirm."""
        await self._publish(APPLY_ITEM_UPDATE, {"update": dict(update)}, self.item_update_queue)

    @abc.abstractmethod
    async def start(self) -> None:
        """Begin connecting; return soon even if the broker is down."""

    @abc.abstractmethod
    async def check(self) -> None:
        """Raise :class:`PublishError` unless the broker is reachable."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the connection(s)."""

    @abc.abstractmethod
    async def _publish(self, name: str, kwargs: dict[str, Any], queue: str) -> None:
        """Publish task ``name`` with ``kwargs`` to ``queue``; :class:`PublishError` unless
        the broker confirms it."""


def make_celery_app(settings: Settings) -> Celery:
    """A publish-only Celery app whose queues and routes match the worker's."""
    app = Celery("flashsale-api", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        **routing_config(settings),
        # The caller decides what a failure means (compensate, 503): no hidden retries.
        task_publish_retry=False,
    )
    return app


def make_publisher(settings: Settings) -> TaskPublisher:
    """The publisher ``settings.publisher`` names."""
    if settings.publisher == "threads":
        from services.publisher_threads import ThreadedPublisher

        return ThreadedPublisher(settings)
    return AmqpPublisher(settings)


def task_message(app: Celery, name: str, kwargs: dict[str, Any]) -> aio_pika.Message:
    """A Celery protocol-2 message for task ``name``, as ``app.send_task`` would send it:
    Celery builds headers, properties and body; kombu serializes the body with the app's
    task serializer; the delivery is persistent (the queues' exchanges are durable)."""
    task_id = str(uuid.uuid4())
    # The reprs are only shown by monitoring tools; Celery's own (saferepr, made for
    # arbitrary objects) cost more than the rest of the message for these flat dicts.
    headers, properties, body, _ = app.amqp.as_task_v2(
        task_id, name, kwargs=kwargs, argsrepr="()", kwargsrepr=repr(kwargs)
    )
    content_type, content_encoding, payload = dumps(body, serializer=app.conf.task_serializer)
    return aio_pika.Message(
        payload.encode() if isinstance(payload, str) else payload,
        headers=headers,
        content_type=content_type,
        content_encoding=content_encoding,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        correlation_id=properties["correlation_id"],
        reply_to=properties["reply_to"] or None,
    )


class AmqpPublisher(TaskPublisher):
    """Confirmed publishes, pipelined on one connection, reconnecting in the background."""

    def __init__(self, settings: Settings, app: Celery | None = None) -> None:
        super().__init__(settings, app)
        self.url = settings.broker_url
        self._channel: aio_pika.abc.AbstractChannel | None = None
        self._lost: asyncio.Event | None = None
        self._first_attempt = asyncio.Event()
        self._keeper: asyncio.Task[None] | None = None
        self.last_error: str = "not connected yet"
        self._last_confirm = 0.0

    @property
    def connected(self) -> bool:
        """Whether a confirm-mode channel is open now."""
        return self._channel is not None

    async def start(self) -> None:
        """Start the connection keeper and wait for its first attempt (bounded by the
        connect time-out): an api started before the broker serves reads meanwhile."""
        if self._keeper is None:
            self._keeper = asyncio.get_running_loop().create_task(self._keep_connected())
        await self._first_attempt.wait()

    async def check(self) -> None:
        """Raise :class:`PublishError` unless a confirm-mode channel is open."""
        if self._channel is None:
            raise PublishError(f"broker unreachable: {self.last_error}")

    async def close(self) -> None:
        """Stop reconnecting and close the connection (publishes in flight fail)."""
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
            self._keeper = None

    async def _publish(self, name: str, kwargs: dict[str, Any], queue: str) -> None:
        channel = self._channel
        if channel is None:
            raise PublishError(f"broker unreachable: {self.last_error}")
        message = task_message(self.app, name, kwargs)
        try:
            await channel.default_exchange.publish(message, routing_key=queue, timeout=self.timeout)
        except TimeoutError as exc:
            if time.monotonic() - self._last_confirm >= self.timeout:
                # No confirm at all for a whole time-out: the broker or the link hangs.
                # Treat it as down, so the next requests fail at once while the keeper
                # reconnects. (Other confirms arriving meanwhile mean a busy process or
                # broker, not a dead one: then only this message fails.)
                self._drop(channel, f"no confirm within {self.timeout:.1f}s")
            raise PublishError(f"publish of {name} not confirmed within {self.timeout}s") from exc
        except aio_pika.exceptions.DeliveryError as exc:
            raise PublishError(f"publish of {name} refused by the broker (nack)") from exc
        except Exception as exc:
            # Connection or channel lost with the message in flight (its fate is unknown;
            # the caller's cancel decides, see ORDER-DESIGN), or the channel already closed.
            raise PublishError(f"publish of {name} failed: {exc!r}") from exc
        self._last_confirm = time.monotonic()

    def _drop(self, channel: aio_pika.abc.AbstractChannel, reason: str) -> None:
        """Forget ``channel`` (if still current) and wake the keeper to reconnect."""
        if self._channel is channel:
            self._channel = None
            self.last_error = reason
            if self._lost is not None:
                self._lost.set()

    async def _keep_connected(self) -> None:
        backoff = RECONNECT_BACKOFF_START
        while True:
            connection: aio_pika.abc.AbstractConnection | None = None
            try:
                connection = await aio_pika.connect(
                    self.url, timeout=self.timeout, heartbeat=HEARTBEAT_SECONDS
                )
                channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
                await self._declare_queues(channel)
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"[:200]
                self._first_attempt.set()
                log.warning("broker connection failed (%s); retrying in %.1fs", exc, backoff)
                await self._close_quietly(connection)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, RECONNECT_BACKOFF_MAX)
                continue
            backoff = RECONNECT_BACKOFF_START
            try:
                await self._serve(connection, channel)
            finally:
                self._channel = None
                await self._close_quietly(connection)

    async def _serve(
        self, connection: aio_pika.abc.AbstractConnection, channel: aio_pika.abc.AbstractChannel
    ) -> None:
        """Publish on ``channel`` until it, its connection or a confirm time-out is lost."""
        lost = self._lost = asyncio.Event()

        def on_close(_sender: Any, exc: BaseException | None = None) -> None:
            self._drop(channel, f"connection lost: {exc!r}"[:200])

        connection.close_callbacks.add(on_close)
        channel.close_callbacks.add(on_close)
        self._channel = channel
        self._last_confirm = time.monotonic()
        self._first_attempt.set()
        log.info("broker connected; publishing with confirms")
        await lost.wait()
        log.warning("broker connection dropped: %s", self.last_error)

    async def _declare_queues(self, channel: aio_pika.abc.AbstractChannel) -> None:
        """Declare each queue and its direct exchange exactly as Celery and the worker do
        (the app's ``task_queues``, from ``services.messaging``, queue type included), so a
        message never lands nowhere and RabbitMQ never refuses a redeclaration."""
        for declared in self.app.conf.task_queues:
            exchange = await channel.declare_exchange(
                declared.exchange.name, aio_pika.ExchangeType.DIRECT, durable=True
            )
            queue = await channel.declare_queue(
                declared.name, durable=True, arguments=declared.queue_arguments or None
            )
            await queue.bind(exchange, routing_key=declared.routing_key)

    @staticmethod
    async def _close_quietly(connection: aio_pika.abc.AbstractConnection | None) -> None:
        if connection is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), 1.0)
