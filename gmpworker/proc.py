"""The scheduler proper: run queues, Ms, Ps, schedule/findrunnable, park/ready.

Mirrors ``runtime/proc.go`` (Go 1.19). Function names are Go's so this file can be
read beside ``proc.go``. Where Go uses an atomic instruction, this code uses either a
CPython operation documented as atomic (``deque.append``/``popleft``, ``list.pop``)
or ``sched.xlock``; where Go takes ``sched.lock`` so does this code.

System calls (entersyscall/exitsyscall) live in ``syscall.py``; deadlock detection
(checkdead) in ``checkdead.py``; sysmon and retake in ``sysmon.py``.
"""

from __future__ import annotations

import contextlib
import math
import random
import sys
import threading
import time
import traceback
from collections.abc import Coroutine
from typing import Any

from . import syscall as _syscall
from . import timers
from .checkdead import checkdead
from .errors import Cancelled, FatalError
from .native import core
from .runtime2 import (
    LOCAL_RUNQ_CAP,
    G,
    M,
    P,
    _GoidCacheBatch,
    _Grunnable,
    _Grunning,
    _Gwaiting,
    _Pidle,
    _Prunning,
    getg,
    schedt,
    setm,
)
from .trap import GOSCHED, PARK, PREEMPT, SyscallReq, foreign_yield_error

nanotime = time.monotonic_ns
_HALF_RUNQ = LOCAL_RUNQ_CAP // 2
stealTries = 4


# ---------------------------------------------------------------------------
# Local and global run queues


def runqput(pp: P, gp: G, next: bool) -> None:
    """Put ``gp`` on ``pp``'s local run queue; ``next`` puts it in ``runnext``.

    Mirrors runtime.runqput (proc.go, Go 1.19). Executed only by the owner P. A G
    kicked out of ``runnext`` goes to the tail of the ring; a full ring spills half
    of itself to the global queue (runqputslow).
    """
    if next:
        rn = pp.runnext
        old = None
        if rn:
            try:  # noqa: SIM105 (hot path: try is cheaper than contextlib.suppress)
                old = rn.pop()
            except IndexError:  # a thief took it between the check and the pop
                pass
        rn.append(gp)
        if old is None:
            return
        gp = old
    q = pp.runq
    if len(q) < LOCAL_RUNQ_CAP:
        q.append(gp)
        return
    runqputslow(pp, gp)


def runqputslow(pp: P, gp: G) -> None:
    """Move half of the local ring plus ``gp`` to the global queue in one batch.

    Mirrors runtime.runqputslow (proc.go, Go 1.19).
    """
    q = pp.runq
    batch: list[G] = []
    for _ in range(len(q) // 2):
        try:
            batch.append(q.popleft())
        except IndexError:
            break
    batch.append(gp)
    sched = pp.sched
    with sched.lock:
        sched.runq.extend(batch)  # globrunqputbatch


def runqget(pp: P) -> tuple[G | None, bool]:
    """Take a G from ``pp``: ``runnext`` first (inheritTime=True), then the ring head.

    Mirrors runtime.runqget (proc.go, Go 1.19).
    """
    rn = pp.runnext
    if rn:
        try:
            return rn.pop(), True
        except IndexError:
            pass
    q = pp.runq
    if q:
        try:
            return q.popleft(), False
        except IndexError:
            pass
    return None, False


def runqempty(pp: P) -> bool:
    """Mirrors runtime.runqempty: no G in the ring nor in ``runnext``."""
    return not pp.runq and not pp.runnext


def runqsize(pp: P) -> int:
    """The Gs queued on ``pp``: its ring plus ``runnext`` (schedtrace's runqsizes)."""
    return len(pp.runq) + len(pp.runnext)


def runqgrab(pp: P, stealRunNextG: bool) -> list[G]:
    """Take half (rounded up) of ``pp``'s ring; or, if empty, its ``runnext``.

    Mirrors runtime.runqgrab (proc.go, Go 1.19). Go sleeps 3 us before stealing
    ``runnext`` from a running P so a communicating pair is not split; Python cannot
    sleep 3 us, so ``time.sleep(0)`` yields the GIL to the owner instead.
    """
    q = pp.runq
    n = len(q)
    n -= n // 2
    if n == 0:
        rn = pp.runnext
        if stealRunNextG and rn:
            try:
                nxt = rn[0]
            except IndexError:
                return []
            if pp.status == _Prunning:
                time.sleep(0)
            # runnext.cas(next, 0): steal only the G we saw, if it is still there.
            if not rn or rn[0] is not nxt:
                return []
            try:
                return [rn.pop()]
            except IndexError:
                return []
        return []
    batch: list[G] = []
    for _ in range(n):
        try:
            batch.append(q.popleft())
        except IndexError:
            break
    return batch


def runqsteal(pp: P, p2: P, stealRunNextG: bool) -> G | None:
    """Steal half of ``p2``'s queue into ``pp``'s and return one G to run.

    Mirrors runtime.runqsteal (proc.go, Go 1.19).
    """
    batch = runqgrab(p2, stealRunNextG)
    if not batch:
        return None
    gp = batch.pop()
    if batch:
        pp.runq.extend(batch)
    pp.sched.counters.steals += 1
    return gp


def globrunqput(sched: schedt, gp: G) -> None:
    """Put ``gp`` at the tail of the global queue. Mirrors runtime.globrunqput.

    Callers hold ``sched.lock``.
    """
    sched.runq.append(gp)


def globrunqget(pp: P, max: int) -> G | None:
    """Take a batch from the global queue: one G to run, the rest onto ``pp``'s ring.

    Mirrors runtime.globrunqget (proc.go, Go 1.19): ``n = runqsize/gomaxprocs + 1``,
    capped at ``max`` and at half the local ring. Callers hold ``sched.lock``.
    """
    sched = pp.sched
    q = sched.runq
    size = len(q)
    if size == 0:
        return None
    n = min(size // sched.gomaxprocs + 1, size, _HALF_RUNQ)
    if max > 0 and n > max:
        n = max
    gp = q.popleft()
    local = pp.runq
    for _ in range(n - 1):
        if len(local) >= LOCAL_RUNQ_CAP:
            break
        local.append(q.popleft())
    return gp


def injectglist(sched: schedt, glist: list[G], pp: P | None) -> None:
    """Make a batch of Gs runnable (netpoll results, timer wakeups from sysmon).

    Mirrors runtime.injectglist (proc.go, Go 1.19): with no P everything goes to the
    global queue and idle Ps are started; otherwise one G per idle P goes global and
    the rest onto the local ring. Never touches ``runnext``.
    """
    if not glist:
        return
    for gp in glist:
        gp.status = _Grunnable
    if pp is None:
        with sched.lock:
            sched.runq.extend(glist)
        _startIdle(sched, len(glist))
        return
    n = min(sched.npidle, len(glist))
    if n > 0:
        with sched.lock:
            sched.runq.extend(glist[:n])
        _startIdle(sched, n)
    for gp in glist[n:]:
        runqput(pp, gp, False)


def _startIdle(sched: schedt, n: int) -> None:
    """The startIdle closure of injectglist: start up to ``n`` idle Ps."""
    while n and sched.npidle:
        startm(sched, None, False)
        n -= 1


# ---------------------------------------------------------------------------
# Idle P and idle M lists (callers hold sched.lock)


def pidleput(sched: schedt, pp: P) -> None:
    """Put ``pp`` on the idle list. Mirrors runtime.pidleput; sched.lock held."""
    pp.status = _Pidle
    pp.m = None
    sched.pidle.append(pp)
    sched.npidle += 1


def pidleget(sched: schedt) -> P | None:
    """Take an idle P. Mirrors runtime.pidleget; sched.lock held."""
    if not sched.pidle:
        return None
    pp = sched.pidle.pop()
    sched.npidle -= 1
    return pp


def mput(m: M) -> None:
    """Put ``m`` on the idle M list, then look for a deadlock.

    Mirrors runtime.mput (proc.go, Go 1.19); sched.lock held.
    """
    sched = m.sched
    sched.midle.append(m)
    sched.nmidle += 1
    checkdead(sched)


def mget(sched: schedt) -> M | None:
    """Take an idle M. Mirrors runtime.mget; sched.lock held."""
    if not sched.midle:
        return None
    sched.nmidle -= 1
    return sched.midle.pop()


def acquirep(m: M, pp: P) -> None:
    """Associate ``pp`` with ``m``. Mirrors runtime.acquirep/wirep."""
    m.p = pp
    pp.m = m
    pp.status = _Prunning


def releasep(m: M) -> P:
    """Disassociate ``m``'s P. Mirrors runtime.releasep."""
    pp = m.p
    assert pp is not None
    m.p = None
    pp.m = None
    pp.status = _Pidle
    return pp


# ---------------------------------------------------------------------------
# Waking and parking Ms


def wakep(sched: schedt) -> None:
    """Start a spinning M if there is an idle P and no spinning M.

    Mirrors runtime.wakep (proc.go, Go 1.19). The unlocked checks keep the common
    case (no idle P, or a spinner exists) to two attribute reads.
    """
    if sched.npidle == 0 or sched.nmspinning != 0:
        return
    with sched.xlock:  # atomic.Cas(&sched.nmspinning, 0, 1)
        if sched.nmspinning != 0:
            return
        sched.nmspinning = 1
    sched.counters.wakeps += 1
    startm(sched, None, True)


def _xadd_nmspinning(sched: schedt, delta: int) -> None:
    """atomic.Xadd(&sched.nmspinning, delta)."""
    with sched.xlock:
        sched.nmspinning += delta


def startm(sched: schedt, pp: P | None, spinning: bool) -> None:
    """Schedule some M to run ``pp`` (or an idle P), creating an M if none is idle.

    Mirrors runtime.startm (proc.go, Go 1.19). A caller passing ``spinning`` has
    already incremented ``nmspinning``; it is undone if there is no idle P.
    """
    with sched.lock:
        if sched.exiting:
            return
        if pp is None:
            pp = pidleget(sched)
            if pp is None:
                if spinning:
                    _xadd_nmspinning(sched, -1)
                return
        nmp = mget(sched)
        if nmp is None:
            if len(sched.allm) >= sched.maxmcount:
                # Go throws "thread exhaustion". A library should not kill the
                # process, so the P goes back to the idle list until an M frees up.
                pidleput(sched, pp)
                if spinning:
                    _xadd_nmspinning(sched, -1)
                return
            nmp = newm(sched, pp, spinning)
    if nmp.thread is None:
        _startthread(nmp)
        return
    nmp.spinning = spinning
    nmp.nextp = pp
    _wakesysmon(sched)
    nmp.park.release()  # notewakeup(&nmp.park)


def newm(sched: schedt, pp: P | None, spinning: bool) -> M:
    """Allocate a new M that will start on ``pp``. Mirrors runtime.newm; sched.lock held.

    The thread itself is started by the caller after dropping the lock.
    """
    m = M(sched, sched.mnext)
    sched.mnext += 1
    m.nextp = pp
    m.spinning = spinning
    sched.allm.append(m)
    return m


def _startthread(m: M) -> None:
    """newm1/newosproc: start the OS thread for ``m`` (a daemon ``threading.Thread``)."""
    t = threading.Thread(target=mstart, args=(m,), name=f"gmp-M{m.id}", daemon=True)
    m.thread = t
    t.start()


def mstart(m: M) -> None:
    """Entry point of a new M's thread. Mirrors runtime.mstart/mstart1 + schedule."""
    m.bindthread()
    setm(m)
    pp = m.nextp
    m.nextp = None
    if pp is not None:
        acquirep(m, pp)
    try:
        if m.p is None:
            stopm(m)
        schedule(m)
    finally:
        _mexit(m)
        setm(None)


def _mexit(m: M) -> None:
    """Drop a finished M from the M list (only when the runtime exits)."""
    sched = m.sched
    with sched.lock:
        if m in sched.allm:
            sched.allm.remove(m)
        if m in sched.midle:
            sched.midle.remove(m)
            sched.nmidle -= 1


def stopm(m: M) -> None:
    """Park ``m`` on its note until ``startm`` hands it a P.

    Mirrors runtime.stopm (proc.go, Go 1.19). ``mput`` runs checkdead.
    """
    sched = m.sched
    with sched.lock:
        if sched.exiting:
            return
        mput(m)
    m.blocked = True
    m.park.acquire()  # notesleep(&m.park)
    m.blocked = False
    pp = m.nextp
    if pp is None:  # woken for exit
        return
    m.nextp = None
    acquirep(m, pp)


def resetspinning(m: M) -> None:
    """A spinning M found work: stop spinning and wake the next spinner.

    Mirrors runtime.resetspinning (proc.go, Go 1.19).
    """
    m.spinning = False
    _xadd_nmspinning(m.sched, -1)
    wakep(m.sched)


def handoffp(pp: P) -> None:
    """Hand off ``pp`` from a syscall or retake: start an M if there is work.

    Mirrors runtime.handoffp (proc.go, Go 1.19): "The conditions here and in
    handoffp must agree: if findrunnable would return a G to run, handoffp must
    start an M."
    """
    sched = pp.sched
    sched.counters.handoffs += 1
    if not runqempty(pp) or sched.runq:
        startm(sched, pp, False)
        return
    if sched.nmspinning + sched.npidle == 0:
        with sched.xlock:
            ok = sched.nmspinning == 0
            if ok:
                sched.nmspinning = 1
        if ok:
            startm(sched, pp, True)
            return
    lock = sched.lock
    lock.acquire()
    if sched.runq:
        lock.release()
        startm(sched, pp, False)
        return
    if sched.npidle == sched.gomaxprocs - 1 and sched.lastpoll != 0:
        # The last running P, and nobody is polling the network.
        lock.release()
        startm(sched, pp, False)
        return
    when = pp.timer0When
    pidleput(sched, pp)
    lock.release()
    if when:
        timers.wakeNetPoller(sched, when)


def _wakesysmon(sched: schedt) -> None:
    """Wake sysmon from its deep sleep (Go does this in startm/exitsyscall paths)."""
    if sched.sysmonwait:
        with sched.lock:
            if sched.sysmonwait:
                sched.sysmonwait = 0
                sched.sysmonnote.release()


def exit_locked(sched: schedt) -> None:
    """Stop the runtime: wake every parked M and the poller so their loops end.

    Python-only (Go exits the process). sched.lock held.
    """
    sched.exiting = True
    for m in sched.midle:
        m.nextp = None
        m.park.release()
    sched.midle.clear()
    sched.nmidle = 0
    if sched.sysmonwait:
        sched.sysmonwait = 0
        sched.sysmonnote.release()
    if sched.netpoll is not None:
        sched.netpoll.netpollBreak()


# ---------------------------------------------------------------------------
# Creating, readying and finishing Gs


def newgoid(sched: schedt, pp: P | None) -> int:
    """Allocate a goid from the P's cache, refilled 16 at a time (_GoidCacheBatch)."""
    if pp is None:
        with sched.xlock:
            sched.goidgen += 1
            return sched.goidgen
    if pp.goidcache == pp.goidcacheend:
        with sched.xlock:
            pp.goidcache = sched.goidgen + 1
            sched.goidgen += _GoidCacheBatch
        pp.goidcacheend = pp.goidcache + _GoidCacheBatch
    goid = pp.goidcache
    pp.goidcache += 1
    return goid


def newproc(sched: schedt, coro: Coroutine[Any, Any, Any], pp: P | None) -> G:
    """Create a runnable G for ``coro``: into ``pp.runnext``, or the global queue.

    Mirrors runtime.newproc/newproc1 (proc.go, Go 1.19): ``runqput(pp, newg, true)``
    then ``wakep()`` once main has started. Without a P (a foreign thread, or a G in
    a syscall) the G goes to the global queue, as injectglist does.
    """
    if pp is not None and pp.goidcache != pp.goidcacheend:
        goid = pp.goidcache  # newgoid's fast path, inlined
        pp.goidcache += 1
    else:
        goid = newgoid(sched, pp)
    gp = G(sched, goid, coro)
    sched.allgs[goid] = gp
    sched.counters.spawned += 1
    if pp is not None:
        runqput(pp, gp, True)
    else:
        with sched.lock:
            globrunqput(sched, gp)
    if sched.mainStarted and sched.npidle and not sched.nmspinning:
        wakep(sched)
    return gp


def goready(gp: G, pp: P | None) -> None:
    """Make a waiting G runnable in ``pp.runnext`` and wake a P if one is idle.

    Mirrors runtime.goready/ready (proc.go, Go 1.19), with runqput(pp, gp, true)
    inlined because this is the hottest call in the runtime. ``pp`` is the caller's
    P; callers without one (foreign threads, syscalls, sysmon) use the global queue.
    """
    gp.status = _Grunnable
    sched = gp.sched
    if pp is None:
        with sched.lock:
            globrunqput(sched, gp)
    else:
        rn = pp.runnext
        if rn:
            try:
                old = rn.pop()
            except IndexError:
                old = None
            rn.append(gp)
            if old is not None:
                runqput(pp, old, False)
        else:
            rn.append(gp)
    if sched.npidle and not sched.nmspinning:
        wakep(sched)


def ready_interrupted(gp: G, pp: P | None) -> bool:
    """Pull a parked G off its wait queue and ready it with its pending exception.

    Python-only (GHandle.cancel/throw). The exception is taken before the G is won,
    so a one-shot throw is delivered by one caller only; a caller that then loses
    the G (a waker or another canceller got it first) puts the exception back for
    the next park point. Returns whether this call won the G.
    """
    abort = gp.waitabort
    if gp.status != _Gwaiting or abort is None:
        return False
    exc = gp._takeinterrupt()
    if exc is None:
        return False
    if not abort(gp):
        gp._restoreinterrupt(exc)
        return False
    gp.exc = exc
    goready(gp, pp)
    return True


def goexit(m: M, gp: G, result: Any, exc: BaseException | None) -> None:
    """Finish ``gp``: mark it dead and deliver its outcome.

    Mirrors runtime.goexit1/goexit0 (proc.go, Go 1.19). An exception that escapes a
    G is a panic: in ``run()`` it stops the runtime; embedded, it goes to the hook.
    """
    sched = m.sched
    m.curg = None
    sched.allgs.pop(gp.goid, None)
    _gfree(gp)
    if exc is not None and not isinstance(exc, Cancelled | StopIteration):
        exc.add_note(f"(raised in goroutine {gp.goid})")
        _panic(sched, gp, exc)
    elif gp.goid == 1 and not sched.islibrary:
        with sched.lock:
            sched.result = result
            exit_locked(sched)
    gp._complete(result, exc, m.p)  # sets _Gdead


def _gfree(gp: G) -> None:
    """Drop what a dead G no longer needs (goexit0's field clearing before gfput).

    Go reuses dead Gs; here the record stays alive only as the caller's handle, so
    everything else is let go: the finished coroutine, the Context, and above all
    the back-references (sudog.g, timer.arg) that would keep the G in a reference
    cycle, so refcounting frees a dead G at once instead of the cyclic GC.
    """
    gp.m = None
    gp.coro = None  # type: ignore[assignment]
    gp.ctx = None  # type: ignore[assignment]
    gp.waiting = None  # its sudog points back at it (sudog.g)
    gp.timer = None  # so does its sleep timer (timer.arg)
    gp.param = None  # a sudog too, possibly
    gp._throwexc = None  # a throw() the G finished before reaching


def fatal(msg: str) -> FatalError:
    """A fatal error for the caller to raise. Mirrors runtime.fatal (panic.go).

    Go's ``fatal`` never returns: the process dies whatever the goroutine does. Inside
    ``run()`` the runtime records the error and starts exiting before the caller
    raises it, so the program ends with it even if the G catches it; ``run()`` then
    raises it. An embedded Runtime (islibrary) cannot end the process: only the G
    gets the exception.
    """
    err = FatalError(msg)
    gp = getg()
    if gp is not None and not gp.sched.islibrary:
        sched = gp.sched
        with sched.lock:
            if sched.panicking is None:
                sched.panicking = err
            exit_locked(sched)
    return err


def _panic(sched: schedt, gp: G, exc: BaseException) -> None:
    """Report a panic: stop ``run()``, or call the embedder's hook (never silent)."""
    if not sched.islibrary:
        with sched.lock:
            if sched.panicking is None:
                sched.panicking = exc
            exit_locked(sched)
        return
    hook = sched.panic_hook
    if hook is None:
        print(f"panic in goroutine {gp.goid}:", file=sys.stderr)
        traceback.print_exception(exc, file=sys.stderr)
        return
    try:
        hook(gp.goid, exc)
    except BaseException:  # a failing hook must not kill the M
        traceback.print_exc(file=sys.stderr)


# ---------------------------------------------------------------------------
# The M loop: schedule + execute + park_m


def schedule(m: M) -> None:
    """One M's scheduling loop (its G0): find a G, run it until it yields, repeat.

    Mirrors runtime.schedule + execute + gogo and the mcall handlers (park_m,
    gosched_m, gopreempt_m, the syscall paths) of proc.go (Go 1.19), in one
    function because this is the hot path: the first lines inline findRunnable's
    cheap steps (timers, the 1-in-61 global check, runnext, the local ring) and
    the common park commit (release one lock). Everything else is ``findrunnable``.
    A G keeps the M while its traps do not suspend it (curio's ``while current``):
    a fast syscall exit or a refused park resumes it at once.

    The loop is ``while True`` with the exit test inside on purpose: CPython 3.11
    specializes (quickens) a function's bytecode only after a few calls or
    ``JUMP_BACKWARD``s, and compiles ``while cond:`` to a conditional backward jump
    that does not count. This function is entered once per M and never returns
    while the M works, so with ``while not sched.exiting`` every attribute access
    in it stayed generic (about a fifth of a channel round trip).
    """
    sched = m.sched
    counters = sched.counters
    checkTimers = timers.checkTimers
    while True:
        if sched.exiting:
            return
        pp = m.p
        if pp is None:
            _reacquirep(m)
            continue
        if pp.timer0When:
            checkTimers(pp, 0, pp)
        # runqget's runnext, unless this is a 1-in-61 tick with global work.
        gp: G | None = None
        rn = pp.runnext
        if rn and (pp.schedtick % 61 or not sched.runq):
            try:  # noqa: SIM105 (hot path: try is cheaper than contextlib.suppress)
                gp = rn.pop()
            except IndexError:  # a thief took it
                pass
        if gp is not None:
            inheritTime = True
        else:
            gp, inheritTime = _findrunnable_fast(m, pp)
            if gp is None or m.p is None:
                return
            pp = m.p
        if m.spinning:
            resetspinning(m)
        if not inheritTime:
            pp.schedtick += 1
        # execute(gp, inheritTime)
        m.curg = gp
        gp.m = m
        gp.status = _Grunning
        while True:
            counters.switches += 1
            exc = gp.exc
            try:
                if exc is None:
                    req = gp.ctx.run(gp.coro.send, None)
                else:
                    gp.exc = None
                    req = gp.ctx.run(gp.coro.throw, exc)
            except StopIteration as e:
                goexit(m, gp, e.value, None)
                break
            except BaseException as e:
                goexit(m, gp, None, e)
                break
            if req is PARK:
                # park_m: the G is _Gwaiting before its lock is released.
                gp.status = _Gwaiting
                m.curg = None
                gp.m = None  # dropg
                if gp.waitunlockf is None:
                    lk = gp.waitlock
                    if lk is not None:
                        gp.waitlock = None
                        lk.release()
                    if gp.preempt:
                        ready_interrupted(gp, m.p)
                    break
                if park_m(m, gp):
                    break
            elif req is GOSCHED or req is PREEMPT:
                if req is PREEMPT:
                    exc = gp._takeinterrupt()
                    if exc is not None:
                        gp.exc = exc
                        continue
                gosched_m(m, gp)
                break
            elif type(req) is SyscallReq:
                if not _syscall.syscall_m(m, gp, req):
                    break
                if sched.exiting:
                    # The program ended while this G was in its syscall: like a Go
                    # process exiting, the G does not run again.
                    _abandon(m, gp)
                    break
            else:
                gp.exc = foreign_yield_error(req)
            if m.p is None:
                # Resuming without a P (sysmon retook it while the G blocked in an
                # unannotated call): queue the G globally and go find a P.
                gosched_m(m, gp)
                break


def _findrunnable_fast(m: M, pp: P) -> tuple[G | None, bool]:
    """findRunnable's steps 4 and 6 (the 1-in-61 global check, the local queue),
    falling back to the full ``findrunnable``."""
    sched = m.sched
    if pp.schedtick % 61 == 0 and sched.runq:
        with sched.lock:
            gp = globrunqget(pp, 1)
        if gp is not None:
            return gp, False
    gp, inheritTime = runqget(pp)
    if gp is not None:
        return gp, inheritTime
    return findrunnable(m)


def _abandon(m: M | None, gp: G) -> None:
    """Drop a G when the runtime has exited: close its coroutine (runs its finally blocks)."""
    if m is not None:
        m.curg = None
    gp.sched.allgs.pop(gp.goid, None)
    with contextlib.suppress(BaseException):  # a finally block that awaits cannot run
        gp.coro.close()
    _gfree(gp)
    gp._complete(None, Cancelled(f"goroutine {gp.goid} abandoned: the runtime exited"), None)


def park_m(m: M, gp: G) -> bool:
    """Run a park's unlockf after the G is waiting. Mirrors runtime.park_m (proc.go).

    Returns False if unlockf refused: the G resumes at once (``execute(gp, true)``).
    """
    f = gp.waitunlockf
    lk = gp.waitlock
    gp.waitunlockf = None
    gp.waitlock = None
    assert f is not None
    if not f(gp, lk):
        gp.status = _Grunning
        gp.m = m
        m.curg = gp
        return False
    if gp.preempt:
        ready_interrupted(gp, m.p)
    return True


def gosched_m(m: M, gp: G) -> None:
    """The G goes to the global queue. Mirrors runtime.goschedImpl (gosched_m/gopreempt_m)."""
    # Keep a pending cancel/throw visible to the next trap. Reset, then set again: a
    # foreign cancel/throw records its request before setting preempt, so whichever
    # way it interleaves with these lines, preempt ends up True.
    gp.preempt = False
    if gp._interruptpending():
        gp.preempt = True
    gp.status = _Grunnable
    m.curg = None
    gp.m = None
    sched = m.sched
    with sched.lock:
        globrunqput(sched, gp)


def _reacquirep(m: M) -> None:
    """An M without a P (after a retake) takes an idle P, or parks. Like exitsyscall0."""
    sched = m.sched
    with sched.lock:
        pp = pidleget(sched)
    if pp is not None:
        acquirep(m, pp)
    else:
        stopm(m)


# ---------------------------------------------------------------------------
# findrunnable and stealWork


def findrunnable(m: M) -> tuple[G | None, bool]:
    """Find a runnable G, blocking (parking the M) until there is one.

    Mirrors runtime.findRunnable (proc.go, Go 1.19), in Go's order: timers, the
    1-in-61 global check, local queue, global queue, non-blocking netpoll, stealing
    (only if fewer than half the busy Ps have a spinner), then drop the P, the
    "delicate dance" re-check, a blocking netpoll until the next timer, and stopm.
    Returns (None, False) when the runtime is exiting.
    """
    sched = m.sched
    np = sched.netpoll
    while True:
        if sched.exiting:
            return None, False
        pp = m.p
        if pp is None:
            _reacquirep(m)
            continue
        now, pollUntil, _ = timers.checkTimers(pp, 0, pp)
        if pp.schedtick % 61 == 0 and sched.runq:
            with sched.lock:
                gp = globrunqget(pp, 1)
            if gp is not None:
                return gp, False
        gp, inheritTime = runqget(pp)
        if gp is not None:
            return gp, inheritTime
        if sched.runq:
            with sched.lock:
                gp = globrunqget(pp, 0)
            if gp is not None:
                return gp, False
        if np is not None and np.waiters > 0 and sched.lastpoll != 0:
            glist = np.netpoll(0)
            if glist:
                gp = glist.pop(0)
                injectglist(sched, glist, pp)
                gp.status = _Grunnable
                return gp, False
        if m.spinning or 2 * sched.nmspinning < sched.gomaxprocs - sched.npidle:
            if not m.spinning:
                m.spinning = True
                _xadd_nmspinning(sched, 1)
            gp, inheritTime, now, w, newWork = stealWork(m, now)
            if gp is not None:
                return gp, inheritTime
            if newWork:
                continue
            if w and (pollUntil == 0 or w < pollUntil):
                pollUntil = w
        allpSnapshot = sched.allp
        with sched.lock:
            if sched.exiting:
                return None, False
            if sched.runq:
                return globrunqget(pp, 0), False
            releasep(m)
            pidleput(sched, pp)
        wasSpinning = m.spinning
        if m.spinning:
            # The delicate dance: drop nmspinning first, then re-check every queue,
            # so work submitted meanwhile is not stranded (#StoreLoad in Go).
            m.spinning = False
            _xadd_nmspinning(sched, -1)
            if _checkRunqsNoP(m, allpSnapshot):
                continue
            pollUntil = _checkTimersNoP(allpSnapshot, pollUntil)
        haveP, gp = _pollnetwork(m, np, pollUntil, wasSpinning)
        if gp is not None:
            return gp, False
        if not haveP:
            stopm(m)


def _checkRunqsNoP(m: M, allpSnapshot: list[P]) -> bool:
    """Mirrors checkRunqsNoP: if some P has work, take an idle P and spin again."""
    sched = m.sched
    for p2 in allpSnapshot:
        if not runqempty(p2):
            with sched.lock:
                pp = pidleget(sched)
            if pp is None:
                return False
            acquirep(m, pp)
            m.spinning = True
            _xadd_nmspinning(sched, 1)
            return True
    return False


def _checkTimersNoP(allpSnapshot: list[P], pollUntil: int) -> int:
    """Mirrors checkTimersNoP: the earliest timer of any P."""
    for p2 in allpSnapshot:
        w = p2.timer0When
        if w and (pollUntil == 0 or w < pollUntil):
            pollUntil = w
    return pollUntil


def _pollnetwork(m: M, np: Any, pollUntil: int, wasSpinning: bool) -> tuple[bool, G | None]:
    """Step 13 of findRunnable: block in netpoll until I/O or the next timer.

    Returns (holds a P again, a G to run now or None). Without a P the caller stops
    the M.
    """
    sched = m.sched
    if np is None or not (np.waiters > 0 or pollUntil != 0):
        return False, None
    with sched.xlock:  # sched.lastpoll.Swap(0)
        last = sched.lastpoll
        sched.lastpoll = 0
    if last == 0:
        pu = sched.pollUntil
        if pollUntil and (pu == 0 or pu > pollUntil):
            np.netpollBreak()
        return False, None
    sched.pollUntil = pollUntil
    delay = -1 if pollUntil == 0 else max(0, pollUntil - nanotime())
    if sched.exiting:
        delay = 0
    glist = np.netpoll(delay)
    sched.pollUntil = 0
    sched.lastpoll = nanotime()
    with sched.lock:
        pp = pidleget(sched)
    if pp is None:
        injectglist(sched, glist, None)
        return False, None
    acquirep(m, pp)
    if glist:
        gp = glist.pop(0)
        gp.status = _Grunnable
        injectglist(sched, glist, pp)
        return True, gp
    if wasSpinning:
        m.spinning = True
        _xadd_nmspinning(sched, 1)
    return True, None


def _stealorder(n: int) -> list[int]:
    """A random order visiting every P once (Go's randomOrder: coprime stride)."""
    if n == 1:
        return [0]
    start = random.randrange(n)
    inc = random.choice(_coprimes(n))
    return [(start + i * inc) % n for i in range(n)]


_coprime_cache: dict[int, list[int]] = {}


def _coprimes(n: int) -> list[int]:
    c = _coprime_cache.get(n)
    if c is None:
        c = [i for i in range(1, n + 1) if math.gcd(i, n) == 1]
        _coprime_cache[n] = c
    return c


def stealWork(m: M, now: int) -> tuple[G | None, bool, int, int, bool]:
    """Try 4 times to steal from every other P in random order.

    Mirrors runtime.stealWork (proc.go, Go 1.19): only the last try runs other
    Ps' timers and may take their ``runnext``. Between tries the GIL is released
    with ``time.sleep(0)`` (a busy spinner would slow the running M by 65%).
    Returns (gp, inheritTime, now, pollUntil, newWork).
    """
    pp = m.p
    assert pp is not None
    sched = m.sched
    allp = sched.allp
    pollUntil = 0
    ranTimer = False
    for i in range(stealTries):
        last = i == stealTries - 1
        for idx in _stealorder(len(allp)):
            p2 = allp[idx]
            if p2 is pp:
                continue
            if last and p2.timer0When:
                now, w, ran = timers.checkTimers(p2, now, pp)
                if w and (pollUntil == 0 or w < pollUntil):
                    pollUntil = w
                if ran:
                    gp, inheritTime = runqget(pp)
                    if gp is not None:
                        return gp, inheritTime, now, pollUntil, ranTimer
                    ranTimer = True
            # Go skips idle Ps (their queues are empty); here an idle P can hold work
            # when maxmcount kept handoffp from starting an M for it, so look anyway.
            if p2.status != _Pidle or p2.runq:
                gp = runqsteal(pp, p2, last)
                if gp is not None:
                    return gp, False, now, pollUntil, ranTimer
        if sched.exiting:
            break
        if not last:
            time.sleep(0)
    return None, False, now, pollUntil, ranTimer


# The native core replaces the hot paths above with C versions of the same Go
# functions (native.py); the Python definitions stay the reference and run with
# GMPWORKER_PURE=1. Rebinding the module globals here means every caller, in this
# module and in those that import these names, uses the native version.
if core is not None:
    runqput = core.runqput
    runqget = core.runqget
    runqempty = core.runqempty
    runqsize = core.runqsize
    runqgrab = core.runqgrab
    goready = core.goready
    newproc = core.newproc
    schedule = core.schedule

__all__ = [
    "acquirep",
    "fatal",
    "findrunnable",
    "globrunqget",
    "globrunqput",
    "goexit",
    "goready",
    "handoffp",
    "injectglist",
    "mget",
    "mput",
    "newproc",
    "pidleget",
    "pidleput",
    "releasep",
    "runqget",
    "runqput",
    "runqputslow",
    "runqsize",
    "runqsteal",
    "schedule",
    "startm",
    "stopm",
    "wakep",
]
