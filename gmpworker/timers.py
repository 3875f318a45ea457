"""Per-P timer heaps, sleep, and the Timer/Ticker/after API.

Mirrors ``runtime/time.go`` (Go 1.19): ``addtimer``, ``deltimer``, ``modtimer``,
``checkTimers``/``runtimer``, ``wakeNetPoller``, ``timeSleep`` with
``resetForSleep`` as the park commit and ``goroutineReady`` as the callback, and
``time.NewTimer``/``NewTicker``'s ``sendTime``. Go's heap is 4-ary; this is a binary
``heapq`` of (when, seq, timer), which orders timers the same way.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import proc as _proc
from .errors import ValuePanic
from .runtime2 import G, P, getg, schedt, waitReasonSleep
from .trap import park

if TYPE_CHECKING:
    from .chan import Chan

nanotime = time.monotonic_ns
_seq = itertools.count()

# timer statuses (a reduced version of Go 1.19's timerWaiting/timerDeleted/...)
timerNoStatus = 0
timerWaiting = 1
timerDeleted = 2

TimerFunc = Callable[[Any, int, "P | None"], None]


class Timer_:
    """A runtime timer (Go's ``runtime.timer``): fire ``f(arg, seq, pp)`` at ``when``.

    ``pp`` passed to ``f`` is the P of the M running the timer, for ``goready``.
    """

    __slots__ = ("arg", "f", "period", "pp", "seq", "status", "when")

    def __init__(self, f: TimerFunc, arg: Any, when: int = 0, period: int = 0) -> None:
        self.f = f
        self.arg = arg
        self.when = when
        self.period = period
        self.pp: P | None = None
        self.status = timerNoStatus
        self.seq = -1  # seq of this timer's live heap entry; older entries are stale


def addtimer(t: Timer_, pp: P) -> None:
    """Add ``t`` to ``pp``'s heap and make sure a poller wakes for it.

    Mirrors runtime.addtimer (time.go, Go 1.19), ending with ``wakeNetPoller``.
    """
    with pp.timersLock:
        t.seq = seq = next(_seq)
        heapq.heappush(pp.timers, (t.when, seq, t))
        t.pp = pp
        t.status = timerWaiting
        pp.timer0When = pp.timers[0][0]
    wakeNetPoller(pp.sched, t.when)


def deltimer(t: Timer_) -> bool:
    """Stop ``t``; True if it was pending. Mirrors runtime.deltimer (lazy deletion)."""
    pp = t.pp
    if pp is None:
        return False
    with pp.timersLock:
        if t.pp is not pp or t.status != timerWaiting:
            return False
        t.status = timerDeleted
        t.pp = None
        pp.deletedTimers += 1
        if pp.deletedTimers > len(pp.timers) // 4:
            _clearDeletedTimers(pp)
    return True


def _clearDeletedTimers(pp: P) -> None:
    """Mirrors runtime.clearDeletedTimers; pp.timersLock held."""
    pp.timers = [e for e in pp.timers if _live(e, pp)]
    heapq.heapify(pp.timers)
    pp.deletedTimers = 0
    pp.timer0When = pp.timers[0][0] if pp.timers else 0


def _live(e: tuple[int, int, Timer_], pp: P) -> bool:
    t = e[2]
    return t.status == timerWaiting and t.pp is pp and t.seq == e[1]


def checkTimers(pp: P, now: int, curpp: P | None) -> tuple[int, int, bool]:
    """Run ``pp``'s due timers; return (now, next timer's when or 0, ran any).

    Mirrors runtime.checkTimers/runtimer (proc.go + time.go, Go 1.19). The first
    check is the lock-free peek at ``timer0When``. Callbacks run without the timer
    lock (Go unlocks around ``f``) and ready Gs onto ``curpp``, the caller's P.
    """
    nxt = pp.timer0When
    if nxt == 0:
        return now, 0, False
    if now == 0:
        now = nanotime()
    if now < nxt:
        return now, nxt, False
    fire: list[tuple[TimerFunc, Any, int]] = []
    with pp.timersLock:
        h = pp.timers
        while h and h[0][0] <= now:
            when, seq, t = heapq.heappop(h)
            if t.status != timerWaiting or t.pp is not pp or t.seq != seq:
                if pp.deletedTimers:
                    pp.deletedTimers -= 1
                continue
            if t.period > 0:
                # Go: t.when += t.period * (1 + -delta/t.period)
                t.when = when + t.period * (1 + (now - when) // t.period)
                t.seq = nseq = next(_seq)
                heapq.heappush(h, (t.when, nseq, t))
            else:
                t.status = timerNoStatus
                t.pp = None
            fire.append((t.f, t.arg, seq))
        pp.timer0When = h[0][0] if h else 0
    for f, arg, seq in fire:
        f(arg, seq, curpp)
    return now, pp.timer0When, bool(fire)


def wakeNetPoller(sched: schedt, when: int) -> None:
    """Make sure some M will wake by ``when``. Mirrors runtime.wakeNetPoller (proc.go)."""
    if sched.lastpoll == 0:
        pu = sched.pollUntil
        if (pu == 0 or pu > when) and sched.netpoll is not None:
            sched.netpoll.netpollBreak()
    else:
        _proc.wakep(sched)


def ptimers(sched: schedt) -> int:
    """How many live timers all Ps hold (checkdead's "any P has timers")."""
    return sum(len(pp.timers) - pp.deletedTimers for pp in sched.allp)


# ---------------------------------------------------------------------------
# sleep


def goroutineReady(arg: Any, seq: int, pp: P | None) -> None:
    """Timer callback of a sleeping G. Mirrors runtime.goroutineReady (into runnext)."""
    _proc.goready(arg, pp)


def _resetForSleep(gp: G, arg: Any) -> bool:
    """Park commit of sleep: add the timer only once the G is waiting.

    Mirrors runtime.resetForSleep: adding it earlier could fire it on another P
    and ready a G that is still running. ``arg`` is (timer, the sleeper's P).
    """
    t, pp = arg
    addtimer(t, pp if pp is not None else gp.sched.allp[0])
    return True


def _abortSleep(gp: G) -> bool:
    t = gp.timer
    return t is not None and deltimer(t)


async def sleep(seconds: float) -> None:
    """Pause the current G for at least ``seconds``. Mirrors time.Sleep / timeSleep.

    The G parks with wait reason "sleep" and holds no M while it sleeps.
    """
    if seconds <= 0:
        return
    gp = getg()
    if gp is None:
        raise RuntimeError("gmpworker.sleep() called outside a goroutine")
    t = gp.timer
    if t is None:
        t = gp.timer = Timer_(goroutineReady, gp)
    t.when = nanotime() + int(seconds * 1e9)
    gp.waitreason = waitReasonSleep
    m = gp.m
    gp.waitlock = (t, m.p if m is not None else None)
    gp.waitunlockf = _resetForSleep
    gp.waitabort = _abortSleep
    await park


# ---------------------------------------------------------------------------
# time.Timer, time.Ticker, time.After


def _currentP() -> tuple[schedt | None, P | None]:
    gp = getg()
    if gp is None:
        return None, None
    m = gp.m
    return gp.sched, (m.p if m is not None else None)


def _sendTime(c: Any, seq: int, pp: P | None) -> None:
    """Mirrors time.sendTime: a non-blocking send of the current time."""
    c._trysend(time.time(), pp)


class Timer:
    """A single event: ``c`` receives the time after ``seconds``. Mirrors time.Timer.

    Create it inside a G (the timer lives on that G's P).
    """

    __slots__ = ("_sched", "_t", "c")

    def __init__(self, seconds: float) -> None:
        from .chan import Chan

        sched, pp = _currentP()
        if sched is None:
            raise RuntimeError("gmpworker.Timer must be created inside a goroutine")
        self._sched = sched
        self.c: Chan[float] = Chan(1)
        self._t = Timer_(_sendTime, self.c)
        self._start(seconds, 0, pp)

    def _start(self, seconds: float, period: int, pp: P | None) -> None:
        self._t.when = nanotime() + max(0, int(seconds * 1e9))
        self._t.period = period
        addtimer(self._t, pp if pp is not None else self._sched.allp[0])

    def stop(self) -> bool:
        """Prevent the timer from firing; True if it was still pending."""
        return deltimer(self._t)

    def reset(self, seconds: float) -> bool:
        """Re-arm the timer for ``seconds`` from now; True if it was still pending."""
        active = deltimer(self._t)
        self._start(seconds, self._t.period, _currentP()[1])
        return active


class Ticker(Timer):
    """Delivers the time on ``c`` every ``seconds`` (dropping ticks a slow reader misses).

    Mirrors time.Ticker.
    """

    __slots__ = ()

    def __init__(self, seconds: float) -> None:
        if seconds <= 0:
            raise ValuePanic("non-positive interval for Ticker")
        from .chan import Chan

        sched, pp = _currentP()
        if sched is None:
            raise RuntimeError("gmpworker.Ticker must be created inside a goroutine")
        self._sched = sched
        self.c = Chan(1)
        self._t = Timer_(_sendTime, self.c)
        period = int(seconds * 1e9)
        self._start(seconds, period, pp)

    def reset(self, seconds: float) -> bool:
        """Change the period to ``seconds``, counting from now."""
        if seconds <= 0:
            raise ValuePanic("non-positive interval for Ticker.reset")
        active = deltimer(self._t)
        self._start(seconds, int(seconds * 1e9), _currentP()[1])
        return active


def after(seconds: float) -> Chan[float]:
    """A channel that receives the time after ``seconds``. Mirrors time.After."""
    return Timer(seconds).c


def afterfunc(sched: schedt, seconds: float, f: Callable[[], None], pp: P | None) -> Timer_:
    """Run ``f()`` on an M when ``seconds`` pass (runtime-internal, non-blocking ``f``)."""
    t = Timer_(lambda arg, seq, p: f(), None, nanotime() + max(0, int(seconds * 1e9)))
    addtimer(t, pp if pp is not None else sched.allp[0])
    return t
