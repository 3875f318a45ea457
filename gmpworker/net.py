"""A small TCP API whose Gs wait in the netpoller without holding an M.

Mirrors the shape of Go's ``net`` + ``internal/poll.FD``: sockets are
non-blocking; an operation that would block parks the G in ``netpollblock``
("IO wait") and retries when the poller reports readiness.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

from .netpoll import Netpoll, netpollblock, pollDesc
from .proc import injectglist
from .runtime2 import getg


def _netpoll() -> Netpoll:
    gp = getg()
    if gp is None or gp.sched.netpoll is None:
        raise RuntimeError("gmpworker.net must be used inside a goroutine")
    return gp.sched.netpoll


class _FD:
    """A non-blocking socket registered with the poller (Go's ``poll.FD``)."""

    __slots__ = ("np", "pd", "sock")

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.np = _netpoll()
        self.pd: pollDesc = self.np.open(sock.fileno())

    async def _wait(self, read: bool) -> None:
        if not await netpollblock(self.np, self.pd, read) and self.pd.closing:
            raise OSError(errno.EBADF, "use of closed network connection")

    def close(self) -> None:
        """Close the socket, waking any G waiting on it (it gets EBADF)."""
        if self.pd.closing:
            return
        glist = self.np.evict(self.pd)
        self.sock.close()
        if glist:
            gp = getg()
            pp = gp.m.p if gp is not None and gp.m is not None else None
            injectglist(self.np.sched, glist, pp)


class Conn(_FD):
    """A TCP connection: ``await recv(n)``, ``await sendall(data)``, ``close()``."""

    __slots__ = ()

    async def recv(self, n: int) -> bytes:
        """Up to ``n`` bytes; ``b""`` at end of stream."""
        while True:
            try:
                return self.sock.recv(n)
            except (BlockingIOError, InterruptedError):
                await self._wait(True)

    async def sendall(self, data: bytes | bytearray | memoryview) -> None:
        """Send every byte of ``data``."""
        view = memoryview(data)
        while view:
            try:
                sent = self.sock.send(view)
            except (BlockingIOError, InterruptedError):
                await self._wait(False)
                continue
            view = view[sent:]

    def getsockname(self) -> Any:
        """The local address."""
        return self.sock.getsockname()

    def getpeername(self) -> Any:
        """The remote address."""
        return self.sock.getpeername()


class Listener(_FD):
    """A listening TCP socket: ``await accept()``, ``addr``, ``close()``."""

    __slots__ = ()

    @property
    def addr(self) -> tuple[str, int]:
        """The bound (host, port)."""
        host, port = self.sock.getsockname()[:2]
        return host, port

    async def accept(self) -> Conn:
        """Wait for and return the next connection."""
        while True:
            try:
                s, _ = self.sock.accept()
                return Conn(s)
            except (BlockingIOError, InterruptedError):
                await self._wait(True)


async def dial(host: str, port: int) -> Conn:
    """Connect to ``host:port`` over TCP. Mirrors net.Dial("tcp", ...)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    family, stype, proto, _, addr = infos[0]
    c = Conn(socket.socket(family, stype, proto))
    try:
        err = c.sock.connect_ex(addr)
        if err in (errno.EINPROGRESS, errno.EAGAIN, errno.EWOULDBLOCK):
            await c._wait(False)
            err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, f"dial tcp {host}:{port}: {errno.errorcode.get(err, err)}")
    except BaseException:
        c.close()
        raise
    return c


def listen(host: str = "127.0.0.1", port: int = 0, backlog: int = 1024) -> Listener:
    """Listen on ``host:port`` (port 0 picks a free port). Mirrors net.Listen("tcp", ...)."""
    s = socket.create_server((host, port), backlog=backlog, reuse_port=False)
    return Listener(s)


async def accept(ln: Listener) -> Conn:
    """Function form of ``Listener.accept``."""
    return await ln.accept()


async def recv(c: Conn, n: int) -> bytes:
    """Function form of ``Conn.recv``."""
    return await c.recv(n)


async def sendall(c: Conn, data: bytes) -> None:
    """Function form of ``Conn.sendall``."""
    await c.sendall(data)


def close(c: _FD) -> None:
    """Function form of ``close()``."""
    c.close()
