"""The traps through which every G suspends, and the requests they carry.

Mirrors the role of ``mcall`` (asm_*.s): a G switches to its M's scheduling loop
(G0) by yielding one request object up its ``await`` chain. Requests are
Go-shaped: ``PARK`` (gopark), ``GOSCHED`` (Gosched), ``PREEMPT`` (gopreempt_m)
and ``SyscallReq`` (entersyscall ... exitsyscall).

The M always resumes a G with ``send(None)``; whatever a waker passes to the G
travels in ``gp.param``, which the G reads after it resumes (as Go code reads
``gp.param`` after ``gopark`` returns). That is what lets the fixed requests be
awaited through ``park``/``gosched``/``preempt``: objects whose ``__await__`` is
a tuple's ``__iter__``, so a parked G holds a 48-byte tuple iterator instead of a
generator frame (184 bytes), and suspending runs no Python frame at all.
"""

from __future__ import annotations

import types
from collections.abc import Awaitable, Callable, Generator
from typing import Any, cast


class _Request:
    """A singleton request; identity is compared in the M loop (the cheapest dispatch)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<gmpworker {self.name}>"


PARK = _Request("PARK")
GOSCHED = _Request("GOSCHED")
PREEMPT = _Request("PREEMPT")


def _fixedtrap(req: _Request) -> Awaitable[None]:
    """An awaitable that suspends the G with ``req`` once, then returns None.

    ``await`` calls ``type(obj).__await__(obj)``; a method-wrapper found on the
    class is not a descriptor, so it is called without ``obj``: ``(req,).__iter__()``
    returns a fresh tuple iterator that yields ``req``. ``throw``/``close`` into a G
    parked on it raise at the ``await``, as for any non-generator iterator.
    """
    cls = type(f"_{req.name.lower()}trap", (), {"__slots__": (), "__await__": (req,).__iter__})
    return cast(Awaitable[None], cls())


park = _fixedtrap(PARK)  # ``await park`` = gopark (the G set its wait fields first)
gosched_trap = _fixedtrap(GOSCHED)
preempt = _fixedtrap(PREEMPT)


class SyscallReq:
    """Run ``fn(*args, **kwargs)`` on the current M in syscall state (entersyscall)."""

    __slots__ = ("args", "block", "fn", "kwargs")

    def __init__(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], block: bool
    ) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.block = block


@types.coroutine
def trap(req: object) -> Generator[object, None, None]:
    """Suspend the current G with a request built at run time (``SyscallReq``).

    The M resumes it with None; results come back in ``gp.param``.
    """
    yield req


def foreign_yield_error(req: object) -> TypeError:
    """The error thrown into a G that yielded something that is not a gmpworker request."""
    desc = repr(req)
    module = type(req).__module__
    if module.startswith(("asyncio", "_asyncio")):
        desc = f"<asyncio {type(req).__name__} {desc}>"
    return TypeError(
        f"gmpworker received an unrecognized yield ({desc}): "
        "are you awaiting an asyncio object inside a gmpworker G?"
    )
