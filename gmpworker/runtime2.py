"""Scheduler records: G, M, P, sudog and schedt, with Go's state constants.

Mirrors ``runtime/runtime2.go`` (Go 1.19). Every record uses ``__slots__`` so a
parked G costs a few hundred bytes (Go's starting stack is 2 KB); with the native
core, G and sudog are C structs with the same fields (``_core.g``, ``_core.sudog``). Field names are
Go's; fields Go has but a Python port cannot use (stack bounds, GC state) are left out.
"""

from __future__ import annotations

import _thread
import contextlib
import contextvars
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Coroutine, Generator
from typing import TYPE_CHECKING, Any

from .errors import Cancelled
from .native import core
from .trap import park

if TYPE_CHECKING:
    from .netpoll import Netpoll
    from .timers import Timer_

# G states (runtime2.go, `const ( _Gidle = iota ...)`). The numeric values are Go's,
# so scheddetail prints the same digits.
_Gidle = 0
_Grunnable = 1
_Grunning = 2
_Gsyscall = 3
_Gwaiting = 4
_Gdead = 6

GSTATUS_NAMES = {
    _Gidle: "idle",
    _Grunnable: "runnable",
    _Grunning: "running",
    _Gsyscall: "syscall",
    _Gwaiting: "waiting",
    _Gdead: "dead",
}

# P states (runtime2.go, 1.19 design with _Psyscall + CAS).
_Pidle = 0
_Prunning = 1
_Psyscall = 2
_Pgcstop = 3
_Pdead = 4

PSTATUS_NAMES = {
    _Pidle: "idle",
    _Prunning: "running",
    _Psyscall: "syscall",
    _Pgcstop: "stopped",
    _Pdead: "dead",
}

# Wait reasons: Go's waitReasonStrings (runtime2.go, 1.19), the subset a Python port uses.
waitReasonZero = ""
waitReasonChanReceive = "chan receive"
waitReasonChanSend = "chan send"
waitReasonChanReceiveNilChan = "chan receive (nil chan)"
waitReasonChanSendNilChan = "chan send (nil chan)"
waitReasonSelect = "select"
waitReasonSelectNoCases = "select (no cases)"
waitReasonSleep = "sleep"
waitReasonIOWait = "IO wait"
waitReasonSemacquire = "semacquire"
waitReasonSyncCondWait = "sync.Cond.Wait"
waitReasonPreempted = "preempted"

# Constants from proc.go / runtime2.go.
LOCAL_RUNQ_CAP = 256  # len(p.runq)
_GoidCacheBatch = 16
forcePreemptNS = 10_000_000  # 10ms

# Go keeps the current g in TLS and finds its M as g.m; here the TLS holds the M and
# the current G is m.curg, which the M loop sets at every switch. (A G's own
# contextvars.Context still follows it across Ms: the M resumes it with ctx.run. The
# runtime used to store the G in that Context too, which cost a HAMT node per G and
# made every G cyclic garbage: G -> ctx -> HAMT -> G.)
mtls = _thread._local()


def setm(m: M | None) -> None:
    """Make ``m`` the calling thread's M (None: it has none). Go's TLS, for ``getg``.

    The native core keeps its own copy in a C thread-local, read by its channel
    operations and ``go()``.
    """
    if m is None:
        with contextlib.suppress(AttributeError):
            del mtls.m
    else:
        mtls.m = m
    if core is not None:
        core.setm(m)


def getg() -> G | None:
    """The G running on the calling thread (Go's ``getg().m.curg``), or None.

    None outside any G: on a foreign thread, on sysmon, or in an M's scheduling
    loop between two Gs. Inside ``syscall(fn)`` the caller's G is still current.
    """
    try:
        return mtls.m.curg  # type: ignore[no-any-return]
    except AttributeError:  # not an M's thread
        return None


def callerP() -> P | None:
    """The P to ready Gs onto: the current G's, or None (the global queue) elsewhere."""
    try:
        m = mtls.m
    except AttributeError:  # a foreign thread
        return None
    return m.p if m.curg is not None else None


_LockType = type(_thread.allocate_lock())
# One lock for every handle's completion state: completion and waiting are rare
# compared with switches, and a per-G lock would cost memory per parked G.
_hlock = _thread.allocate_lock()


def _abortWait(gp: G) -> bool:
    h: GHandle = gp.waiting
    with _hlock:
        ws = h._waiters
        if ws is None or h.status == _Gdead:
            return False
        try:
            ws.remove(gp)
        except ValueError:
            return False
    return True


# Go's g and sudog records. The pure runtime declares their fields as __slots__ here;
# with the native core they are C structs (``_core.g``, the base of GHandle and G, and
# ``_core.sudog``) with the same fields, and these classes add no slots of their own.
_GHANDLE_FIELDS = (
    "_cancelreq",
    "_exc",
    "_result",
    "_throwexc",
    "_waiters",
    "goid",
    "preempt",
    "status",
)
_G_FIELDS = (
    "coro",
    "ctx",
    "exc",
    "m",
    "param",
    "sched",
    "timer",
    "waitabort",
    "waiting",
    "waitlock",
    "waitreason",
    "waitunlockf",
)
G_FIELDS = _GHANDLE_FIELDS + _G_FIELDS
"""Every field of a G (GHandle's and G's), whichever implementation holds them."""
_GRecord: Any = object if core is None else core.g


class GHandle(_GRecord):  # type: ignore[misc]
    """What ``go()``/``Runtime.submit()`` return: the G itself, seen as a handle.

    ``goid``, ``done()``, ``result(timeout)`` (from foreign threads), ``await h`` /
    ``await h.wait()`` (inside a G), ``add_done_callback(cb)``, ``cancel()`` and
    ``throw(exc)``.
    Python-only: Go's ``go`` statement returns nothing. It is the base class of
    ``G`` so a spawn allocates one record, not two.
    """

    # goid, status and preempt are the G's own fields, declared here because the
    # handle methods use them.
    __slots__ = _GHANDLE_FIELDS if core is None else ()
    goid: int
    preempt: bool
    status: int
    _result: Any
    _exc: BaseException | None
    _waiters: list[Any] | None
    _cancelreq: bool
    _throwexc: BaseException | None

    def done(self) -> bool:
        """True once the G has finished (returned, raised or was cancelled)."""
        return self.status == _Gdead

    def _outcome(self) -> Any:
        if self._exc is not None:
            raise self._exc
        return self._result

    def result(self, timeout: float | None = None) -> Any:
        """Block the calling (foreign) thread until the G finishes; return or re-raise.

        Do not call it from inside a G: it blocks the M. Use ``await h`` there.
        Raises ``TimeoutError`` if ``timeout`` seconds pass first.
        """
        if self.status == _Gdead:
            return self._outcome()
        lk = _thread.allocate_lock()
        lk.acquire()
        with _hlock:
            pending = self._addwaiter(lk)
        if pending and not lk.acquire(timeout=-1 if timeout is None else timeout):
            with _hlock:
                if self._waiters is not None and lk in self._waiters:
                    self._waiters.remove(lk)
            if self.status != _Gdead:
                raise TimeoutError(f"goroutine {self.goid} did not finish in {timeout}s")
        return self._outcome()

    async def wait(self) -> Any:
        """Inside a G: park until this G finishes, then return its result or re-raise."""
        if self.status == _Gdead:
            return self._outcome()
        gp = getg()
        if gp is None:
            raise RuntimeError("await a GHandle only inside a goroutine; use result() elsewhere")
        _hlock.acquire()
        if not self._addwaiter(gp):
            _hlock.release()
            return self._outcome()
        gp.waiting = self
        gp.waitreason = waitReasonSemacquire
        gp.waitlock = _hlock
        gp.waitabort = _abortWait
        await park
        return self._outcome()

    def _addwaiter(self, w: Any) -> bool:
        """Queue ``w`` unless the G is done; _hlock held. False if already done."""
        if self.status == _Gdead:
            return False
        if self._waiters is None:
            self._waiters = [w]
        else:
            self._waiters.append(w)
        return True

    def __await__(self) -> Generator[Any, Any, Any]:
        return self.wait().__await__()

    def add_done_callback(self, cb: Callable[[GHandle], Any]) -> None:
        """Call ``cb(h)`` on the G's M when it finishes (now, if it already has)."""
        if not callable(cb):
            raise TypeError("add_done_callback() needs a callable")
        with _hlock:
            pending = self._addwaiter(cb)
        if not pending:
            _callback(cb, self)

    def cancel(self) -> bool:
        """Ask the G to stop: ``Cancelled`` is raised in it at its next park point.

        Sticky: every later park point raises it again. A G parked right now is
        woken with it; a G in a syscall gets it when the call returns; a runnable
        G at its next trap. Safe from any thread. Returns False if the G had
        already finished. Python-only, like ``throw``.
        """
        if self.status == _Gdead:
            return False
        self._cancelreq = True
        return self._interrupt()

    def throw(self, exc: BaseException) -> bool:
        """Raise ``exc`` in the G once, at its next park point (as ``cancel`` does).

        The G may catch it and keep awaiting normally. A throw not yet delivered
        is replaced by a newer one; a pending ``throw`` is delivered before a
        standing ``cancel``. Safe from any thread. Returns False if the G had
        already finished. Python-only: Go cannot raise in another goroutine.
        """
        if not isinstance(exc, BaseException):
            raise TypeError(f"throw() needs an exception instance, not {type(exc).__name__}")
        if self.status == _Gdead:
            return False
        with _hlock:
            self._throwexc = exc
        return self._interrupt()

    def _interrupt(self) -> bool:
        """Make a pending cancel/throw reach the G: wake it if parked, else flag its trap."""
        # preempt is set after the request (never before) so that gosched_m's reset of
        # it cannot hide the request: see gosched_m.
        self.preempt = True
        from .proc import ready_interrupted

        ready_interrupted(self, None)
        return True

    def _interruptpending(self) -> bool:
        """Whether a cancel or an undelivered throw waits for the G's next park point."""
        return self._cancelreq or self._throwexc is not None

    def _takeinterrupt(self) -> BaseException | None:
        """The exception to deliver now: a pending throw (taken once), else Cancelled
        while cancel() stands, else None."""
        exc = None
        if self._throwexc is not None:
            with _hlock:  # a foreign throw() may be replacing it right now
                exc = self._throwexc
                self._throwexc = None
        if exc is None and self._cancelreq:
            exc = Cancelled(f"goroutine {self.goid} cancelled")
        return exc

    def _restoreinterrupt(self, exc: BaseException) -> None:
        """Put back a taken exception that could not be delivered (unless a newer throw
        replaced it), for the G's next park point."""
        with _hlock:
            if self._throwexc is None:
                self._throwexc = exc
        self.preempt = True

    def _complete(self, result: Any, exc: BaseException | None, pp: P | None) -> None:
        """goexit: record the outcome, mark the G dead and wake everything waiting."""
        _hlock.acquire()
        self._result = result
        self._exc = exc
        self.status = _Gdead  # after the outcome: done() readers need no lock
        ws = self._waiters
        self._waiters = None
        _hlock.release()  # nothing above can raise
        if ws is not None:
            self._wake(ws, pp)

    def _wake(self, ws: list[Any], pp: P | None) -> None:
        """Wake what waited for this finished G: Gs, foreign threads' locks, callbacks."""
        for w in ws:
            if isinstance(w, GHandle):
                from .proc import goready

                goready(w, pp)
            elif type(w) is _LockType:
                w.release()
            else:
                _callback(w, self)


def _callback(cb: Callable[[GHandle], Any], h: GHandle) -> None:
    try:
        cb(h)
    except BaseException:  # a failing callback must not kill the M
        print(f"exception in done callback of goroutine {h.goid}:", file=sys.stderr)
        traceback.print_exc(file=sys.stderr)


class G(GHandle):
    """A goroutine: a coroutine plus its scheduling state (Go's ``g``, runtime2.go).

    ``param`` is what a waker hands the G (Go's ``gp.param``: the waking sudog, or
    here a syscall's result); the G reads it after it resumes, as Go code reads
    ``gp.param`` after ``gopark`` returns. ``exc`` is an exception to throw into
    the G at its next resume instead.
    """

    __slots__ = ("__weakref__", *_G_FIELDS) if core is None else ()

    def __init__(self, sched: schedt, goid: int, coro: Coroutine[Any, Any, Any]) -> None:
        self.sched = sched
        self.goid = goid
        self.coro = coro
        self.ctx: contextvars.Context = contextvars.copy_context()
        self.status = _Grunnable
        self.waitreason = waitReasonZero
        self.m: M | None = None
        self.param: Any = None
        self.exc: BaseException | None = None
        self.preempt = False
        # gopark(unlockf, lock): unlockf(gp, lock) -> bool runs after the G is _Gwaiting.
        self.waitlock: Any = None
        self.waitunlockf: Callable[[G, Any], bool] | None = None
        # Python-only: how to pull a parked G off its wait queue for GHandle.cancel/throw.
        # Returns True when it removed the G (so nobody else will ready it).
        self.waitabort: Callable[[G], bool] | None = None
        self.timer: Timer_ | None = None
        # What the G is parked on (Go's gp.waiting sudog list), for waitabort.
        self.waiting: Any = None
        # The GHandle side: the outcome, and the Gs, thread locks and callbacks
        # waiting for it (a list allocated lazily: most Gs are never waited on).
        self._result = None
        self._exc = None
        self._waiters = None
        self._cancelreq = False
        self._throwexc = None  # GHandle.throw's exception until it is delivered

    def __repr__(self) -> str:
        return f"<G{self.goid} {GSTATUS_NAMES.get(self.status, self.status)}>"


class M:
    """An OS thread that runs Gs (Go's ``m``). ``park`` is its note: a lock created held."""

    __slots__ = (
        "blocked",
        "cpuclock",
        "curg",
        "id",
        "nextp",
        "oldp",
        "p",
        "park",
        "sched",
        "spinning",
        "syscalltick",
        "thread",
        "tid",
    )

    def __init__(self, sched: schedt, mid: int) -> None:
        self.sched = sched
        self.id = mid
        self.curg: G | None = None
        self.p: P | None = None
        self.nextp: P | None = None
        self.oldp: P | None = None
        self.spinning = False
        self.blocked = False
        self.syscalltick = 0
        park = _thread.allocate_lock()
        park.acquire()
        self.park = park
        self.thread: threading.Thread | None = None
        # Per-thread CPU clock id, read by sysmon to spot unannotated blocking calls.
        self.cpuclock: int | None = None
        self.tid = 0  # the kernel thread id, to read the thread's scheduler state

    def bindthread(self) -> None:
        """Record the calling thread's CPU clock and kernel id (called on the M's thread)."""
        self.tid = threading.get_native_id()
        try:
            self.cpuclock = time.pthread_getcpuclockid(threading.get_ident())
        except (AttributeError, OSError):  # no per-thread CPU clocks on this platform
            self.cpuclock = None


class sysmontick:
    """What sysmon saw of a P at its last look (Go's ``p.sysmontick``)."""

    __slots__ = ("cputime", "cpuwhen", "schedtick", "schedwhen", "syscalltick", "syscallwhen")

    def __init__(self) -> None:
        self.schedtick = 0
        self.schedwhen = 0
        self.syscalltick = 0
        self.syscallwhen = 0
        # Python-only: the running M's thread CPU time and when it last moved.
        self.cputime = -1
        self.cpuwhen = 0


class P:
    """A logical processor: the right to run Gs, with a local run queue (Go's ``p``).

    Pure runtime: ``runq`` is a deque: ``append``/``popleft`` are atomic in CPython,
    so the owner pushes and the owner or a thief pops without a lock (Go's lock-free
    ring). ``runnext`` is a deque holding at most one G; ``pop()`` is the atomic
    CAS-to-nil. (A deque rather than a list: a list frees its item array each time
    it empties and reallocates it on the next append, twice per channel hand-off.)
    Native core: ``runq`` is Go's 256-slot ring plus ``runnext`` in one C struct,
    whose operations are atomic because they hold the GIL throughout.
    """

    __slots__ = (
        "deletedTimers",
        "goidcache",
        "goidcacheend",
        "id",
        "link",
        "m",
        "preempt",
        "runnext",
        "runq",
        "sched",
        "schedtick",
        "status",
        "syscalltick",
        "sysmontick",
        "timer0When",
        "timers",
        "timersLock",
    )

    def __init__(self, sched: schedt, pid: int) -> None:
        self.sched = sched
        self.id = pid
        self.status = _Pidle
        self.link: P | None = None
        self.schedtick = 0
        self.syscalltick = 0
        self.sysmontick = sysmontick()
        self.m: M | None = None
        self.goidcache = 0
        self.goidcacheend = 0
        # Native: one C struct holds the ring and runnext (core.runq); the pure
        # runtime uses two deques, so runnext is unused (None) with the core.
        self.runq: Any = deque() if core is None else core.runq()
        self.runnext: Any = deque() if core is None else None
        # 4-ary in Go; a binary heapq here (same ordering behaviour).
        self.timers: list[tuple[int, int, Timer_]] = []
        self.timersLock = _thread.allocate_lock()
        self.timer0When = 0  # 0 = no timers; read without the lock, as Go does
        self.deletedTimers = 0
        self.preempt = False


class sudog:
    """A G waiting on a channel (Go's ``sudog``); one per channel a G waits on.

    With the native core, ``runtime2.sudog`` is ``_core.sudog``, the same record in C.
    """

    __slots__ = ("c", "elem", "g", "isSelect", "seldone", "success")

    def __init__(self, g: G, elem: Any, c: Any, isSelect: bool, seldone: list[int] | None) -> None:
        self.g = g
        self.elem = elem
        self.c = c
        self.isSelect = isSelect
        # The select's selectDone word: non-empty means "not yet won". list.pop() is
        # atomic, so it is the CAS(&gp.selectDone, 0, 1) of waitq.dequeue.
        self.seldone = seldone
        self.success = False


if core is not None:
    sudog = core.sudog  # type: ignore[misc]


class Counters:
    """Python-only scheduler counters exposed by ``stats()`` (not in Go's schedt)."""

    __slots__ = (
        "handoffs",
        "preemptions",
        "retakes",
        "retakes_unannotated",
        "spawned",
        "steals",
        "switches",
        "syscall_fast_exits",
        "syscall_slow_exits",
        "syscalls",
        "wakeps",
    )

    def __init__(self) -> None:
        self.spawned = 0
        self.switches = 0  # G resumptions by an M (coroutine steps)
        self.steals = 0  # successful runqsteal calls
        self.handoffs = 0  # handoffp calls
        self.retakes = 0  # Ps retaken from syscalls by sysmon
        self.retakes_unannotated = 0  # Ps retaken from unannotated blocking calls
        self.syscalls = 0
        self.syscall_fast_exits = 0
        self.syscall_slow_exits = 0
        self.preemptions = 0  # preemption flags set by sysmon (forcePreemptNS)
        self.wakeps = 0  # wakep calls that started a spinning M

    def as_dict(self) -> dict[str, int]:
        """Return the counters as a plain dict."""
        return {name: getattr(self, name) for name in self.__slots__}


class schedt:
    """Global scheduler state (Go's ``sched``), one per Runtime.

    ``lock`` is ``sched.lock``; ``xlock`` stands in for the atomic instructions Go
    uses on ``nmspinning`` and on P status CASes, because a Python compare-then-assign
    is not atomic across threads.
    """

    __slots__ = (
        "allgs",
        "allm",
        "allp",
        "counters",
        "deadlock_err",
        "exiting",
        "goidgen",
        "gomaxprocs",
        "islibrary",
        "lastpoll",
        "lock",
        "mainStarted",
        "maxmcount",
        "midle",
        "mnext",
        "netpoll",
        "nmidle",
        "nmidlelocked",
        "nmspinning",
        "nmsys",
        "npidle",
        "panic_hook",
        "panicking",
        "pidle",
        "pollUntil",
        "result",
        "runq",
        "scheddetail",
        "schedtrace",
        "starttime",
        "stopping",
        "sysmonnote",
        "sysmonwait",
        "xlock",
    )

    def __init__(self, gomaxprocs: int, maxmcount: int, islibrary: bool) -> None:
        self.lock = _thread.allocate_lock()
        self.xlock = _thread.allocate_lock()
        self.gomaxprocs = gomaxprocs
        self.maxmcount = maxmcount
        self.islibrary = islibrary
        self.goidgen = 0
        self.allp: list[P] = [P(self, i) for i in range(gomaxprocs)]
        self.allm: list[M] = []
        self.allgs: dict[int, G] = {}
        self.mnext = 0
        self.midle: list[M] = []
        self.nmidle = 0
        self.nmidlelocked = 0
        self.nmsys = 0
        self.pidle: list[P] = []
        self.npidle = 0
        self.nmspinning = 0
        self.runq: deque[G] = deque()
        self.lastpoll = 1  # != 0: nobody is blocked in netpoll
        self.pollUntil = 0
        self.sysmonwait = 0
        note = _thread.allocate_lock()
        note.acquire()
        self.sysmonnote = note
        self.mainStarted = False
        self.starttime = 0
        self.netpoll: Netpoll | None = None
        self.counters = Counters()
        self.exiting = False
        self.stopping = False
        self.panicking: BaseException | None = None
        self.deadlock_err: BaseException | None = None
        self.panic_hook: Callable[[int, BaseException], None] | None = None
        self.result: Any = None
        self.schedtrace = 0  # GMP_SCHEDTRACE: print a trace every this many ms
        self.scheddetail = False
