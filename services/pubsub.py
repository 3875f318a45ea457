"""One Redis pub/sub connection per process, kept subscribed in the background, for the
in-process state other processes must be able to drop or set (near cache, sold-out flags).

Pub/sub delivers at most once and only while subscribed: whatever was published while the
connection was down is lost. So every user is told about each gap (its ``on_gap``, on each
(re)subscription and on each loss) and must then distrust what it holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping

import redis.asyncio
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

Handler = Callable[[bytes], None]

BACKOFF_START = 0.1
BACKOFF_MAX = 2.0


class ChannelListener:
    """Calls each handler of a channel with each message's payload, resubscribing with
    backoff; register everything with :meth:`on` before :meth:`start`."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.client = client
        self.handlers: dict[bytes, list[Handler]] = {}
        self.gap_handlers: list[Callable[[], None]] = []
        self._task: asyncio.Task[None] | None = None

    def on(self, handlers: Mapping[str, Handler], on_gap: Callable[[], None]) -> None:
        """Have ``handlers[channel](payload)`` called for each message, and ``on_gap()``
        whenever messages may have been lost."""
        for channel, handler in handlers.items():
            self.handlers.setdefault(channel.encode(), []).append(handler)
        self.gap_handlers.append(on_gap)

    async def start(self, timeout: float = 2.0) -> None:
        """Start listening; return once subscribed (or after ``timeout`` if Redis is down:
        the listener keeps retrying in the background)."""
        if self._task is not None:
            return
        subscribed = asyncio.get_running_loop().create_future()
        self._task = asyncio.get_running_loop().create_task(self._listen(subscribed))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(subscribed), timeout)

    async def stop(self) -> None:
        """Stop listening."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _listen(self, subscribed: asyncio.Future[None]) -> None:
        backoff = BACKOFF_START
        while True:
            try:
                async with self.client.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(*self.handlers)
                    # Anything published while we were not listening is lost: start clean.
                    self._gap()
                    if not subscribed.done():
                        subscribed.set_result(None)
                    backoff = BACKOFF_START
                    async for message in pubsub.listen():
                        self._dispatch(message["channel"], message["data"])
            except (RedisError, OSError) as exc:
                log.debug("pub/sub listener: %s; retrying in %.1fs", exc, backoff)
                self._gap()
                if not subscribed.done():
                    subscribed.set_result(None)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)

    def _gap(self) -> None:
        for on_gap in self.gap_handlers:
            on_gap()

    def _dispatch(self, channel: bytes | str, data: bytes | str) -> None:
        name = channel.encode() if isinstance(channel, str) else channel
        payload = data.encode() if isinstance(data, str) else data
        for handler in self.handlers.get(name, ()):
            handler(payload)
