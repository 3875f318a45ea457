"""gmpworker: Go's G-M-P goroutine scheduler in Python (standard library only).

Its hot paths have an optional native core in C (``gmpworker._core``, built by
``pip install``; ``native.py`` says what it covers); ``GMPWORKER_PURE=1`` runs the
pure-Python reference implementation instead.

The vocabulary of Go's scheduler maps onto this package one to one (Go 1.19
semantics; each function cites the ``proc.go``/``chan.go``/... function it mirrors):

- **G** (goroutine): ``runtime2.G``, an ``async def`` coroutine plus its state
  (idle/runnable/running/syscall/waiting/dead with Go's numeric values). Started
  with ``go(fn)`` (``proc.newproc``), finished by ``proc.goexit``.
- **M** (machine, an OS thread): ``runtime2.M``, a ``threading.Thread`` running
  ``proc.schedule``. Idle Ms park on a ``_thread`` lock (Go's note) in ``stopm``.
- **P** (processor, GOMAXPROCS of them): ``runtime2.P`` with the local run queue
  (a 256-slot deque) and ``runnext``; idle/running/syscall/stopped states.
- **M0**: the thread that calls ``run()``; **G0**: each M's own scheduling loop
  (``proc.schedule``), where a G lands when it traps (``await trap.park`` and the
  other requests in ``trap.py``); **TLS** for the current G/M: a thread-local holds
  the M (``runtime2.mtls``) and the current G is ``m.curg`` (``runtime2.getg``).
  Each G runs in its own ``contextvars.Context``, which follows it across Ms.
- **runqueue**: per-P ``runq``/``runnext`` plus the global ``sched.runq`` with
  the 1-in-61 fairness check; **work stealing**: ``proc.stealWork``/``runqsteal``
  (half of a random victim's queue, ``runnext`` only on the last try).
- **hand-off on blocking syscall**: ``await syscall(fn)`` runs ``fn`` on the
  same M in ``_Gsyscall`` with its P in ``_Psyscall``; ``sysmon.retake`` hands the P
  to another M (``proc.handoffp``/``startm``); ``exitsyscall`` has Go's fast path
  (get the P back, keep running) and slow path (queue the G, park the M).
- **2 KB starting stacks**: a G here is its coroutine frames plus a small record;
  a G parked in ``Chan.recv`` costs under 1 KB all told (G, sudog, Context, two
  coroutine frames), and grows only as deep as the ``await`` chain; there is no
  stack copying.

What CPython changes, honestly:

- The GIL: Gs run in parallel only while they are in code that releases it
  (I/O, ``time.sleep``, many C extensions). Pure-Python Gs on several Ps share one
  core, so ``procs=1`` is the fastest setting for pure-Python work.
- Preemption is cooperative only: ``sysmon`` sets ``g.preempt`` after 10 ms
  (``forcePreemptNS``) and the G yields at its next channel operation or trap. A G
  that never awaits cannot be preempted (Go before 1.14 had the same limit).
- A blocking call not wrapped in ``syscall()`` (a bare ``time.sleep``) holds its
  M and P; sysmon notices that the M's thread CPU clock stopped and hands the P
  off anyway (counted as ``retakes_unannotated``).
- A sysmon "20 us" tick is really 60 us to 5 ms under the GIL.
- Receiving from a closed channel returns ``None`` (no typed zero values);
  Go's panics are ``GoPanic`` exceptions and its fatal errors ``FatalError`` (see
  ``errors``); ``checkdead`` raises ``Deadlock`` (a fatal error) from ``run()``.
"""

from __future__ import annotations

from . import context, native, net
from .chan import Case, Chan
from .errors import Cancelled, ChanClosedError, Deadlock, FatalError, GoPanic, Panic, ValuePanic
from .runtime import Runtime, current_goid, go, gosched, run, stats
from .runtime2 import GHandle
from .select import recv_case, select, send_case
from .sync import Cond, Mutex, Once, RWMutex, WaitGroup
from .syscall import syscall
from .timers import Ticker, Timer, after, sleep

native.bind()

__all__ = [
    "Cancelled",
    "Case",
    "Chan",
    "ChanClosedError",
    "Cond",
    "Deadlock",
    "FatalError",
    "GHandle",
    "GoPanic",
    "Mutex",
    "Once",
    "Panic",
    "RWMutex",
    "Runtime",
    "Ticker",
    "Timer",
    "ValuePanic",
    "WaitGroup",
    "after",
    "context",
    "current_goid",
    "go",
    "gosched",
    "native",
    "net",
    "recv_case",
    "run",
    "select",
    "send_case",
    "sleep",
    "stats",
    "syscall",
]
