"""select over channel cases.

Mirrors ``runtime.selectgo`` (select.go, Go 1.19): a uniformly random
``pollorder``, all channels locked in ``lockorder`` (by channel serial, Go sorts
by address), pass 1 looks for a ready case, a ``default`` returns -1, pass 2
enqueues one sudog per case and parks (``selparkcommit`` unlocks), and pass 3
dequeues the losing sudogs. The first waker wins the G's ``selectDone`` word
(``waitq.dequeue``'s CAS), so a select completes exactly once.
"""

from __future__ import annotations

import contextlib
import random
from typing import Any

from .chan import Case, Chan, dequeue
from .errors import ChanClosedError
from .proc import goready
from .runtime2 import G, getg, sudog, waitReasonSelect, waitReasonSelectNoCases
from .trap import park, preempt

_random = random.random


def send_case(c: Chan[Any] | None, v: Any) -> Case:
    """A case sending ``v`` on ``c`` (``None`` = nil channel, never ready)."""
    return Case(c, True, v)


def recv_case(c: Chan[Any] | None) -> Case:
    """A case receiving from ``c`` (``None`` = nil channel, never ready)."""
    return Case(c, False, None)


def _pollorder(n: int) -> list[int]:
    """A uniformly random permutation (Go: fastrandn-driven insertion shuffle)."""
    order = list(range(n))
    for i in range(1, n):
        j = int(_random() * (i + 1))
        order[i], order[j] = order[j], order[i]
    return order


def _lockorder(cases: tuple[Case, ...]) -> list[Any]:
    """The distinct channels' locks sorted by channel serial (Go's lockorder)."""
    chans = {c.c.serial: c.c for c in cases if c.c is not None}
    return [chans[k].lock for k in sorted(chans)]


def _unlockall(locks: list[Any]) -> None:
    for lk in reversed(locks):
        lk.release()


def _selparkcommit(gp: G, locks: Any) -> bool:
    """Mirrors runtime.selparkcommit: unlock every channel once the G is waiting."""
    _unlockall(locks)
    return True


def _abortSelect(gp: G) -> bool:
    """GHandle.cancel support: win selectDone, then dequeue every sudog (pass 3)."""
    sgs: list[sudog] = gp.waiting
    if not sgs or type(sgs[0]) is not sudog:
        return False
    try:
        sgs[0].seldone.pop()  # type: ignore[union-attr]
    except IndexError:
        return False
    _dequeueAll(sgs, None)
    return True


def _abortForever(gp: G) -> bool:
    """GHandle.cancel support for ``select {}``: the first canceller wins the G."""
    try:
        gp.waiting.pop()
    except (IndexError, AttributeError):
        return False
    return True


def _dequeueAll(sgs: list[sudog], keep: sudog | None) -> None:
    """Remove the select's sudogs (all but ``keep``) from their wait queues."""
    for sg in sgs:
        if sg is keep:
            continue
        c = sg.c
        with c.lock:
            q = c.sendq if sg.elem is not _RECV else c.recvq
            with contextlib.suppress(ValueError):
                q.remove(sg)


_RECV = object()  # marks a receive sudog in pass 2 (a send sudog holds its value)


async def select(*cases: Case, default: bool = False) -> tuple[int, Any, bool]:
    """Wait until one case can proceed and perform it; return ``(index, value, ok)``.

    ``value``/``ok`` are the received value and whether it came from a send (False
    for a closed channel); send cases give ``(i, None, True)``. With
    ``default=True`` and no ready case it returns ``(-1, None, False)`` at once.
    With no cases and no default the G blocks forever ("select (no cases)").
    """
    gp = getg()
    if gp is None:
        raise RuntimeError("select() must run inside a goroutine")
    for cs in cases:
        if not isinstance(cs, Case):
            raise TypeError(f"select() takes cases from send_case/recv_case, got {cs!r}")
    locks = _lockorder(cases)
    for lk in locks:
        lk.acquire()
    res = _pass1(cases)
    if res is not None:
        _unlockall(locks)
        sg = res[3]
        if sg is not None:
            m = gp.m
            goready(sg.g, m.p if m is not None else None)
        if gp.preempt:
            await preempt
        if res[0] < 0:
            raise ChanClosedError("send on closed channel")
        return res[0], res[1], res[2]
    if default:
        _unlockall(locks)
        return -1, None, False
    return await _block(cases, gp, locks)


def _pass1(cases: tuple[Case, ...]) -> tuple[int, Any, bool, sudog | None] | None:
    """Look for a ready case in random order; all locks held.

    Returns (index, value, ok, sudog to ready) or None; index -1-i means case i
    sends on a closed channel.
    """
    for i in _pollorder(len(cases)):
        cs = cases[i]
        c = cs.c
        if c is None:
            continue
        if cs.send:
            if c.closed:
                return -1 - i, None, False, None
            sg = dequeue(c.recvq)
            if sg is not None:
                sg.elem = cs.elem
                sg.success = True
                sg.g.param = sg
                return i, None, True, sg
            if len(c.buf) < c.dataqsiz:
                c.buf.append(cs.elem)
                return i, None, True, None
        else:
            sg = dequeue(c.sendq)
            if sg is not None:
                return i, c._recvFromSender(sg), True, sg
            if c.buf:
                return i, c.buf.popleft(), True, None
            if c.closed:
                return i, None, False, None
    return None


async def _block(cases: tuple[Case, ...], gp: G, locks: list[Any]) -> tuple[int, Any, bool]:
    """Passes 2 and 3 of selectgo: enqueue on every channel, park, clean up."""
    if not locks:
        gp.waiting = [1]  # claimed by the one _abortForever that wins it
        # select {} is block(); a select of only nil channels parks as "select".
        gp.waitreason = waitReasonSelect if cases else waitReasonSelectNoCases
        gp.waitlock = None
        gp.waitunlockf = None
        gp.waitabort = _abortForever
        await park  # block(): only GHandle.cancel can wake this G
    seldone = [1]
    sgs: list[sudog] = []
    for cs in cases:
        c = cs.c
        if c is None:
            continue
        if cs.send:
            sg = sudog(gp, cs.elem, c, True, seldone)
            c.sendq.append(sg)
        else:
            sg = sudog(gp, _RECV, c, True, seldone)
            c.recvq.append(sg)
        sgs.append(sg)
    gp.waiting = sgs
    gp.waitreason = waitReasonSelect
    gp.waitlock = locks
    gp.waitunlockf = _selparkcommit
    gp.waitabort = _abortSelect
    gp.param = None
    await park
    won: sudog = gp.param  # the sudog whose waker won selectDone
    gp.param = None
    gp.waiting = None
    _dequeueAll(sgs, won)
    idx = _caseindex(cases, sgs, won)
    if cases[idx].send:
        if not won.success:
            raise ChanClosedError("send on closed channel")
        return idx, None, True
    v = won.elem
    if v is _RECV:
        v = None
    return idx, v, won.success


def _caseindex(cases: tuple[Case, ...], sgs: list[sudog], won: sudog) -> int:
    """The index in ``cases`` of the winning sudog (nil-channel cases have none)."""
    k = sgs.index(won)
    for i, cs in enumerate(cases):
        if cs.c is None:
            continue
        if k == 0:
            return i
        k -= 1
    raise AssertionError("select: winning sudog not found")
