"""A Celery execution pool on gmpworker: every task runs as a G on an embedded Runtime.

Optional: Celery is not a dependency of the core library; import this module only
in a process that has Celery installed.

Starting a worker on it (Celery 5 rejects ``-P module:Class``: ``-P`` only takes
the names in ``celery.concurrency.ALIASES``, so use one of these two routes)::

    CELERY_CUSTOM_WORKER_POOL=gmpworker.celery:GMPPool celery -A proj worker -P custom

or in the app's configuration (no flag needed)::

    app.conf.worker_pool = "gmpworker.celery:GMPPool"
    app.conf.gmp_maxprocs = 2          # GOMAXPROCS of the pool's Runtime (optional)

``--concurrency`` is the number of tasks running at once (``num_processes``, which
also sizes the broker prefetch).

Waiting for a free slot (``expires``, revoke)
---------------------------------------------
As with prefork, prefetched tasks wait for a slot in the worker's own semaphore, not
in the pool: the pool declares ``uses_semaphore`` and releases one slot (on the
consumer's thread) when a task's G exits. Celery hands a waiting request to the pool
only then, through ``Request.execute_using_pool``, which first checks ``expires`` and
the revoked set: a task that expired, or was revoked (with or without ``terminate``),
while it waited is discarded and reported ``REVOKED`` exactly as under prefork.
Without an event loop (a transport with no async support) Celery makes no semaphore;
the pool then keeps the excess jobs in a queue of its own and starts them as slots
free, like prefork's blocking put, which does not check them again either.

How a task runs
---------------
``on_apply`` only records the job and hands it to the Runtime (``Runtime.submit``,
thread-safe, never blocks), so the consumer thread (acks, heartbeats, remote control)
is never held up. The job's G then:

1. calls ``accept_callback(goid, monotonic())``: the G id is the task's ``pid``, which
   ``inspect active`` shows and ``revoke --terminate`` (``terminate_job``) targets;
2. for a :class:`GTask` with a native body, runs that ``async def`` body as a plain G
   (channels, ``select``, ``sleep``, ``await syscall(...)``): a waiting body costs a
   parked coroutine, not a thread;
3. runs Celery's synchronous tracer (``fast_trace_task``: signals, retries, result
   backend, ``callback((failed, retval, runtime))``) as ``await syscall(...)`` on an M.
   A body blocked in a database driver holds only its M: its P goes to another M and
   the other Gs keep running. For a :class:`GTask` the tracer *replays* the outcome of
   step 2 (return value or exception), so Celery's own machinery (``autoretry_for``,
   ``on_success``/``on_failure``, ``Retry``, ``Reject``) applies unchanged.

Nothing in Celery is patched: the replay happens in the task class's ``run``.

Time limits and termination (cooperative: nothing is killed)
-------------------------------------------------------------
- Soft limit: ``SoftTimeLimitExceeded`` is raised in the task. In a native body it is
  thrown in once (``GHandle.throw``) at the G's next park point (a channel operation,
  ``sleep``, the return of an ``await syscall``); in a synchronous body it is raised in
  its M's thread at the next Python instruction (``PyThreadState_SetAsyncExc``), i.e. as
  soon as the current blocking C call returns. The task may catch it and go on (a native
  body may await again), as with prefork.
- Hard limit: the failure is reported at once (``timeout_callback(False, limit)``:
  Celery marks it failed and acks or requeues by ``task_acks_on_failure_or_timeout``),
  then the task is interrupted the same cooperative way (a native body gets the
  pool's ``_Interrupted``) and its late end is ignored.
- ``terminate_job(goid)`` (``revoke --terminate``) interrupts that task the same way
  (a native body gets ``Terminated``).
- A G that ends without reporting (cancelled at shutdown, an internal error) reports
  ``WorkerLostError`` through ``error_callback``, so ``task_reject_on_worker_lost``
  requeues its message.

Shutdown: ``on_stop`` drops jobs that never started (their messages are not acked, so
the broker redelivers them), waits for the running ones, then stops the Runtime.
"""

from __future__ import annotations

import ctypes
import functools
import inspect
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine
from contextvars import ContextVar
from typing import Any

from billiard.einfo import ExceptionInfo
from billiard.exceptions import WorkerLostError
from celery import Task
from celery.app.task import Context
from celery.app.trace import trace_task_ret
from celery.concurrency.base import BasePool, apply_target
from celery.exceptions import SoftTimeLimitExceeded, Terminated
from celery.utils.dispatch import Signal
from celery.utils.nodenames import gethostname
from kombu.serialization import loads as loads_message
from kombu.serialization import prepare_accept_content

from . import Cancelled, GHandle, Runtime, current_goid, sleep, syscall
from . import run as _run_to_completion

__all__ = ["DeferToSync", "GMPPool", "GTask", "runtime_started", "runtime_stopping"]

log = logging.getLogger(__name__)

runtime_started = Signal(name="gmp_runtime_started", providing_args=["runtime"])
"""Sent by the pool once its Runtime runs (``sender=pool, runtime=...``): hook metrics or
long-lived Gs (``runtime.submit``) onto it."""
runtime_stopping = Signal(name="gmp_runtime_stopping", providing_args=["runtime"])
"""Sent by the pool after its last task finished and before the Runtime stops: end
long-lived Gs here so the Runtime can drain."""


# ---------------------------------------------------------------------------------------
# Native (async) task bodies
# ---------------------------------------------------------------------------------------


class DeferToSync(Exception):
    """Raised by a native body to have the task's synchronous ``run`` do the work instead."""


class _Outcome:
    """What a native body did, for the tracer to replay: a value, an exception, or defer."""

    __slots__ = ("exc", "value")

    def __init__(self, value: Any = None, exc: BaseException | None = None) -> None:
        self.value = value
        self.exc = exc

    def replay(
        self, fallback: Callable[..., Any], args: tuple[Any, ...], kw: dict[str, Any]
    ) -> Any:
        """Return the value or raise the exception; run ``fallback`` for a deferral."""
        exc = self.exc
        if exc is None:
            return self.value
        if isinstance(exc, DeferToSync):
            return fallback(*args, **kw)
        self.exc = None  # drop the reference cycle through the traceback once raised
        raise exc


# Both live in the G's own contextvars.Context, which follows the G across Ms and into
# its syscalls (the tracer runs inside one), and never leak to another G.
_native_outcome: ContextVar[_Outcome | None] = ContextVar("gmp_native_outcome", default=None)
_native_request: ContextVar[tuple[Task[..., Any], Context] | None] = ContextVar(
    "gmp_native_request", default=None
)


def _sync_fallback(fn: Callable[..., Any]) -> Callable[..., Any]:
    """How ``run`` executes ``fn`` outside the pool's native phase."""
    if not inspect.iscoroutinefunction(fn):
        return fn

    @functools.wraps(fn)
    def run_to_completion(*args: Any, **kwargs: Any) -> Any:
        # Another pool (or a direct call): give the coroutine a Runtime of its own.
        return _run_to_completion(fn, *args, procs=1, **kwargs)

    return run_to_completion


def _replaying_run(original: Any) -> Any:
    """Wrap a task class's ``run`` so it replays a native outcome when there is one."""
    is_static = isinstance(original, staticmethod)
    fn = original.__func__ if is_static else original
    fallback = _sync_fallback(fn)

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        outcome = _native_outcome.get()
        if outcome is None:
            return fallback(*args, **kwargs)
        _native_outcome.set(None)
        return outcome.replay(fallback, args, kwargs)

    run._gmp_replays = True  # type: ignore[attr-defined]
    return staticmethod(run) if is_static else run


class GTask(Task[..., Any]):
    """Base class for tasks whose body runs natively as a G under :class:`GMPPool`.

    Two ways to write one:

    - ``@app.task(base=GTask)`` on an ``async def`` function: the coroutine is the
      task's native body (``gmp_run``). Under another pool, or called directly, it
      runs to completion on a private Runtime.
    - a sync ``run`` plus ``async def gmp_run(self, *args, **kwargs)`` on the class:
      ``gmp_run`` runs natively under :class:`GMPPool`, ``run`` everywhere else. A
      native body may ``raise DeferToSync`` to hand the call to ``run`` (in syscall
      mode); override :meth:`native_body` to choose per call.

    During the native phase ``self.request`` is the task's request (built from the
    message as the tracer builds it). The tracer then runs as usual with ``run``
    replaying the native outcome, so ``autoretry_for``, ``self.retry()``, hooks and
    signals behave as for a sync task, except that ``task_prerun`` and
    ``before_start`` fire after the native body, when the tracer starts.
    """

    gmp_run: Callable[..., Coroutine[Any, Any, Any]] | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        run = cls.__dict__.get("run")
        if run is None or getattr(run, "_gmp_replays", False):
            return
        fn = run.__func__ if isinstance(run, staticmethod) else run
        if getattr(fn, "_gmp_replays", False):
            return
        if inspect.iscoroutinefunction(fn):
            cls.gmp_run = run
        cls.run = _replaying_run(run)  # type: ignore[method-assign]  # the point: wrap run

    def native_body(self) -> Callable[..., Coroutine[Any, Any, Any]] | None:
        """The ``async`` callable the pool runs as a G for this call, or None for ``run``."""
        return self.gmp_run

    def _get_native_request(self) -> Context:
        current = _native_request.get()
        if current is not None and current[0] is self:
            return current[1]
        return super().request

    request = property(_get_native_request)


def _native_callable(task: Any) -> Callable[..., Coroutine[Any, Any, Any]] | None:
    """The task's native body if it has one and its ``run`` can replay it."""
    if not isinstance(task, GTask) or not getattr(type(task).run, "_gmp_replays", False):
        return None
    return task.native_body()


# ---------------------------------------------------------------------------------------
# Interrupting a running task cooperatively
# ---------------------------------------------------------------------------------------


class _Interrupted(BaseException):
    """Raised in the task after a hard limit (native body or thread) or a terminate (thread).

    A BaseException so the tracer does not record it as the task's failure: the pool
    has reported (hard limit) or Celery has announced (revoke) the outcome already.
    """


_SetAsyncExc = ctypes.pythonapi.PyThreadState_SetAsyncExc


def _raise_in_thread(tid: int, exc_type: type[BaseException] | None) -> None:
    """Raise ``exc_type`` in thread ``tid`` at its next instruction (None: withdraw it)."""
    _SetAsyncExc(ctypes.c_ulong(tid), ctypes.py_object(exc_type) if exc_type else None)


def _exception_info(exc: BaseException) -> ExceptionInfo:
    """An ExceptionInfo for ``exc`` (billiard needs a traceback: raise it once)."""
    try:
        raise exc
    except BaseException:
        return ExceptionInfo()


# ---------------------------------------------------------------------------------------
# Jobs
# ---------------------------------------------------------------------------------------

_QUEUED, _NATIVE, _TRACING, _ENDED = range(4)


class _Job:
    """One applied task: the weak-referenceable result ``on_apply`` returns.

    Celery calls ``.terminate(signal)`` on it on revoke; ``.get``/``.wait`` block the
    caller until the task ends. Every report to Celery goes through :meth:`_report`,
    which lets exactly one through.
    """

    __slots__ = (
        "__weakref__",
        "_done",
        "_lock",
        "accept_callback",
        "args",
        "callback",
        "error_callback",
        "goid",
        "handle",
        "hard",
        "interrupt",
        "kwargs",
        "phase",
        "pool",
        "reported",
        "soft",
        "started",
        "target",
        "tid",
        "timeout_callback",
        "watchdog",
    )

    def __init__(
        self,
        pool: GMPPool,
        target: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        callbacks: tuple[Callable[..., Any] | None, ...],
        soft: float | None,
        hard: float | None,
    ) -> None:
        self.pool = pool
        self.target = target
        self.args = args
        self.kwargs = kwargs
        (self.callback, self.accept_callback, self.error_callback, self.timeout_callback) = (
            callbacks
        )
        self.soft = soft
        self.hard = hard
        self._lock = threading.Lock()
        self._done = threading.Event()
        self.phase = _QUEUED
        self.goid = 0
        self.handle: GHandle | None = None
        self.watchdog: GHandle | None = None
        self.tid: int | None = None
        self.reported = False
        self.interrupt: BaseException | None = None
        self.started = 0.0

    # -- the result object Celery holds ------------------------------------------------

    def get(self, timeout: float | None = None) -> None:
        """Block until the task has ended; TimeoutError after ``timeout`` seconds."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"task in goroutine {self.goid} still running")

    def wait(self, timeout: float | None = None) -> None:
        """Block until the task has ended or ``timeout`` seconds passed."""
        self._done.wait(timeout)

    def terminate(self, signal: int | None = None) -> None:
        """Celery's revoke hook; the task is interrupted by ``terminate_job`` (as gevent does)."""

    # -- reporting -----------------------------------------------------------------

    def _report(self, fn: Callable[..., Any] | None, *args: Any) -> None:
        with self._lock:
            if self.reported:
                return
            self.reported = True
        if fn is not None:
            self.pool.deliver(fn, *args)

    def on_result(self, ret: Any) -> None:
        """apply_target's callback: the tracer's ``(failed, retval, runtime)``.

        apply_target passes a bare ExceptionInfo instead when the tracer died of a
        BaseException (an interrupt arriving outside the body): that is a lost task.
        """
        if isinstance(ret, ExceptionInfo):
            self.on_lost(ret.exception or RuntimeError("the tracer died"))
        else:
            self._report(self.callback, ret)

    def on_lost(self, exc: BaseException) -> None:
        """The G ended without a result: terminated, or lost (requeued by Celery's rules)."""
        if self.reported:
            return
        if isinstance(self.interrupt, Terminated):
            reason: BaseException = self.interrupt
        else:
            reason = WorkerLostError(f"goroutine {self.goid} ended without a result: {exc!r}")
        self._report(self.error_callback, _exception_info(reason))

    # -- interruption ----------------------------------------------------------------

    def _signal(
        self, thread_exc: type[BaseException], native_exc: BaseException, *, final: bool = False
    ) -> None:
        """Interrupt the task at its next chance, whichever phase it is in.

        The tracer's thread gets ``thread_exc`` raised (``PyThreadState_SetAsyncExc``
        takes a class); a native body gets ``native_exc`` thrown into its G. A soft
        limit may be caught and the body may keep awaiting; a ``final`` interrupt (hard
        limit, terminate) also cancels the G, so every later await raises again.
        """
        with self._lock:
            if self.phase == _TRACING and self.tid is not None:
                _raise_in_thread(self.tid, thread_exc)
                return
        if self.phase == _NATIVE and self.handle is not None:
            self.handle.throw(native_exc)
            if final:
                self.handle.cancel()

    def soft_expired(self) -> None:
        """The soft limit passed: tell Celery (it logs), raise SoftTimeLimitExceeded."""
        if self.phase == _ENDED or self.reported:
            return
        self._report_timeout(True, self.soft)
        self._signal(SoftTimeLimitExceeded, SoftTimeLimitExceeded(self.soft))

    def hard_expired(self) -> None:
        """The hard limit passed: report the failure now, then stop the task."""
        if self.phase == _ENDED or self.reported:
            return
        self.interrupt = _Interrupted(f"hard time limit ({self.hard}s) exceeded")
        self._report(self.timeout_callback, False, self.hard)
        self._signal(_Interrupted, self.interrupt, final=True)

    def terminated(self, signal: int | None) -> None:
        """``revoke --terminate``: stop the task at its next chance."""
        if self.phase == _ENDED:
            return
        self.interrupt = Terminated(signal)
        self._signal(_Interrupted, self.interrupt, final=True)

    def _report_timeout(self, soft: bool, limit: float | None) -> None:
        if self.timeout_callback is not None:
            self.pool.deliver(self.timeout_callback, soft, limit)

    # -- the sync phase: Celery's tracer on an M -------------------------------------

    def trace(self) -> None:
        """Run ``apply_target`` (in syscall mode); only the tracer itself is interruptible."""
        if self.interrupt is not None:  # hard limit or terminate before the tracer began
            raise self.interrupt
        apply_target(self._interruptible_target, self.args, self.kwargs, self.on_result)

    def _interruptible_target(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            self.tid = threading.get_ident()
            self.phase = _TRACING
        try:
            return self.target(*args, **kwargs)
        finally:
            with self._lock:
                self.tid = None
                self.phase = _ENDED
                # A signal sent between the return and this lock would fire in the
                # scheduler's code: withdraw it.
                _raise_in_thread(threading.get_ident(), None)

    def ended(self) -> None:
        """The G is done: wake ``get``/``wait`` callers."""
        self.phase = _ENDED
        self._done.set()


# ---------------------------------------------------------------------------------------
# The pool
# ---------------------------------------------------------------------------------------


class GMPPool(BasePool):
    """Celery pool running each task as a G on an embedded gmpworker Runtime."""

    # Shutdown waits for running Gs and joins the Runtime's threads, which must not
    # happen inside a signal handler; Celery then stops the pool outside of it.
    signal_safe = False
    # Gs are not greenlets: the consumer is an ordinary thread that never runs inside
    # the Runtime, so Celery must keep its threaded event loop and pidbox.
    is_green = False
    # A sync body holds a real thread (its M) while it waits, so ``result.get()``
    # inside a task blocks like in the thread pool: keep Celery's guard against it.
    task_join_will_block = True
    # Bodies stay in this process, so the message body need not be copied.
    body_can_be_buffer = True
    # Let the worker hold back requests until a slot frees (see "Waiting for a free
    # slot"): that is where Celery checks ``expires`` and revocation, as for prefork.
    uses_semaphore = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limit = max(1, int(self.limit or 1))
        self.runtime: Runtime | None = None
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._queue: deque[_Job] = deque()
        self._jobs: dict[int, _Job] = {}
        self._running = 0
        self._accepting = False
        self._accept: Any = None
        self._hub: Any = None
        self._callbacks: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self._drain_scheduled = False
        self._hostname = gethostname()
        # The worker's LaxBoundedSemaphore (event loop only): not thread-safe, so it is
        # released on the hub's thread through ``deliver``.
        self._semaphore: Any = self.options.get("semaphore")

    # -- lifecycle -------------------------------------------------------------------

    def _procs(self) -> int | None:
        """GOMAXPROCS: ``gmp_maxprocs`` in the app config, else the Runtime's default."""
        conf = getattr(self.app, "conf", None)
        value = conf.get("gmp_maxprocs") if conf is not None else None
        return int(value) if value else None

    def on_start(self) -> None:
        """Start the Runtime and announce it (``runtime_started``)."""
        self.runtime = Runtime(procs=self._procs(), panic_hook=self._panic).start()
        if self.app is not None:
            self._accept = prepare_accept_content(self.app.conf.accept_content)
        self._accepting = True
        log.info(
            "gmpworker pool: GOMAXPROCS=%d, concurrency=%d",
            self.runtime.sched.gomaxprocs,
            self.limit,
        )
        runtime_started.send(sender=self, runtime=self.runtime)

    def on_stop(self) -> None:
        """Warm shutdown: drop unstarted jobs (redelivered), finish running ones, stop."""
        dropped = self._close()
        if dropped:
            log.info("gmpworker pool: %d unstarted task(s) left for redelivery", dropped)
        with self._idle:
            while self._running:
                self._idle.wait(0.05)
                # This is the hub's thread, busy here: run the finished tasks' callbacks
                # (acks) ourselves so they are acknowledged before the connection closes.
                self._idle.release()
                try:
                    self._drain_callbacks()
                finally:
                    self._idle.acquire()
        self._drain_callbacks()
        self._stop_runtime(wait=True)

    def on_terminate(self) -> None:
        """Cold shutdown: drop unstarted jobs, cancel running Gs, stop without waiting."""
        self._close()
        with self._lock:
            running = list(self._jobs.values())
        for job in running:
            job.terminated(None)
        self._stop_runtime(wait=False)

    def on_close(self) -> None:
        """No new tasks from now on."""
        self._close()

    def _close(self) -> int:
        with self._lock:
            self._accepting = False
            dropped = len(self._queue)
            self._queue.clear()
        return dropped

    def _stop_runtime(self, wait: bool) -> None:
        rt = self.runtime
        if rt is None:
            return
        runtime_stopping.send(sender=self, runtime=rt)
        rt.stop(wait=wait, timeout=5.0 if wait else 1.0)

    def _panic(self, goid: int, exc: BaseException) -> None:
        if not isinstance(exc, _Interrupted):
            log.error("goroutine %d panicked: %r", goid, exc, exc_info=exc)

    # -- Celery's callbacks run on the consumer thread ------------------------------

    def register_with_event_loop(self, loop: Any) -> None:
        """Remember the consumer's hub: Celery's callbacks are handed to its thread.

        Celery calls this again each time the consumer reconnects to the broker.
        """
        self._hub = loop
        self._rearm_callback_drain()

    def _rearm_callback_drain(self) -> None:
        """Schedule a drain of the queued callbacks on the (new) event loop.

        A drain scheduled before a broker connection broke can be lost with it: the hub
        runs its ready callbacks from a popped batch, and when one of them raises (an ack
        on the dead connection) the rest of the batch is dropped. Its flag would stay
        set, so every later :meth:`deliver` would queue without scheduling: tasks kept
        running and persisting, but none was acknowledged again (the broker's unacked
        count grew by one per task until the prefetch window stalled the worker).
        """
        with self._lock:
            self._drain_scheduled = bool(self._callbacks)
        if self._drain_scheduled:
            self._hub.call_soon(self._drain_callbacks)

    def deliver(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run one of Celery's callbacks on the consumer thread, in order.

        The callbacks ack messages and publish events on connections shared with the
        consumer; py-amqp connections are not thread-safe (a confirm read by the wrong
        thread deadlocked the event dispatcher under load), so Gs never call them
        directly when there is a hub. Without one (no event loop) they run in place.
        """
        hub = self._hub
        if hub is None:
            fn(*args)
            return
        with self._lock:
            self._callbacks.append((fn, args))
            if self._drain_scheduled:
                return
            self._drain_scheduled = True
        hub.call_soon(self._drain_callbacks)

    def _drain_callbacks(self) -> None:
        """Run every queued callback, oldest first (on the hub's thread)."""
        with self._lock:
            self._drain_scheduled = False
        ran = False
        while True:
            try:
                fn, args = self._callbacks.popleft()
            except IndexError:
                break
            ran = True
            try:
                fn(*args)
            except Exception:
                log.exception("pool callback %r failed", fn)
        if ran:
            _wake(self._hub)

    # -- applying tasks ----------------------------------------------------------------

    # celery-types declares ``-> None``, but Celery keeps (a weakref to) the result.
    def on_apply(  # type: ignore[override]
        self,
        target: Callable[..., Any],
        args: tuple[Any, ...] | None = None,
        kwargs: dict[str, Any] | None = None,
        callback: Callable[..., Any] | None = None,
        accept_callback: Callable[..., Any] | None = None,
        error_callback: Callable[..., Any] | None = None,
        timeout: float | None = None,
        soft_timeout: float | None = None,
        timeout_callback: Callable[..., Any] | None = None,
        **_: Any,
    ) -> _Job:
        """Queue the task as a G and return at once (runs on the consumer thread)."""
        hard = timeout or self.options.get("timeout")
        soft = soft_timeout or self.options.get("soft_timeout")
        kwargs = dict(kwargs or {})
        if target is trace_task_ret and self.app is not None:
            # The plain tracer (a worker started without Celery's worker optimisations,
            # e.g. an embedded WorkController) looks the task up in ``current_app``,
            # which on an M is the process's default app: name the worker's app, as a
            # prefork child has it current.
            kwargs.setdefault("app", self.app)
        job = _Job(
            self,
            target,
            tuple(args or ()),
            kwargs,
            (callback, accept_callback, error_callback, timeout_callback),
            soft,
            hard,
        )
        with self._lock:
            if not self._accepting:
                raise RuntimeError("gmpworker pool is stopped: no new tasks")
            if self._running >= self.limit:
                self._queue.append(job)
                return job
            self._running += 1
        self._launch(job)
        return job

    def _launch(self, job: _Job) -> None:
        assert self.runtime is not None
        job.handle = self.runtime.submit(self._run, job)
        job.handle.add_done_callback(functools.partial(self._exited, job))

    def _exited(self, job: _Job, handle: GHandle) -> None:
        """Done callback (on the G's M): release the slot, start the next waiting job."""
        if job.watchdog is not None:
            job.watchdog.cancel()
        job.ended()
        with self._lock:
            self._jobs.pop(job.goid, None)
            nxt = self._queue.popleft() if self._queue and self._accepting else None
            if nxt is None:
                self._running -= 1
                self._idle.notify_all()
        if self._semaphore is not None:
            # One release per applied job, after the job's own callbacks (``deliver``
            # keeps order): the worker then applies its next waiting request, checking
            # its expiry and revocation first.
            self.deliver(self._semaphore.release)
        if nxt is not None:
            self._launch(nxt)

    async def _run(self, job: _Job) -> None:
        """The job's G: accept, native phase (if any), tracer in syscall mode."""
        accept = job.accept_callback
        job.goid = current_goid()
        job.started = time.monotonic()
        with self._lock:
            self._jobs[job.goid] = job
        if accept is not None:
            self.deliver(accept, job.goid, job.started)
        if job.soft or job.hard:
            assert self.runtime is not None
            job.watchdog = self.runtime.submit(self._watchdog, job)
        try:
            native = self._native_body_of(job)
            if native is not None:
                await self._native_phase(job, *native)
            await syscall(job.trace)
        except BaseException as exc:
            job.on_lost(exc)
            if not isinstance(exc, Cancelled | _Interrupted):
                log.exception("task in goroutine %d failed outside its body", job.goid)
        finally:
            job.on_lost(RuntimeError("no result reported"))  # no-op once reported

    def _native_body_of(self, job: _Job) -> tuple[Any, Callable[..., Any]] | None:
        """(task, native body) when the task has one; None for a plain sync task."""
        if self.app is None or not job.args:
            return None
        task = self.app.tasks.get(job.args[0])
        body = _native_callable(task)
        return None if body is None else (task, body)

    async def _native_phase(
        self, job: _Job, task: Task[..., Any], body: Callable[..., Any]
    ) -> None:
        """Run the native body as this G and leave its outcome for the tracer to replay."""
        job.phase = _NATIVE
        args, kwargs, request = self._decode(job)
        token = _native_request.set((task, request))
        try:
            value = await body(*args, **kwargs)
        except Exception as exc:
            outcome = _Outcome(exc=exc)
        else:
            outcome = _Outcome(value)
        finally:
            _native_request.reset(token)
        if job.interrupt is not None:  # hard limit or terminate: nothing left to replay
            raise job.interrupt
        _native_outcome.set(outcome)

    def _decode(self, job: _Job) -> tuple[list[Any], dict[str, Any], Context]:
        """The message's args, kwargs and request context, as ``fast_trace_task`` builds them."""
        _name, _task_id, request_dict, body, content_type, content_encoding = job.args[:6]
        if content_type:
            args, kwargs, embed = loads_message(
                body, content_type, content_encoding, accept=self._accept
            )
        else:
            args, kwargs, embed = body
        request = dict(request_dict)
        request.update(
            {"args": args, "kwargs": kwargs, "hostname": self._hostname, "is_eager": False},
            **(embed or {}),
        )
        return args, kwargs, Context(request, args=args, kwargs=kwargs, called_directly=False)

    async def _watchdog(self, job: _Job) -> None:
        """Fire the soft, then the hard limit, counted from the task's start."""
        elapsed = time.monotonic() - job.started
        if job.soft and (not job.hard or job.soft < job.hard):
            await sleep(max(0.0, job.soft - elapsed))
            job.soft_expired()
        if job.hard:
            await sleep(max(0.0, job.hard - (time.monotonic() - job.started)))
            job.hard_expired()

    # -- control -------------------------------------------------------------------

    def terminate_job(self, pid: int, signal: int | None = None) -> None:
        """``revoke --terminate``: interrupt the task in G ``pid`` cooperatively."""
        with self._lock:
            job = self._jobs.get(pid)
        if job is not None:
            job.terminated(signal)

    @property
    def num_processes(self) -> int:
        """Tasks run at once (sizes Celery's prefetch)."""
        return int(self.limit)

    def _get_info(self) -> dict[str, Any]:
        """Celery's pool info plus the Runtime's ``stats()`` (``celery inspect stats``)."""
        info: dict[str, Any] = super()._get_info()  # type: ignore[misc]  # not in celery-types
        with self._lock:
            running, queued = self._running, len(self._queue)
        info.update(
            {
                "max-concurrency": self.limit,
                "processes": [os.getpid()],
                "running": running,
                "queued": queued,
                "gmpworker": self.runtime.stats() if self.runtime is not None else {},
            }
        )
        return info


def _wake(hub: Any) -> None:
    """Make the hub loop again now rather than at its next timer.

    The callbacks just run queue their acks with ``hub.call_soon``, which does not
    wake the poller when called from the hub's own thread: the acks (and so the next
    prefetched messages) would wait for the next timer, up to 2 s. kombu has no public
    "wake" call; its waker is what ``call_soon`` uses from other threads.
    """
    waker = getattr(hub, "_waker", None)
    if waker is not None:
        waker.wake()
