"""``GODEBUG=schedtrace``/``scheddetail`` output and the ``stats()`` dict.

Mirrors ``runtime.schedtrace(detailed)`` (proc.go) in Go 1.19's exact format
(later Go versions print ``nil`` instead of ``-1`` and add ``needspinning`` and
``schedticks``; this follows 1.19). Set ``GMP_SCHEDTRACE=<ms>`` (and
``GMP_SCHEDDETAIL=1``) to have sysmon print it to stderr every ``ms``.
"""

from __future__ import annotations

import time
from typing import Any

from . import proc
from .runtime2 import GSTATUS_NAMES, PSTATUS_NAMES, _Gwaiting, schedt


def schedtrace(sched: schedt, detailed: bool) -> str:
    """One trace report, without the trailing newline. Takes ``sched.lock`` as Go does."""
    now = time.monotonic_ns()
    with sched.lock:
        return _schedtrace(sched, detailed, now)


def _b(v: bool) -> str:
    return "true" if v else "false"


def _schedtrace(sched: schedt, detailed: bool, now: int) -> str:
    head = (
        f"SCHED {(now - sched.starttime) // 1_000_000}ms: gomaxprocs={sched.gomaxprocs}"
        f" idleprocs={sched.npidle} threads={len(sched.allm)}"
        f" spinningthreads={sched.nmspinning} idlethreads={sched.nmidle}"
        f" runqueue={len(sched.runq)}"
    )
    if not detailed:
        return head + " [" + " ".join(str(len(pp.runq)) for pp in sched.allp) + "]"
    lines = [
        head + f" gcwaiting=0 nmidlelocked={sched.nmidlelocked} stopwait=0"
        f" sysmonwait={sched.sysmonwait}"
    ]
    for pp in sched.allp:
        mid = pp.m.id if pp.m is not None else -1
        lines.append(
            f"  P{pp.id}: status={pp.status} schedtick={pp.schedtick}"
            f" syscalltick={pp.syscalltick} m={mid} runqsize={len(pp.runq)} gfreecnt=0"
            f" timerslen={len(pp.timers)}"
        )
    for m in reversed(sched.allm):  # Go walks allm, newest first
        pid = m.p.id if m.p is not None else -1
        curg = m.curg.goid if m.curg is not None else -1
        locks = 2 if m.thread is not None and m.thread.name.startswith("gmp-sysmon") else 0
        lines.append(
            f"  M{m.id}: p={pid} curg={curg} mallocing=0 throwing=0 preemptoff= locks={locks}"
            f" dying=0 spinning={_b(m.spinning)} blocked={_b(m.blocked)} lockedg=-1"
        )
    for goid in sorted(sched.allgs):
        gp = sched.allgs.get(goid)
        if gp is None:
            continue
        reason = gp.waitreason if gp.status == _Gwaiting else ""
        mid = gp.m.id if gp.m is not None else -1
        lines.append(f"  G{gp.goid}: status={gp.status}({reason}) m={mid} lockedm=-1")
    return "\n".join(lines)


def sched_stats(sched: schedt) -> dict[str, Any]:
    """The numbers behind schedtrace plus Python-only counters, as a dict."""
    with sched.lock:
        gs: dict[str, int] = {}
        for gp in list(sched.allgs.values()):
            name = GSTATUS_NAMES.get(gp.status, str(gp.status))
            gs[name] = gs.get(name, 0) + 1
        out: dict[str, Any] = {
            "gomaxprocs": sched.gomaxprocs,
            "idleprocs": sched.npidle,
            "threads": len(sched.allm),
            "spinningthreads": sched.nmspinning,
            "idlethreads": sched.nmidle,
            "runqueue": len(sched.runq),
            "runqsizes": [proc.runqsize(pp) for pp in sched.allp],
            "pstatus": [PSTATUS_NAMES[pp.status] for pp in sched.allp],
            "schedticks": [pp.schedtick for pp in sched.allp],
            "gs_by_state": gs,
            "goroutines": len(sched.allgs),
            "netpoll_waiters": sched.netpoll.waiters if sched.netpoll else 0,
            "timers": sum(len(pp.timers) - pp.deletedTimers for pp in sched.allp),
        }
    out.update(sched.counters.as_dict())
    return out
