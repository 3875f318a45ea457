"""Channels with Go's semantics.

Mirrors ``runtime/chan.go`` (Go 1.19): ``hchan`` (a ring buffer, ``recvq`` and
``sendq`` of sudogs, a lock), ``chansend``, ``chanrecv``, ``closechan``. A send to
a waiting receiver hands the value over directly, puts the receiver in the
sender's ``runnext`` (goready) and lets the sender keep running. Operations that
can complete never park; only a blocked operation goes through the trap.

Python has no typed zero values: a receive from a closed, drained channel
returns ``None`` with ``ok=False``.
"""

from __future__ import annotations

import _thread
import itertools
from collections import deque
from typing import Any, Generic, TypeVar

from .errors import ChanClosedError, ValuePanic
from .proc import goready
from .runtime2 import (
    G,
    M,
    P,
    callerP,
    mtls,
    sudog,
    waitReasonChanReceive,
    waitReasonChanSend,
)
from .trap import park, preempt

T = TypeVar("T")
_serial = itertools.count(1)


def _parkon(gp: G, c: Chan[Any], elem: Any, reason: str) -> sudog:
    """Prepare ``gp`` to park on ``c`` (gopark(chanparkcommit, &c.lock, reason)).

    The G's previous non-select sudog is reused (Go's acquireSudog cache): once a
    G is woken, nobody else holds its sudog.
    """
    sg = gp.waiting
    if type(sg) is sudog and not sg.isSelect:
        sg.elem = elem
        sg.c = c
        sg.success = False
    else:
        sg = gp.waiting = sudog(gp, elem, c, False, None)
    gp.waitreason = reason
    gp.waitlock = c.lock
    gp.waitabort = _abortChan
    return sg


def _curm(what: str) -> M:
    """The calling G's M (its ``curg`` is the G); RuntimeError outside a goroutine."""
    try:
        m: M = mtls.m
    except AttributeError:
        m = None  # type: ignore[assignment]
    if m is None or m.curg is None:
        raise RuntimeError(f"a blocking channel {what} must run inside a goroutine")
    return m


def dequeue(q: deque[sudog]) -> sudog | None:
    """Pop the first sudog whose G can still be woken. Mirrors waitq.dequeue.

    A select sudog is skipped unless this call wins its ``selectDone`` word.
    """
    while q:
        try:
            sg = q.popleft()
        except IndexError:
            return None
        if sg.isSelect:
            try:
                sg.seldone.pop()  # type: ignore[union-attr]
            except IndexError:
                continue
        return sg
    return None


def _abortChan(gp: G) -> bool:
    """GHandle.cancel support: remove the parked G's sudog if nobody woke it yet."""
    sg: sudog = gp.waiting
    c: Chan[Any] = sg.c
    with c.lock:
        for q in (c.recvq, c.sendq):
            try:
                q.remove(sg)
                return True
            except ValueError:
                pass
    return False


class Chan(Generic[T]):
    """A Go channel: ``Chan(0)`` is unbuffered, ``Chan(n)`` buffers ``n`` values.

    ``await send(v)``, ``await recv()``, ``await recv2() -> (v, ok)``, ``close()``,
    ``len(ch)``, ``ch.cap``, ``async for v in ch`` (until closed and drained),
    ``try_send(v) -> bool`` and ``try_recv() -> (v, ok, ready)`` (``ready`` False
    means the receive would block). ``send_case``/``recv_case`` build select cases.
    Sending on or closing a closed channel raises ``ChanClosedError`` (Go panics).
    """

    __slots__ = ("__weakref__", "buf", "closed", "dataqsiz", "lock", "recvq", "sendq", "serial")

    def __init__(self, cap: int = 0) -> None:
        if not isinstance(cap, int) or isinstance(cap, bool):
            raise TypeError(f"channel capacity must be an int, got {type(cap).__name__}")
        if cap < 0:
            raise ValuePanic(f"makechan: size out of range (negative capacity {cap})")
        self.dataqsiz = cap
        self.buf: deque[T] = deque()
        self.closed = False
        self.recvq: deque[sudog] = deque()
        self.sendq: deque[sudog] = deque()
        self.lock = _thread.allocate_lock()
        self.serial = next(_serial)  # lockorder key (Go sorts by hchan address)

    @property
    def cap(self) -> int:
        """The buffer capacity (Go's ``cap(ch)``)."""
        return self.dataqsiz

    def __len__(self) -> int:
        return len(self.buf)

    def __repr__(self) -> str:
        state = " closed" if self.closed else ""
        return f"<Chan cap={self.dataqsiz} len={len(self.buf)}{state}>"

    # -- send ---------------------------------------------------------------

    async def send(self, v: T) -> None:
        """Send ``v``, blocking until a receiver takes it or buffer space frees.

        Mirrors runtime.chansend (chan.go) with ``block=true``. A waiting receiver
        gets the value directly and goes to this P's ``runnext``; the sender runs on.
        The locked part is inlined here (see ``_send``) because this is the hot path.
        """
        try:
            m = mtls.m
        except AttributeError:
            m = _curm("send")  # raises: not an M's thread
        gp = m.curg
        if gp is None:
            _curm("send")
        lock = self.lock
        lock.acquire()
        if self.closed:
            lock.release()
            raise ChanClosedError("send on closed channel")
        rq = self.recvq
        while rq:
            sg = rq.popleft()
            if sg.isSelect:
                try:
                    sg.seldone.pop()  # type: ignore[union-attr]
                except IndexError:
                    continue
            lock.release()
            sg.elem = v
            sg.success = True
            rg = sg.g
            rg.param = sg
            goready(rg, m.p)
            if gp.preempt:
                await preempt
            return
        if len(self.buf) < self.dataqsiz:
            self.buf.append(v)
            lock.release()
            if gp.preempt:
                await preempt
            return
        # _parkon, inlined (hot path)
        sg = gp.waiting
        if type(sg) is sudog and not sg.isSelect:
            sg.elem = v
            sg.c = self
            sg.success = False
        else:
            sg = gp.waiting = sudog(gp, v, self, False, None)
        gp.waitreason = waitReasonChanSend
        gp.waitlock = lock
        gp.waitabort = _abortChan
        self.sendq.append(sg)
        await park
        if not sg.success:
            raise ChanClosedError("send on closed channel")

    def _send(self, v: T, pp: P | None, gp: G | None) -> bool:
        """chansend's locked part: True if done; False if ``gp`` was queued (lock held).

        With ``gp`` None (non-blocking) it returns False with the lock released.
        """
        lock = self.lock
        lock.acquire()
        if self.closed:
            lock.release()
            raise ChanClosedError("send on closed channel")
        rq = self.recvq
        while rq:
            sg = rq.popleft()
            if sg.isSelect:
                try:
                    sg.seldone.pop()  # type: ignore[union-attr]
                except IndexError:
                    continue
            lock.release()
            sg.elem = v
            sg.success = True
            rg = sg.g
            rg.param = sg
            goready(rg, pp)
            return True
        if len(self.buf) < self.dataqsiz:
            self.buf.append(v)
            lock.release()
            return True
        if gp is None:
            lock.release()
            return False
        self.sendq.append(_parkon(gp, self, v, waitReasonChanSend))
        return False

    def try_send(self, v: T) -> bool:
        """Non-blocking send (Go's ``select { case ch <- v: default: }``); True if sent."""
        return self._send(v, callerP(), None)

    def _trysend(self, v: T, pp: P | None) -> bool:
        """selectnbsend with an explicit P (timers call it from the M loop)."""
        return self._send(v, pp, None)

    # -- receive ------------------------------------------------------------

    async def recv(self) -> T | None:
        """Receive a value; ``None`` once the channel is closed and drained.

        Mirrors runtime.chanrecv (chan.go) with ``block=true``; the locked part
        is inlined here (see ``_recv``) because this is the hot path.
        """
        try:
            m = mtls.m
        except AttributeError:
            m = _curm("receive")  # raises: not an M's thread
        gp = m.curg
        if gp is None:
            _curm("receive")
        # Few locals on purpose: this coroutine's frame is most of a parked G's memory.
        lock = self.lock
        lock.acquire()
        if self.closed and not self.buf:
            lock.release()
            return None
        sq = self.sendq
        while sq:
            sg = sq.popleft()
            if sg.isSelect:
                try:
                    sg.seldone.pop()  # type: ignore[union-attr]
                except IndexError:
                    continue
            v = self._recvFromSender(sg)
            lock.release()
            goready(sg.g, m.p)
            if gp.preempt:
                await preempt
            return v  # type: ignore[no-any-return]
        if self.buf:
            v = self.buf.popleft()
            lock.release()
            if gp.preempt:
                await preempt
            return v
        # _parkon, inlined (hot path)
        sg = gp.waiting
        if type(sg) is sudog and not sg.isSelect:
            sg.c = self
            sg.success = False
        else:
            sg = gp.waiting = sudog(gp, None, self, False, None)
        gp.waitreason = waitReasonChanReceive
        gp.waitlock = lock
        gp.waitabort = _abortChan
        self.recvq.append(sg)
        await park
        v = sg.elem
        sg.elem = None
        return v  # type: ignore[no-any-return]

    async def recv2(self) -> tuple[T | None, bool]:
        """Receive ``(value, ok)``; ``ok`` is False when closed and drained (``v, ok := <-ch``).

        Mirrors runtime.chanrecv (chan.go) with ``block=true``.
        """
        m = _curm("receive")
        gp: G = m.curg  # type: ignore[assignment]
        r = self._recv(m.p, gp)
        if r is not None:
            if gp.preempt:
                await preempt
            return r
        sg: sudog = gp.waiting
        await park
        v = sg.elem
        sg.elem = None
        return v, sg.success

    def _recv(self, pp: P | None, gp: G | None) -> tuple[Any, bool] | None:
        """chanrecv's locked part: (value, ok) if done; None if ``gp`` was queued (lock held).

        With ``gp`` None (non-blocking) it returns None with the lock released.
        """
        lock = self.lock
        lock.acquire()
        buf = self.buf
        if self.closed and not buf:
            lock.release()
            return None, False
        sq = self.sendq
        while sq:
            sg = sq.popleft()
            if sg.isSelect:
                try:
                    sg.seldone.pop()  # type: ignore[union-attr]
                except IndexError:
                    continue
            v = self._recvFromSender(sg)
            lock.release()
            goready(sg.g, pp)
            return v, True
        if buf:
            v = buf.popleft()
            lock.release()
            return v, True
        if gp is None:
            lock.release()
            return None
        self.recvq.append(_parkon(gp, self, None, waitReasonChanReceive))
        return None

    def _recvFromSender(self, sg: sudog) -> Any:
        """Mirrors runtime.recv: take from the sender, or rotate a full buffer; lock held."""
        if self.dataqsiz == 0:
            v = sg.elem
        else:
            # The buffer is full: take its head and put the sender's value in the
            # freed tail slot ("those are both the same slot" in a ring).
            v = self.buf.popleft()
            self.buf.append(sg.elem)
        sg.elem = None
        sg.success = True
        sg.g.param = sg
        return v

    def try_recv(self) -> tuple[T | None, bool, bool]:
        """Non-blocking receive: ``(value, ok, ready)``.

        ``ready`` False: nothing to receive (the receive would block). Otherwise
        ``(value, ok)`` are what ``recv2`` would return.
        """
        r = self._recv(callerP(), None)
        if r is None:
            return None, False, False
        return r[0], r[1], True

    # -- close --------------------------------------------------------------

    def close(self) -> None:
        """Close the channel, waking every waiting receiver (ok=False) and sender (raises).

        Mirrors runtime.closechan. Closing twice raises ``ChanClosedError``.
        """
        lock = self.lock
        lock.acquire()
        if self.closed:
            lock.release()
            raise ChanClosedError("close of closed channel")
        self.closed = True
        glist: list[G] = []
        for q in (self.recvq, self.sendq):
            while True:
                sg = dequeue(q)
                if sg is None:
                    break
                sg.elem = None
                sg.success = False
                sg.g.param = sg
                glist.append(sg.g)
        lock.release()
        pp = callerP()
        for g in glist:
            goready(g, pp)

    # -- iteration and select cases -------------------------------------------

    def __aiter__(self) -> Chan[T]:
        return self

    async def __anext__(self) -> T:
        v, ok = await self.recv2()
        if not ok:
            raise StopAsyncIteration
        return v  # type: ignore[return-value]

    def send_case(self, v: T) -> Case:
        """A select case sending ``v`` on this channel."""
        return Case(self, True, v)

    def recv_case(self) -> Case:
        """A select case receiving from this channel."""
        return Case(self, False, None)


class Case:
    """One select case (Go's ``scase``). ``c`` None is a nil channel: never ready."""

    __slots__ = ("c", "elem", "send")

    def __init__(self, c: Chan[Any] | None, send: bool, elem: Any) -> None:
        self.c = c
        self.send = send
        self.elem = elem
