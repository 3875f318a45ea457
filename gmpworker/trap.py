"""The single trap through which every G suspends, and the requests it carries.

Mirrors the role of ``mcall`` (asm_*.s): a G switches to its M's scheduling loop
(G0) by yielding one request object from the only ``yield`` in the library.
Requests are Go-shaped: ``PARK`` (gopark), ``GOSCHED`` (Gosched), ``PREEMPT``
(gopreempt_m) and ``SyscallReq`` (entersyscall ... exitsyscall).
"""

from __future__ import annotations

import types
from collections.abc import Callable, Generator
from typing import Any


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
def trap(req: object) -> Generator[object, Any, Any]:
    """Suspend the current G with ``req`` and return what the M resumes it with.

    This is the only ``yield`` in gmpworker: every blocking operation is an
    ``async def`` that calls it, as curio's ``_kernel_trap`` and trio's traps do.
    """
    return (yield req)


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
