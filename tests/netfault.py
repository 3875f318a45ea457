"""A TCP proxy that injects network faults between a client and a real service.

The race and recovery tests put it in front of the real Redis, PostgreSQL or RabbitMQ and
make the path slow, silent, hung, cut or refused at the exact step they are testing, then
heal it. It only ever binds 127.0.0.1 and forwards to the upstream it was given.

::

    with FaultProxy("127.0.0.1", 6379) as proxy:
        client = redis.Redis(port=proxy.port)
        proxy.delay_replies(3.0)   # the command reaches Redis, its reply comes 3 s late
        proxy.heal()

Faults act on the reply direction (upstream -> client) unless said otherwise, because the
dangerous cases are the ambiguous ones: the request was carried out, the answer was not
seen. Each fault applies to bytes read from the upstream after it was set, on every open
connection and on the ones opened later. The proxy runs its own event loop in a daemon
thread, so synchronous and asynchronous clients can use it alike.
"""

from __future__ import annotations

import asyncio
import enum
import socket
import struct
import threading
from collections import deque
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, TypeVar

T = TypeVar("T")

_CHUNK = 65536
_CALL_TIMEOUT_SECONDS = 10.0


class Mode(enum.Enum):
    """What happens to bytes the upstream sends."""

    FORWARD = "forward"
    DELAY = "delay"
    DROP = "drop"
    HOLD = "hold"
    BLACKHOLE = "blackhole"
    """Nothing is forwarded in either direction: a peer that hangs."""


class _Link:
    """One client connection and its upstream connection, with the reply queue."""

    def __init__(
        self,
        proxy: FaultProxy,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.proxy = proxy
        self.client_reader, self.client_writer = client
        self.upstream_reader, self.upstream_writer = upstream
        self.replies: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        self.held: deque[bytes] = deque()

    async def run(self) -> None:
        """Pump both directions until either side closes or the link is cut."""
        tasks = [
            asyncio.create_task(self._requests()),
            asyncio.create_task(self._replies_in()),
            asyncio.create_task(self._replies_out()),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.close(reset=False)

    async def _requests(self) -> None:
        while data := await self.client_reader.read(_CHUNK):
            if self.proxy.mode is Mode.BLACKHOLE:
                continue
            self.upstream_writer.write(data)
            await self.upstream_writer.drain()

    async def _replies_in(self) -> None:
        loop = asyncio.get_running_loop()
        while data := await self.upstream_reader.read(_CHUNK):
            mode = self.proxy.mode
            if mode in (Mode.DROP, Mode.BLACKHOLE):
                continue
            if mode is Mode.HOLD:
                self.held.append(data)
                continue
            delay = self.proxy.delay if mode is Mode.DELAY else 0.0
            self.replies.put_nowait((loop.time() + delay, data))

    async def _replies_out(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due, data = await self.replies.get()
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            self.client_writer.write(data)
            await self.client_writer.drain()

    def release(self) -> None:
        """Forward the held replies now, in order."""
        now = asyncio.get_running_loop().time()
        while self.held:
            self.replies.put_nowait((now, self.held.popleft()))

    def close(self, *, reset: bool) -> None:
        """Close both sockets; ``reset`` sends RST to the client instead of FIN."""
        if reset:
            sock = self.client_writer.get_extra_info("socket")
            if sock is not None:
                # SO_LINGER with a zero timeout makes close() send RST: a broken connection,
                # not an orderly end, which is what a network blip looks like to the client.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        for writer in (self.client_writer, self.upstream_writer):
            if reset:
                writer.transport.abort()
            else:
                writer.close()


class FaultProxy:
    """A fault-injecting TCP proxy on 127.0.0.1 in front of ``upstream_host:upstream_port``."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.mode = Mode.FORWARD
        self.delay = 0.0
        self.port = 0
        self._links: set[_Link] = set()
        self._server: asyncio.Server | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"faultproxy-{upstream_port}", daemon=True
        )
        self._thread.start()
        self._call(self._listen())

    # -- faults -------------------------------------------------------------------------

    def delay_replies(self, seconds: float) -> None:
        """Deliver upstream replies ``seconds`` late (the requests still reach the upstream)."""
        if seconds < 0:
            raise ValueError(f"delay must be >= 0, not {seconds}")
        self._set(Mode.DELAY, seconds)

    def drop_replies(self) -> None:
        """Swallow upstream replies (the requests still reach the upstream)."""
        self._set(Mode.DROP)

    def hold_replies(self) -> None:
        """Buffer upstream replies until :meth:`release_replies` (or :meth:`heal`)."""
        self._set(Mode.HOLD)

    def release_replies(self) -> None:
        """Forward every held reply, then forward normally."""
        self._set(Mode.FORWARD)

    def blackhole(self) -> None:
        """Forward nothing either way, on open and new connections: a hung peer."""
        self._set(Mode.BLACKHOLE)

    def cut(self) -> None:
        """Reset every open connection now (new ones are still accepted)."""
        self._call(self._cut())

    def refuse(self) -> None:
        """Stop listening and reset open connections: the service is down."""
        self._call(self._stop_listening())
        self.cut()

    def heal(self) -> None:
        """Forward normally again (held replies are delivered), listening on the same port."""
        self._set(Mode.FORWARD)
        if self._server is None:
            self._call(self._listen())

    @property
    def connections(self) -> int:
        """Client connections open right now."""
        return len(self._links)

    # -- life cycle ---------------------------------------------------------------------

    def close(self) -> None:
        """Stop listening, reset every connection and stop the proxy's thread."""
        if self._loop.is_closed():
            return
        self.refuse()
        self._call(self._cancel_links())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(_CALL_TIMEOUT_SECONDS)
        self._loop.close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- inside the proxy's loop --------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(_CALL_TIMEOUT_SECONDS)

    def _set(self, mode: Mode, delay: float = 0.0) -> None:
        self._call(self._apply(mode, delay))

    async def _apply(self, mode: Mode, delay: float) -> None:
        self.mode, self.delay = mode, delay
        if mode is not Mode.HOLD:
            for link in self._links:
                link.release()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _cancel_links(self) -> None:
        """End every link's tasks while the loop still runs (they would die with it)."""
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    async def _cut(self) -> None:
        for link in list(self._links):
            link.close(reset=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        link = _Link(self, (reader, writer), upstream)
        self._links.add(link)
        try:
            await link.run()
        except (ConnectionError, OSError):
            pass
        finally:
            self._links.discard(link)
