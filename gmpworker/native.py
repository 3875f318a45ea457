"""Which implementation runs: the native core (``gmpworker._core``) or pure Python.

The C extension ``gmpworker._core`` is built from ``gmpworker/_core.c`` by
``pip install`` when a compiler and the Python headers are there (``setup.py``
marks it optional, so an install without them still gets the pure runtime). When
it imports, it is used automatically; ``GMPWORKER_PURE=1`` in the environment
forces the pure-Python runtime, which stays the reference implementation.

The native core takes over, with Go's names (see ``_core.c``): the local run
queue (``runq``: the 256-slot ring plus ``runnext``, one C struct per P) with
``runqput``/``runqget``/``runqgrab``/``runqempty``; ``goready``; ``newproc`` and
``go()``; ``goexit``'s common case; the M loop ``schedule`` (``execute`` resumes
the G's coroutine with ``PyIter_Send``; ``park_m``'s common commit); and the
blocking channel operations ``Chan.send``/``recv``/``recv2``/``__anext__``
(``chansend``/``chanrecv``, direct hand-off to a parked partner); and the G and
sudog records as C structs (``_core.g``, the base of ``runtime2.GHandle``/``G``,
and ``_core.sudog``). Everything else (``findRunnable``, stealing, timers,
syscalls, sysmon, ``select``, ``close``, ``try_send``/``try_recv``, sync) is the
same Python code in both modes. P, M, schedt and Chan stay the Python classes
(``__slots__`` records); the C code reads and writes every record's fields by
member offset.
"""

from __future__ import annotations

import os
from types import ModuleType


def _load() -> ModuleType | None:
    if os.environ.get("GMPWORKER_PURE", "") not in ("", "0"):
        return None
    try:
        from . import _core  # type: ignore[attr-defined]
    except ImportError:  # not built (no compiler at install time), or another CPython
        return None
    try:
        _core.check_layout()
    except ImportError:
        return None
    return _core  # type: ignore[no-any-return]


core: ModuleType | None = _load()
NATIVE = core is not None
IMPLEMENTATION = "native" if NATIVE else "pure"


def bind() -> None:
    """Hand the native core the runtime's classes, constants and Python handlers.

    Called once by ``gmpworker/__init__.py`` after every module is imported.
    """
    if core is None:
        return
    from . import chan, errors, proc, runtime2, timers, trap
    from .runtime import go_pure
    from .syscall import syscall_m

    core.bind(
        {
            "G": runtime2.G,
            "sudog": runtime2.sudog,
            "P": runtime2.P,
            "M": runtime2.M,
            "schedt": runtime2.schedt,
            "Counters": runtime2.Counters,
            "Chan": chan.Chan,
            "SyscallReq": trap.SyscallReq,
            "PARK": trap.PARK,
            "GOSCHED": trap.GOSCHED,
            "PREEMPT": trap.PREEMPT,
            "ChanClosedError": errors.ChanClosedError,
            "_abortChan": chan._abortChan,
            "_hlock": runtime2._hlock,
            "waitReasonChanSend": runtime2.waitReasonChanSend,
            "waitReasonChanReceive": runtime2.waitReasonChanReceive,
            "waitReasonZero": runtime2.waitReasonZero,
            "_reacquirep": proc._reacquirep,
            "checkTimers": timers.checkTimers,
            "_findrunnable_fast": proc._findrunnable_fast,
            "resetspinning": proc.resetspinning,
            "goexit": proc.goexit,
            "park_m": proc.park_m,
            "ready_interrupted": proc.ready_interrupted,
            "gosched_m": proc.gosched_m,
            "_abandon": proc._abandon,
            "wakep": proc.wakep,
            "syscall_m": syscall_m,
            "foreign_yield_error": trap.foreign_yield_error,
            "newgoid": proc.newgoid,
            "go_slow": go_pure,
        }
    )
