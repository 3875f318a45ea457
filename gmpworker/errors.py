"""Exceptions raised by gmpworker.

Go reports most of these as a panic or a fatal error that kills the process; a
Python library raises them instead so callers can handle and test them.
"""

from __future__ import annotations


class GoPanic(RuntimeError):
    """A runtime panic Go would raise (for example "send on closed channel")."""


Panic = GoPanic


class ChanClosedError(GoPanic):
    """Send on a closed channel, or close of a closed channel (Go panics)."""


class Deadlock(RuntimeError):
    """Go's fatal "all goroutines are asleep - deadlock!", with a per-G dump."""


class Cancelled(BaseException):
    """Raised inside a G at its next park point after ``GHandle.cancel()``.

    A BaseException (like ``asyncio.CancelledError``) so ``except Exception`` in
    user code does not swallow it by accident.
    """
