"""The previous publisher: one synchronous kombu publish-with-confirm per order, each in a
thread of a ``ThreadPoolExecutor``, each thread with its own connection and producer.

Selected by ``Settings.publisher = "threads"``. It is kept only so that
``python -m services.bench`` can show, in one run, what :class:`services.publisher.AmqpPublisher`
changed; the api uses the latter.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any

from celery import Celery
from kombu import Connection

from services.publisher import PublishError, TaskPublisher
from services.settings import Settings


class ThreadedPublisher(TaskPublisher):
    """Confirmed publishes from a pool of threads, each owning one broker connection."""

    def __init__(self, settings: Settings, app: Celery | None = None) -> None:
        super().__init__(settings, app)
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=settings.publish_threads, thread_name_prefix="publish"
        )
        self._local = threading.local()
        self._connections: list[Connection] = []
        self._lock = threading.Lock()

    async def start(self) -> None:
        """Nothing to start: each thread connects on its first publish."""

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
            # kombu's stub says int; the timeout is seconds and a float works.
            conn.ensure_connection(max_retries=0, interval_start=0, timeout=self.timeout)  # type: ignore[arg-type]
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

    async def close(self) -> None:
        """Stop the threads and close their connections."""
        self._executor.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.release()
