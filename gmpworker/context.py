"""A small ``context``: cancellation and deadlines that Gs can select on.

Mirrors Go's ``context`` package (context.go): ``background()``,
``with_cancel(parent) -> (ctx, cancel)``, ``with_timeout``/``with_deadline``,
``with_value``; ``ctx.done()`` is a channel closed on cancellation, ``ctx.err()``
is ``None``, ``Canceled`` or ``DeadlineExceeded``. Deadlines are
``time.monotonic()`` seconds (Go uses wall-clock ``time.Time``). Deadline timers
are runtime timers on the creating G's P; outside a G a ``threading.Timer`` is used.
"""

from __future__ import annotations

import _thread
import threading
import time
from collections.abc import Callable
from typing import Any

from .chan import Chan
from .runtime2 import getg


class CanceledError(Exception):
    """Go's ``context.Canceled``."""


class DeadlineExceededError(TimeoutError):
    """Go's ``context.DeadlineExceeded``."""


Canceled = CanceledError("context canceled")
DeadlineExceeded = DeadlineExceededError("context deadline exceeded")


class Context:
    """A cancellation scope. Use the module functions to create one."""

    __slots__ = ("_children", "_done", "_err", "_lock", "_parent", "_timer", "deadline_", "values")

    def __init__(self, parent: Context | None, deadline: float | None) -> None:
        self._parent = parent
        self._done: Chan[None] = Chan(0)
        self._err: BaseException | None = None
        self._lock = _thread.allocate_lock()
        self._children: set[Context] = set()
        self._timer: Any = None
        self.deadline_ = deadline
        self.values: dict[Any, Any] = dict(parent.values) if parent is not None else {}

    def done(self) -> Chan[None]:
        """A channel closed when this context is cancelled (never, for background())."""
        return self._done

    def err(self) -> BaseException | None:
        """None while active; ``Canceled`` or ``DeadlineExceeded`` afterwards."""
        return self._err

    def deadline(self) -> tuple[float | None, bool]:
        """(deadline in time.monotonic() seconds, whether there is one)."""
        return self.deadline_, self.deadline_ is not None

    def value(self, key: Any) -> Any:
        """The value stored under ``key`` by with_value on this context or a parent."""
        return self.values.get(key)

    def _cancel(self, err: BaseException, remove_from_parent: bool) -> None:
        """Mirrors cancelCtx.cancel: close done, cancel children, stop the timer."""
        with self._lock:
            if self._err is not None:
                return
            self._err = err
            children = list(self._children)
            self._children.clear()
            t = self._timer
            self._timer = None
        self._done.close()
        for c in children:
            c._cancel(err, False)
        if t is not None:
            _stoptimer(t)
        if remove_from_parent and self._parent is not None:
            with self._parent._lock:
                self._parent._children.discard(self)


def _stoptimer(t: Any) -> None:
    if isinstance(t, threading.Timer):
        t.cancel()
    else:
        from .timers import deltimer

        deltimer(t)


def background() -> Context:
    """The root context: never cancelled, no deadline. Mirrors context.Background."""
    return Context(None, None)


def _propagate(parent: Context, child: Context) -> None:
    """Mirrors propagateCancel: cancel the child now or when the parent is cancelled."""
    with parent._lock:
        err = parent._err
        if err is None:
            parent._children.add(child)
    if err is not None:
        child._cancel(err, False)


def with_cancel(parent: Context) -> tuple[Context, Callable[[], None]]:
    """A child context and its cancel function. Mirrors context.WithCancel."""
    ctx = Context(parent, parent.deadline_)
    _propagate(parent, ctx)
    return ctx, lambda: ctx._cancel(Canceled, True)


def with_deadline(parent: Context, deadline: float) -> tuple[Context, Callable[[], None]]:
    """A child cancelled at ``deadline`` (time.monotonic() seconds). Mirrors WithDeadline."""
    if parent.deadline_ is not None and parent.deadline_ < deadline:
        return with_cancel(parent)  # the parent's deadline comes first
    ctx = Context(parent, deadline)
    _propagate(parent, ctx)
    dur = deadline - time.monotonic()
    if dur <= 0:
        ctx._cancel(DeadlineExceeded, True)
        return ctx, lambda: ctx._cancel(Canceled, True)
    ctx._timer = _starttimer(dur, lambda: ctx._cancel(DeadlineExceeded, True))
    return ctx, lambda: ctx._cancel(Canceled, True)


def with_timeout(parent: Context, seconds: float) -> tuple[Context, Callable[[], None]]:
    """with_deadline(parent, now + seconds). Mirrors context.WithTimeout."""
    return with_deadline(parent, time.monotonic() + seconds)


def with_value(parent: Context, key: Any, val: Any) -> Context:
    """A child carrying ``key -> val``. Mirrors context.WithValue."""
    ctx, _cancel = with_cancel(parent)
    ctx.values[key] = val
    return ctx


def _starttimer(seconds: float, f: Callable[[], None]) -> Any:
    gp = getg()
    if gp is not None:
        from .timers import afterfunc

        m = gp.m
        return afterfunc(gp.sched, seconds, f, m.p if m is not None else None)
    t = threading.Timer(seconds, f)
    t.daemon = True
    t.start()
    return t
