"""The network poller: Gs wait for socket readiness without holding an M.

Mirrors ``runtime/netpoll.go`` and ``netpoll_epoll.go`` (Go 1.19): one poller per
runtime (``selectors.DefaultSelector``, epoll on Linux), an eventfd (or a
socketpair) for ``netpollBreak``, and a ``pollDesc`` per file descriptor whose
``rg``/``wg`` words hold 0, ``pdReady``, ``pdWait`` or the waiting G. The
``pdReady`` state keeps readiness that arrives before the G parks. Go registers
descriptors edge-triggered once; ``selectors`` is level-triggered, so interest in
a direction is registered only while a G waits for it.
"""

from __future__ import annotations

import _thread
import contextlib
import os
import selectors
import socket
from typing import Any

from .runtime2 import G, getg, schedt, waitReasonIOWait
from .trap import park

pdNil = 0
pdReady = 1
pdWait = 2

_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE


class pollDesc:
    """Per-descriptor readiness state (Go's ``pollDesc``)."""

    __slots__ = ("closing", "events", "fd", "rg", "wg")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.rg: Any = pdNil
        self.wg: Any = pdNil
        self.events = 0  # the directions registered with the selector
        self.closing = False


class Netpoll:
    """One runtime's poller. ``waiters`` is Go's ``netpollWaiters``."""

    def __init__(self, sched: schedt) -> None:
        self.sched = sched
        self.sel = selectors.DefaultSelector()
        self.lock = _thread.allocate_lock()
        self.waiters = 0
        self.wakeSig = 0  # netpollWakeSig: a break is already pending
        self._wfd: socket.socket | None = None
        self._rsock: socket.socket | None = None
        try:
            self.efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        except (AttributeError, OSError):  # no eventfd: a socketpair, as trio does
            self._rsock, self._wfd = socket.socketpair()
            self._rsock.setblocking(False)
            self._wfd.setblocking(False)
            self.efd = self._rsock.fileno()
        self.sel.register(self.efd, _READ, None)

    def close(self) -> None:
        """Release the selector and the wakeup descriptor."""
        self.sel.close()
        if self._rsock is not None and self._wfd is not None:
            self._rsock.close()
            self._wfd.close()
        else:
            os.close(self.efd)

    def netpollBreak(self) -> None:
        """Interrupt a blocked ``netpoll``. Mirrors runtime.netpollBreak."""
        with self.lock:
            if self.wakeSig:
                return
            self.wakeSig = 1
        try:
            if self._wfd is not None:
                self._wfd.send(b"\0")
            else:
                os.eventfd_write(self.efd, 1)
        except OSError:  # closed during shutdown
            pass

    def _drainBreak(self) -> None:
        try:
            if self._rsock is not None:
                self._rsock.recv(64)
            else:
                os.eventfd_read(self.efd)
        except OSError:
            pass
        with self.lock:
            self.wakeSig = 0

    def netpoll(self, delay: int) -> list[G]:
        """Wait up to ``delay`` ns (<0 forever, 0 poll) and return the Gs made ready.

        Mirrors runtime.netpoll (netpoll_epoll.go). The caller injects the list
        (``injectglist``), never into ``runnext``.
        """
        timeout = None if delay < 0 else delay / 1e9
        try:
            events = self.sel.select(timeout)
        except (OSError, ValueError):  # closed during shutdown
            return []
        glist: list[G] = []
        for key, mask in events:
            pd = key.data
            if pd is None:
                self._drainBreak()
                continue
            with self.lock:
                if mask & _READ:
                    self._unblock(pd, True, True, glist)
                if mask & _WRITE:
                    self._unblock(pd, False, True, glist)
        return glist

    def _setInterest(self, pd: pollDesc) -> None:
        """Register the directions some G waits for; self.lock held."""
        want = (_READ if pd.rg is not pdNil and pd.rg != pdReady else 0) | (
            _WRITE if pd.wg is not pdNil and pd.wg != pdReady else 0
        )
        if want == pd.events or pd.closing:
            return
        try:
            if pd.events == 0:
                self.sel.register(pd.fd, want, pd)
            elif want == 0:
                self.sel.unregister(pd.fd)
            else:
                self.sel.modify(pd.fd, want, pd)
        except (KeyError, ValueError, OSError):
            return
        pd.events = want

    def _unblock(self, pd: pollDesc, read: bool, ioready: bool, glist: list[G]) -> None:
        """Mirrors runtime.netpollunblock + netpollready; self.lock held."""
        old = pd.rg if read else pd.wg
        if old == pdReady or (old == pdNil and not ioready):
            return
        new = pdReady if ioready else pdNil
        if read:
            pd.rg = new
        else:
            pd.wg = new
        self._setInterest(pd)
        if isinstance(old, G):
            self.waiters -= 1
            glist.append(old)

    def open(self, fd: int) -> pollDesc:
        """Mirrors poll_runtime_pollOpen."""
        return pollDesc(fd)

    def evict(self, pd: pollDesc) -> list[G]:
        """Close ``pd``: unregister it and return its waiters. Mirrors poll_runtime_pollUnblock."""
        glist: list[G] = []
        with self.lock:
            pd.closing = True
            self._unblock(pd, True, False, glist)
            self._unblock(pd, False, False, glist)
            if pd.events:
                with contextlib.suppress(KeyError, ValueError, OSError):
                    self.sel.unregister(pd.fd)
                pd.events = 0
        return glist


def _netpollblockcommit(gp: G, arg: Any) -> bool:
    """Mirrors runtime.netpollblockcommit: CAS pdWait -> G, netpollWaiters++."""
    np, pd, read = arg
    with np.lock:
        cur = pd.rg if read else pd.wg
        if cur != pdWait or pd.closing:
            return False
        if read:
            pd.rg = gp
        else:
            pd.wg = gp
        np.waiters += 1
        np._setInterest(pd)
    return True


async def netpollblock(np: Netpoll, pd: pollDesc, read: bool) -> bool:
    """Park until ``pd`` is ready for reading/writing; True if it is ready.

    Mirrors runtime.netpollblock: CAS pdReady -> 0 (ready now) or 0 -> pdWait,
    then gopark(netpollblockcommit, waitReasonIOWait).
    """
    with np.lock:
        cur = pd.rg if read else pd.wg
        if cur == pdReady:
            if read:
                pd.rg = pdNil
            else:
                pd.wg = pdNil
            return True
        if pd.closing:
            return False
        if read:
            pd.rg = pdWait
        else:
            pd.wg = pdWait
    gp = getg()
    if gp is None:
        raise RuntimeError("gmpworker network calls must run inside a goroutine")
    gp.waitreason = waitReasonIOWait
    gp.waitlock = (np, pd, read)
    gp.waitunlockf = _netpollblockcommit
    gp.waitabort = None
    await park
    with np.lock:
        cur = pd.rg if read else pd.wg
        if read:
            pd.rg = pdNil
        else:
            pd.wg = pdNil
    return bool(cur == pdReady)
