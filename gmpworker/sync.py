"""sync: Mutex (with starvation mode), RWMutex, WaitGroup, Once, Cond, semaphores.

Mirrors Go 1.19's ``sync/mutex.go``, ``rwmutex.go``, ``waitgroup.go``, ``once.go``,
``cond.go`` and the runtime's ``sema.go`` (``semacquire1``/``semrelease1``,
``notifyList*``). Go's atomic word operations are done under a small per-object
``_thread`` lock (``_atomic``), because a Python compare-and-swap is not atomic.
Active spinning (``sync_runtime_canSpin``) is left out: under the GIL a spinning
G only delays the holder.
"""

from __future__ import annotations

import _thread
import inspect
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from .errors import ValuePanic
from .proc import fatal, goready
from .runtime2 import (
    G,
    callerP,
    getg,
    waitReasonSemacquire,
    waitReasonSyncCondWait,
)
from .trap import park

mutexLocked = 1
mutexWoken = 2
mutexStarving = 4
mutexWaiterShift = 3
starvationThresholdNs = 1_000_000
rwmutexMaxReaders = 1 << 30


def _curg(what: str) -> G:
    gp = getg()
    if gp is None:
        raise RuntimeError(f"{what} must run inside a goroutine")
    return gp


class _semwaiter:
    """A G queued on a semaphore (the sudog of sema.go); ``ticket`` = handed off."""

    __slots__ = ("g", "ticket")

    def __init__(self, g: G) -> None:
        self.g = g
        self.ticket = False


def _abortSema(gp: G) -> bool:
    sema, w = gp.waiting
    with sema.lock:
        try:
            sema.waiters.remove(w)
        except ValueError:
            return False
    return True


class Sema:
    """A runtime semaphore (``semacquire``/``semrelease`` on a uint32 in Go)."""

    __slots__ = ("count", "lock", "waiters")

    def __init__(self, count: int = 0) -> None:
        self.count = count
        self.lock = _thread.allocate_lock()
        self.waiters: deque[_semwaiter] = deque()

    async def acquire(self, lifo: bool = False, reason: str = waitReasonSemacquire) -> None:
        """Mirrors runtime.semacquire1: take a unit, parking FIFO (or LIFO) until one is free."""
        while True:
            lock = self.lock
            lock.acquire()
            if self.count > 0:  # cansemacquire
                self.count -= 1
                lock.release()
                return
            gp = _curg("semacquire")
            w = _semwaiter(gp)
            if lifo:
                self.waiters.appendleft(w)
            else:
                self.waiters.append(w)
            gp.waiting = (self, w)
            gp.waitreason = reason
            gp.waitlock = lock
            gp.waitabort = _abortSema
            await park
            if w.ticket:
                return

    def release(self, handoff: bool = False) -> None:
        """Mirrors runtime.semrelease1; ``handoff`` passes the unit straight to the waiter."""
        with self.lock:
            self.count += 1
            if not self.waiters:
                return
            w = self.waiters.popleft()
            if handoff and self.count > 0:
                self.count -= 1
                w.ticket = True
        goready(w.g, callerP())


class Mutex:
    """sync.Mutex with normal and starvation modes (Go 1.19 ``sync/mutex.go``).

    ``await mu.lock()``, ``mu.unlock()``, ``mu.try_lock()``, ``async with mu:``. In
    starvation mode (a waiter waited more than 1 ms) ownership goes straight to the
    first waiter in FIFO order.
    """

    __slots__ = ("_atomic", "sema", "state")

    def __init__(self) -> None:
        self.state = 0
        self.sema = Sema()
        self._atomic = _thread.allocate_lock()

    def _cas(self, old: int, new: int) -> bool:
        with self._atomic:
            if self.state != old:
                return False
            self.state = new
            return True

    def _add(self, delta: int) -> int:
        with self._atomic:
            self.state += delta
            return self.state

    def locked(self) -> bool:
        """True while some G holds the mutex."""
        return bool(self.state & mutexLocked)

    def try_lock(self) -> bool:
        """Mirrors Mutex.TryLock."""
        old = self.state
        if old & (mutexLocked | mutexStarving):
            return False
        return self._cas(old, old | mutexLocked)

    async def lock(self) -> None:
        """Mirrors Mutex.Lock: a CAS fast path, else lockSlow."""
        if self._cas(0, mutexLocked):
            return
        await self._lockSlow()

    async def _lockSlow(self) -> None:
        waitStartTime = 0
        starving = False
        awoke = False
        old = self.state
        while True:
            new = old
            if old & mutexStarving == 0:
                new |= mutexLocked
            if old & (mutexLocked | mutexStarving):
                new += 1 << mutexWaiterShift
            if starving and old & mutexLocked:
                new |= mutexStarving
            if awoke:
                new &= ~mutexWoken
            if not self._cas(old, new):
                old = self.state
                continue
            if old & (mutexLocked | mutexStarving) == 0:
                return  # locked with the CAS
            queueLifo = waitStartTime != 0
            if waitStartTime == 0:
                waitStartTime = time.monotonic_ns()
            await self.sema.acquire(queueLifo)
            starving = starving or time.monotonic_ns() - waitStartTime > starvationThresholdNs
            old = self.state
            if old & mutexStarving:
                # Ownership was handed to us; fix up the state.
                delta = mutexLocked - (1 << mutexWaiterShift)
                if not starving or old >> mutexWaiterShift == 1:
                    delta -= mutexStarving  # exit starvation mode
                self._add(delta)
                return
            awoke = True

    def unlock(self) -> None:
        """Mirrors Mutex.Unlock. Unlocking an unlocked mutex is a ``FatalError`` (Go: fatal)."""
        new = self._add(-mutexLocked)
        if new != 0:
            self._unlockSlow(new)

    def _unlockSlow(self, new: int) -> None:
        if (new + mutexLocked) & mutexLocked == 0:
            self._add(mutexLocked)
            raise fatal("sync: unlock of unlocked mutex")
        if new & mutexStarving:
            self.sema.release(handoff=True)
            return
        old = new
        while True:
            if old >> mutexWaiterShift == 0 or old & (mutexLocked | mutexWoken | mutexStarving):
                return
            new = (old - (1 << mutexWaiterShift)) | mutexWoken
            if self._cas(old, new):
                self.sema.release()
                return
            old = self.state

    async def __aenter__(self) -> Mutex:
        await self.lock()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.unlock()


class RWMutex:
    """sync.RWMutex (Go 1.19 ``rwmutex.go``): writers exclude readers; a pending
    writer blocks new readers."""

    __slots__ = ("_atomic", "readerCount", "readerSem", "readerWait", "w", "writerSem")

    def __init__(self) -> None:
        self.w = Mutex()
        self.writerSem = Sema()
        self.readerSem = Sema()
        self.readerCount = 0
        self.readerWait = 0
        self._atomic = _thread.allocate_lock()

    def _addCount(self, d: int) -> int:
        with self._atomic:
            self.readerCount += d
            return self.readerCount

    def _addWait(self, d: int) -> int:
        with self._atomic:
            self.readerWait += d
            return self.readerWait

    async def rlock(self) -> None:
        """Mirrors RWMutex.RLock."""
        if self._addCount(1) < 0:
            await self.readerSem.acquire()

    def runlock(self) -> None:
        """Mirrors RWMutex.RUnlock."""
        r = self._addCount(-1)
        if r < 0:
            if r + 1 == 0 or r + 1 == -rwmutexMaxReaders:
                self._addCount(1)
                raise fatal("sync: RUnlock of unlocked RWMutex")
            if self._addWait(-1) == 0:
                self.writerSem.release()

    async def lock(self) -> None:
        """Mirrors RWMutex.Lock."""
        await self.w.lock()
        r = self._addCount(-rwmutexMaxReaders) + rwmutexMaxReaders
        if r != 0 and self._addWait(r) != 0:
            await self.writerSem.acquire()

    def unlock(self) -> None:
        """Mirrors RWMutex.Unlock."""
        r = self._addCount(rwmutexMaxReaders)
        if r >= rwmutexMaxReaders:
            self._addCount(-rwmutexMaxReaders)
            raise fatal("sync: Unlock of unlocked RWMutex")
        for _ in range(r):
            self.readerSem.release()
        self.w.unlock()

    async def __aenter__(self) -> RWMutex:
        await self.lock()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.unlock()


class WaitGroup:
    """sync.WaitGroup: ``add(n)``, ``done()``, ``await wait()``.

    A negative counter raises ``ValuePanic`` (Go panics "sync: negative WaitGroup counter").
    """

    __slots__ = ("_atomic", "counter", "sema", "waiters")

    def __init__(self) -> None:
        self.counter = 0
        self.waiters = 0
        self.sema = Sema()
        self._atomic = _thread.allocate_lock()

    def add(self, delta: int) -> None:
        """Mirrors WaitGroup.Add: at zero, release every waiter."""
        with self._atomic:
            v = self.counter + delta
            if v < 0:
                raise ValuePanic("sync: negative WaitGroup counter")
            self.counter = v
            w = self.waiters
            if v > 0 or w == 0:
                return
            self.waiters = 0
        for _ in range(w):
            self.sema.release()

    def done(self) -> None:
        """Mirrors WaitGroup.Done."""
        self.add(-1)

    async def wait(self) -> None:
        """Mirrors WaitGroup.Wait: park until the counter is zero."""
        with self._atomic:
            if self.counter == 0:
                return
            self.waiters += 1
        await self.sema.acquire()


class Once:
    """sync.Once: ``await once.do(fn)`` runs ``fn`` (sync or async) exactly once."""

    __slots__ = ("done", "m")

    def __init__(self) -> None:
        self.done = False
        self.m = Mutex()

    async def do(self, fn: Callable[[], Any]) -> None:
        """Mirrors Once.Do/doSlow: later callers wait until the first call returns."""
        if self.done:
            return
        await self.m.lock()
        try:
            if not self.done:
                try:
                    r = fn()
                    if inspect.isawaitable(r):
                        await r
                finally:
                    self.done = True
        finally:
            self.m.unlock()


class _notifyList:
    """Mirrors runtime.notifyList: tickets so Signal wakes the longest waiter."""

    __slots__ = ("lock", "notify", "wait", "waiters")

    def __init__(self) -> None:
        self.wait = 0
        self.notify = 0
        self.lock = _thread.allocate_lock()
        self.waiters: dict[int, G] = {}


def _abortNotify(gp: G) -> bool:
    nl, t = gp.waiting
    with nl.lock:
        return nl.waiters.pop(t, None) is not None


class Cond:
    """sync.Cond over a Mutex (or RWMutex): ``await wait()``, ``signal()``, ``broadcast()``."""

    __slots__ = ("L", "_nl")

    def __init__(self, L: Mutex | RWMutex) -> None:
        self.L = L
        self._nl = _notifyList()

    async def wait(self) -> None:
        """Mirrors Cond.Wait: unlock L, park until signalled, relock L."""
        nl = self._nl
        with nl.lock:  # notifyListAdd
            t = nl.wait
            nl.wait += 1
        self.L.unlock()
        try:
            await self._notifyListWait(t)
        finally:
            await self.L.lock()

    async def _notifyListWait(self, t: int) -> None:
        nl = self._nl
        nl.lock.acquire()
        if t < nl.notify:
            nl.lock.release()
            return
        gp = _curg("Cond.wait")
        nl.waiters[t] = gp
        gp.waiting = (nl, t)
        gp.waitreason = waitReasonSyncCondWait
        gp.waitlock = nl.lock
        gp.waitabort = _abortNotify
        await park

    def signal(self) -> None:
        """Wake the longest-waiting G. Mirrors notifyListNotifyOne."""
        nl = self._nl
        with nl.lock:
            if nl.wait == nl.notify:
                return
            t = nl.notify
            nl.notify += 1
            gp = nl.waiters.pop(t, None)
        if gp is not None:
            goready(gp, callerP())

    def broadcast(self) -> None:
        """Wake every waiting G. Mirrors notifyListNotifyAll."""
        nl = self._nl
        with nl.lock:
            nl.notify = nl.wait
            gs = [nl.waiters[t] for t in sorted(nl.waiters)]
            nl.waiters.clear()
        pp = callerP()
        for gp in gs:
            goready(gp, pp)
