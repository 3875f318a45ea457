"""The embedding API (``Runtime``) and ``run()``, plus ``go``, ``gosched``, ``stats``.

``run()`` mirrors ``runtime.main``/``rt0_go``: the calling thread becomes M0, the
main function becomes G1, sysmon starts, and the program ends when G1 returns.
``Runtime`` is the library mode (Go's ``islibrary``): threads start in the
background, foreign threads inject Gs through the global run queue plus
``wakep`` (injectglist's path), and checkdead is off.
"""

from __future__ import annotations

import inspect
import os
import threading
import time
import types
from collections.abc import Callable, Coroutine
from typing import Any, cast

from . import proc
from .chan import Chan
from .native import core
from .netpoll import Netpoll
from .runtime2 import GHandle, M, getg, mtls, schedt, setm
from .syscall import syscall
from .sysmon import start_sysmon
from .trap import gosched_trap

_CoroutineType = types.CoroutineType
_FunctionType = types.FunctionType
_BuiltinMethodType = types.BuiltinMethodType
_CO_COROUTINE = inspect.CO_COROUTINE | inspect.CO_ITERABLE_COROUTINE
DEFAULT_MAXMCOUNT = 10000  # schedinit: sched.maxmcount = 10000

_active_lock = threading.Lock()
_active: list[Runtime] = []


def _defaultprocs() -> int:
    env = os.environ.get("GMP_MAXPROCS")
    if env:
        n = int(env)
        if n > 0:
            return n
    return os.cpu_count() or 1


async def _syscallg(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The body of a G made from a plain function: one syscall on an M."""
    return await syscall(fn, *args, **kwargs)


def _mkcoro(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Coroutine[Any, Any, Any]:
    """Turn ``go``'s arguments into the G's coroutine; TypeError for non-callables.

    Accepts an ``async def`` function, a ``@types.coroutine`` generator function,
    a coroutine object, or a plain callable (run as one syscall).
    """
    if type(fn) is _FunctionType and fn.__code__.co_flags & _CO_COROUTINE:
        coro = fn(*args, **kwargs)  # the common case: an async def function
        if type(coro) is _CoroutineType:
            return coro
        return _checkawaitable(fn, coro)
    if not callable(fn):
        if type(fn) is _CoroutineType or inspect.isawaitable(fn):
            if args or kwargs:
                raise TypeError("go(coroutine) takes no extra arguments")
            return cast(Coroutine[Any, Any, Any], fn)
        raise TypeError(f"go() needs a callable or an async function, got {type(fn).__name__}")
    code = getattr(fn, "__code__", None)
    if (
        (code is not None and code.co_flags & _CO_COROUTINE)
        or inspect.iscoroutinefunction(fn)
        or (type(fn) is _BuiltinMethodType and isinstance(fn.__self__, Chan))
    ):
        # (the last: a channel operation of the native core, a C method returning
        # an awaitable, e.g. go(ch.send, v))
        return _checkawaitable(fn, fn(*args, **kwargs))
    return _syscallg(fn, args, kwargs)


def _checkawaitable(fn: Any, coro: Any) -> Coroutine[Any, Any, Any]:
    """``coro`` if it can run as a G (a coroutine or awaitable), else TypeError."""
    if type(coro) is not _CoroutineType and not inspect.isawaitable(coro):
        raise TypeError(f"{fn!r} did not return a coroutine")
    return cast(Coroutine[Any, Any, Any], coro)


def go_pure(fn: Any, *args: Any, **kwargs: Any) -> GHandle:
    """Start a new G running ``fn(*args, **kwargs)`` and return its handle.

    An ``async def`` function runs as a native G; a plain callable runs as one
    blocking call on an M (``syscall``), so it cannot stall the G's P. The new G
    goes into the current P's ``runnext`` (Go's ``newproc``). Call it inside a G;
    from other threads use ``Runtime.submit``.
    """
    if type(fn) is _FunctionType and fn.__code__.co_flags & _CO_COROUTINE:
        coro = fn(*args, **kwargs)  # _mkcoro's common case, inlined: spawning is hot
        if type(coro) is not _CoroutineType:
            coro = _checkawaitable(fn, coro)
    else:
        coro = _mkcoro(fn, args, kwargs)
    try:
        m = mtls.m
        gp = m.curg
    except AttributeError:
        gp = None
    if gp is None:
        coro.close()
        raise RuntimeError(
            "gmpworker.go() called outside a goroutine: use gmpworker.run() or Runtime.submit()"
        )
    return proc.newproc(gp.sched, coro, m.p)


# ``go``: the native core does go_pure's async-def fast path in C and hands every
# other case to go_pure (native.py).
go: Callable[..., GHandle] = go_pure if core is None else core.go


async def gosched() -> None:
    """Yield the P: the G goes to the global run queue. Mirrors runtime.Gosched."""
    await gosched_trap


def current_goid() -> int:
    """The id of the calling G (0 outside any G)."""
    gp = getg()
    return gp.goid if gp is not None else 0


def _current_sched() -> schedt:
    gp = getg()
    if gp is not None:
        return gp.sched
    with _active_lock:
        if _active:
            return _active[-1].sched
    raise RuntimeError("no gmpworker runtime is running")


def stats() -> dict[str, Any]:
    """Scheduler statistics of the current runtime (see ``Runtime.stats``)."""
    from .schedtrace import sched_stats

    return sched_stats(_current_sched())


class Runtime:
    """A G-M-P runtime embedded in a host program (Go's library mode).

    ``start()`` launches sysmon; Ms are created on demand. ``submit()`` is safe from
    any thread and never blocks. ``stop()`` refuses new work, lets the Gs finish and
    joins every thread. An exception escaping a G goes to ``panic_hook(goid, exc)``
    (or is printed to stderr if there is no hook) and to the G's handle.
    """

    def __init__(
        self,
        procs: int | None = None,
        maxmcount: int = DEFAULT_MAXMCOUNT,
        panic_hook: Callable[[int, BaseException], None] | None = None,
        *,
        _islibrary: bool = True,
    ) -> None:
        if procs is None:
            procs = _defaultprocs()
        if not isinstance(procs, int) or procs < 1:
            raise ValueError(f"procs (GOMAXPROCS) must be a positive int, got {procs!r}")
        if panic_hook is not None and not callable(panic_hook):
            raise TypeError("panic_hook must be callable")
        self.sched = schedt(procs, maxmcount, _islibrary)
        self.sched.panic_hook = panic_hook
        self._sysmon: threading.Thread | None = None
        self._started = False
        self._stopped = False

    # -- lifecycle -------------------------------------------------------------

    def _init(self) -> None:
        """schedinit: Ps idle, the poller, GODEBUG-style tracing from the environment."""
        sched = self.sched
        if self._started:
            raise RuntimeError("Runtime already started")
        self._started = True
        sched.starttime = time.monotonic_ns()
        sched.lastpoll = sched.starttime
        sched.netpoll = Netpoll(sched)
        trace = os.environ.get("GMP_SCHEDTRACE", "")
        if trace.isdigit():
            sched.schedtrace = int(trace)
        sched.scheddetail = os.environ.get("GMP_SCHEDDETAIL", "") == "1"
        with sched.lock:
            for pp in reversed(sched.allp):
                proc.pidleput(sched, pp)
        with _active_lock:
            _active.append(self)

    def start(self) -> Runtime:
        """Start sysmon in the background and return at once (Ms start on demand)."""
        self._init()
        self._sysmon = start_sysmon(self.sched)
        self.sched.mainStarted = True
        return self

    def submit(self, fn: Any, *args: Any, **kwargs: Any) -> GHandle:
        """Start a G from any thread (global run queue + wakep); never blocks."""
        sched = self.sched
        if not self._started:
            raise RuntimeError("Runtime.submit() before Runtime.start()")
        if sched.stopping or sched.exiting:
            raise RuntimeError("Runtime is stopped: submit() no longer accepts work")
        coro = _mkcoro(fn, args, kwargs)
        return proc.newproc(sched, coro, None)

    def stop(self, wait: bool = True, timeout: float | None = None) -> None:
        """Stop accepting work, let running Gs finish (if ``wait``), join all threads.

        Gs still parked when the runtime exits (or after ``timeout``) are
        abandoned and their coroutines closed. Idempotent.
        """
        sched = self.sched
        if self._stopped or not self._started:
            self._stopped = True
            return
        self._stopped = True
        sched.stopping = True
        deadline = None if timeout is None else time.monotonic() + timeout
        if wait:
            self._drain(deadline)
        self._shutdown(deadline)

    def _drain(self, deadline: float | None) -> None:
        """Wait until every G has exited or nothing can make progress any more."""
        sched = self.sched
        while sched.allgs and not sched.exiting:
            if deadline is not None and time.monotonic() >= deadline:
                return
            if _stuck(sched):
                return
            time.sleep(0.002)

    def _shutdown(self, deadline: float | None) -> None:
        sched = self.sched
        with sched.lock:
            proc.exit_locked(sched)
        for t in self._threads():
            if t is threading.current_thread():
                continue
            left = None if deadline is None else max(0.05, deadline - time.monotonic())
            t.join(left if left is not None else 5.0)
        _closegs(sched)
        if sched.netpoll is not None and not any(t.is_alive() for t in self._threads()):
            sched.netpoll.close()
        with _active_lock:
            if self in _active:
                _active.remove(self)

    def _threads(self) -> list[threading.Thread]:
        """Threads to join: sysmon and every M not stuck inside a G (e.g. a long syscall)."""
        ts = [m.thread for m in list(self.sched.allm) if m.thread is not None and m.curg is None]
        if self._sysmon is not None:
            ts.append(self._sysmon)
        return ts

    def __enter__(self) -> Runtime:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- introspection -------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """GOMAXPROCS, idle Ps, threads, spinning/idle Ms, run queues, Gs by state, counters."""
        from .schedtrace import sched_stats

        return sched_stats(self.sched)

    def schedtrace(self, detailed: bool = False) -> str:
        """One ``GODEBUG=schedtrace`` report in Go 1.19's format (``scheddetail`` if detailed)."""
        from .schedtrace import schedtrace

        return schedtrace(self.sched, detailed)

    # -- run() -------------------------------------------------------------------

    def _main(self, main: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """rt0_go + runtime.main: this thread is M0 and ``main`` is G1."""
        sched = self.sched
        coro = _mkcoro(main, args, kwargs)
        self._init()
        m0 = M(sched, 0)
        sched.mnext = 1
        m0.thread = threading.current_thread()
        m0.bindthread()
        outer = getattr(mtls, "m", None)  # a run() inside a G or syscall of another runtime
        setm(m0)
        with sched.lock:
            sched.allm.append(m0)
            pp = proc.pidleget(sched)
        assert pp is not None
        proc.acquirep(m0, pp)
        proc.newproc(sched, coro, pp)
        self._sysmon = start_sysmon(sched)
        sched.mainStarted = True
        try:
            proc.schedule(m0)
        finally:
            setm(outer)
            with sched.lock:
                if m0 in sched.allm:
                    sched.allm.remove(m0)
            self._stopped = True
            self._shutdown(time.monotonic() + 2.0)
        if sched.panicking is not None:
            raise sched.panicking
        if sched.deadlock_err is not None:
            raise sched.deadlock_err
        return sched.result


def _stuck(sched: schedt) -> bool:
    """checkdead's condition without the report: no M can ever run a G again."""
    from .timers import ptimers

    np = sched.netpoll
    busy = len(sched.allm) - sched.nmidle - sched.nmsys
    return busy <= 0 and not sched.runq and not ptimers(sched) and not (np and np.waiters)


def _closegs(sched: schedt) -> None:
    """Abandon the Gs left when the runtime exits (Go simply exits the process).

    Their coroutines are closed and their handles complete with ``Cancelled``, so a
    foreign thread waiting in ``result()`` is released.
    """
    for gp in list(sched.allgs.values()):
        if gp.m is None:  # not still running on some M (e.g. in a syscall)
            proc._abandon(None, gp)
    sched.allgs.clear()


def run(main: Any, *args: Any, procs: int | None = None, **kwargs: Any) -> Any:
    """Run ``main(*args)`` as G1 with this thread as M0 and return its result.

    ``procs`` is GOMAXPROCS (default ``GMP_MAXPROCS``, else ``os.cpu_count()``).
    An exception escaping any G stops the runtime and is re-raised here with the
    G's traceback (a Go panic); if every G blocks forever, ``Deadlock`` is raised
    with Go's message and a per-G dump.
    """
    rt = Runtime(procs, _islibrary=False)
    return rt._main(main, args, kwargs)
