"""Deadlock detection and the per-G dump ("all goroutines are asleep").

Mirrors ``runtime.checkdead`` (proc.go, Go 1.19) and the goroutine header of
``runtime.goroutineheader``/``traceback``. Like Go, it is off for libraries
(``islibrary``): embedded runtimes can be woken by foreign threads at any time.
"""

from __future__ import annotations

from typing import Any

from .errors import Deadlock
from .runtime2 import G, _Grunnable, _Grunning, _Gsyscall, _Gwaiting, schedt
from .timers import ptimers


def checkdead(sched: schedt) -> None:
    """Raise Go's fatal deadlock error in ``run()`` if no M can ever run again.

    Called with ``sched.lock`` held when an M goes idle (``mput``). An M blocked
    in netpoll or in a syscall is not idle, so I/O and syscall waiters never
    look like a deadlock; pending timers also keep the program alive.
    """
    if sched.islibrary or sched.exiting:
        return
    run = len(sched.allm) - sched.nmidle - sched.nmidlelocked - sched.nmsys
    if run > 0:
        return
    grunning = 0
    for gp in list(sched.allgs.values()):
        s = gp.status
        if s == _Gwaiting:
            grunning += 1
        elif s in (_Grunnable, _Grunning, _Gsyscall):
            # Go throws "checkdead: runnable g"; a racing wakeup is more likely here.
            return
    if grunning == 0:
        _die(sched, Deadlock("no goroutines (main called runtime.Goexit) - deadlock!"))
        return
    if ptimers(sched):
        return
    _die(sched, Deadlock("all goroutines are asleep - deadlock!\n\n" + goroutinedump(sched)))


def _die(sched: schedt, err: Deadlock) -> None:
    from .proc import exit_locked

    sched.deadlock_err = err
    exit_locked(sched)


def goroutinedump(sched: schedt) -> str:
    """Every G as Go prints it: ``goroutine N [reason]:`` then its stack, innermost first."""
    parts = []
    for goid in sorted(sched.allgs):
        gp = sched.allgs.get(goid)
        if gp is not None:
            parts.append(goroutineheader(gp) + "\n" + gstack(gp))
    return "\n\n".join(parts) + "\n"


def goroutineheader(gp: G) -> str:
    """Mirrors runtime.goroutineheader: ``goroutine 1 [chan receive]:``."""
    from .runtime2 import GSTATUS_NAMES

    reason = gp.waitreason if gp.status == _Gwaiting else GSTATUS_NAMES[gp.status]
    return f"goroutine {gp.goid} [{reason}]:"


def gstack(gp: G) -> str:
    """The G's coroutine stack (cr_await/gi_yieldfrom chain), innermost frame first."""
    lines: list[str] = []
    obj: Any = gp.coro
    while obj is not None:
        frame = getattr(obj, "cr_frame", None) or getattr(obj, "gi_frame", None)
        if frame is not None:
            code = frame.f_code
            mod = frame.f_globals.get("__name__", "?")
            lines.append(f"{mod}.{code.co_qualname}(...)\n\t{code.co_filename}:{frame.f_lineno}")
        obj = getattr(obj, "cr_await", None) or getattr(obj, "gi_yieldfrom", None)
    lines.reverse()
    return "\n".join(lines)
