"""Blocking calls with P hand-off: entersyscall, exitsyscall (fast and slow paths).

Mirrors ``entersyscall``/``reentersyscall``, ``entersyscallblock``, ``exitsyscall``,
``exitsyscallfast`` and ``exitsyscall0`` (proc.go, Go 1.19). The blocking function
runs on the current M, between two steps of the G's coroutine, so the G is
suspended while it runs and can later resume on any M. The P is left in
``_Psyscall`` for sysmon to retake (or handed off at once with ``block=True``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import proc
from .runtime2 import G, M, P, _Grunnable, _Grunning, _Gsyscall, _Psyscall, getg
from .trap import SyscallReq, trap


async def syscall(fn: Callable[..., Any], *args: Any, block: bool = False, **kwargs: Any) -> Any:
    """Run the blocking call ``fn(*args, **kwargs)`` on this G's M and return its result.

    The M enters syscall state and its P stays stealable; if the call lasts longer
    than a sysmon tick and there is other work, sysmon retakes the P and hands it
    to another M (Go's retake/handoffp). ``block=True`` hands the P off at once
    (entersyscallblock), for calls known to block. Only calls that release the GIL
    (sleep, socket/file I/O, most C extensions) let other Gs run meanwhile.
    """
    if not callable(fn):
        raise TypeError(f"syscall() needs a callable, got {type(fn).__name__}")
    gp = getg()
    if gp is None:
        raise RuntimeError("gmpworker.syscall() must run inside a goroutine")
    await trap(SyscallReq(fn, args, kwargs, block))
    r = gp.param  # exitsyscall left the call's result here
    gp.param = None
    return r


def entersyscall(m: M, gp: G) -> None:
    """Mirrors runtime.reentersyscall: no blocking step, the P stays stealable.

    As Go's ``entersyscall_sysmon``, wake sysmon from its deep sleep: it is the one
    that retakes this P if the call lasts, and it sleeps after an idle spell.
    """
    gp.status = _Gsyscall
    pp = m.p
    if pp is None:  # the P was retaken earlier (unannotated blocking call)
        return
    m.syscalltick = pp.syscalltick
    pp.m = None
    m.oldp = pp
    m.p = None
    pp.status = _Psyscall
    proc._wakesysmon(m.sched)


def entersyscallblock(m: M, gp: G) -> None:
    """Mirrors runtime.entersyscallblock: hand the P off immediately."""
    gp.status = _Gsyscall
    if m.p is not None:
        pp = proc.releasep(m)
        pp.syscalltick += 1
        proc.handoffp(pp)


def syscall_m(m: M, gp: G, req: SyscallReq) -> bool:
    """Run ``req`` as a syscall on ``m``. True: the G continues here with a P.

    False: the G was queued (exitsyscall0) and this M has parked and been restarted
    with another P, or the runtime is exiting.
    """
    counters = m.sched.counters
    counters.syscalls += 1
    if req.block:
        entersyscallblock(m, gp)
    else:
        entersyscall(m, gp)
    try:
        gp.param = gp.ctx.run(req.fn, *req.args, **req.kwargs)
    except BaseException as e:
        gp.exc = e
    if gp.preempt:
        interrupt = gp._takeinterrupt()  # GHandle.cancel/throw during the call
        if interrupt is not None:
            gp.param = None
            gp.exc = interrupt
    return exitsyscall(m, gp)


def exitsyscall(m: M, gp: G) -> bool:
    """Mirrors runtime.exitsyscall: reacquire the old P or an idle one, else exitsyscall0."""
    sched = m.sched
    oldp = m.oldp
    m.oldp = None
    if exitsyscallfast(m, oldp):
        gp.status = _Grunning
        sched.counters.syscall_fast_exits += 1
        proc._wakesysmon(sched)
        return True
    sched.counters.syscall_slow_exits += 1
    return exitsyscall0(m, gp)


def exitsyscallfast(m: M, oldp: P | None) -> bool:
    """CAS the old P from _Psyscall back to running, or take an idle P.

    Mirrors runtime.exitsyscallfast (+ exitsyscallfast_reacquired/_pidle). The CAS
    is done under ``sched.xlock`` because sysmon's retake races with it.
    """
    sched = m.sched
    if oldp is not None:
        with sched.xlock:
            ok = oldp.status == _Psyscall
            if ok:
                proc.acquirep(m, oldp)
        if ok:
            if m.syscalltick != oldp.syscalltick:
                oldp.syscalltick += 1
            oldp.syscalltick += 1
            return True
    if sched.pidle:
        with sched.lock:
            pp = proc.pidleget(sched)
        if pp is not None:
            proc.acquirep(m, pp)
            return True
    return False


def exitsyscall0(m: M, gp: G) -> bool:
    """No P to return to: take an idle P and run the G here, or queue it and park.

    Mirrors runtime.exitsyscall0 (proc.go, Go 1.19): with an idle P it is
    ``acquirep`` + ``execute(gp, false)`` (True: the G continues on this M);
    otherwise ``globrunqput`` + ``stopm`` (False).
    """
    sched = m.sched
    with sched.lock:
        pp = proc.pidleget(sched)
        if pp is None:
            gp.status = _Grunnable
            m.curg = None
            gp.m = None
            proc.globrunqput(sched, gp)
    if pp is not None:
        proc.acquirep(m, pp)
        pp.schedtick += 1  # execute(gp, inheritTime=false)
        gp.status = _Grunning
        return True
    proc._wakesysmon(sched)
    proc.stopm(m)
    return False
