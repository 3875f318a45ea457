"""select over channel cases.

Mirrors ``runtime.selectgo`` (select.go, Go 1.19): a uniformly random
``pollorder``, all channels locked in ``lockorder`` (a heap sort by channel
serial, started from the pollorder; Go sorts by address), pass 1 looks for a
ready case in pollorder, a ``default`` returns -1, pass 2 enqueues one sudog per
case in lockorder and parks (``selparkcommit`` unlocks), and pass 3 dequeues the
losing sudogs. Because the sudogs are queued in that randomised order, a blocked
select with several cases on one channel lets each of them win equally often.
The first waker wins the G's ``selectDone`` word (``waitq.dequeue``'s CAS), so a
select completes exactly once.
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


def _orders(cases: tuple[Case, ...]) -> tuple[list[int], list[int]]:
    """selectgo's ``pollorder`` and ``lockorder`` (select.go, Go 1.19), as case indexes.

    ``pollorder`` is a uniformly random permutation of the non-nil cases (Go's
    fastrandn-driven insertion shuffle). ``lockorder`` sorts them by channel
    (``hchan.sortkey``; the serial here) with Go's heap sort, started from the
    pollorder "to permute cases on the same channel": heap sort is not stable, so
    several cases on one channel land in a random relative order, and since pass 2
    enqueues the sudogs in lockorder, each of them is equally likely to be the first
    sudog a partner dequeues.
    """
    pollorder: list[int] = []
    norder = 0
    for i, cs in enumerate(cases):
        if cs.c is None:
            continue  # omit cases without channels from the poll and lock orders
        j = int(_random() * (norder + 1))  # fastrandn(norder + 1)
        pollorder.append(i)
        pollorder[norder] = pollorder[j]
        pollorder[j] = i
        norder += 1
    lockorder = [0] * norder
    for i in range(norder):
        j = i
        c = _key(cases, pollorder[i])
        while j > 0 and _key(cases, lockorder[(j - 1) // 2]) < c:
            k = (j - 1) // 2
            lockorder[j] = lockorder[k]
            j = k
        lockorder[j] = pollorder[i]
    for i in range(norder - 1, -1, -1):
        o = lockorder[i]
        c = _key(cases, o)
        lockorder[i] = lockorder[0]
        j = 0
        while True:
            k = j * 2 + 1
            if k >= i:
                break
            if k + 1 < i and _key(cases, lockorder[k]) < _key(cases, lockorder[k + 1]):
                k += 1
            if c < _key(cases, lockorder[k]):
                lockorder[j] = lockorder[k]
                j = k
                continue
            break
        lockorder[j] = o
    return pollorder, lockorder


def _key(cases: tuple[Case, ...], i: int) -> int:
    """``scases[i].c.sortkey()``."""
    return cases[i].c.serial  # type: ignore[union-attr]


def _locks(cases: tuple[Case, ...], lockorder: list[int]) -> list[Any]:
    """The distinct channels' locks in lockorder (sellock skips a repeated channel)."""
    locks: list[Any] = []
    last = None
    for i in lockorder:
        c = cases[i].c
        if c is not last:
            locks.append(c.lock)  # type: ignore[union-attr]
            last = c
    return locks


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
    """Remove the select's sudogs (all but ``keep``) from their wait queues.

    Pass 3 of selectgo (``dequeueSudoG`` on every losing case), one channel lock at
    a time: the G is awake and owns its sudogs, so no other lock needs holding.
    """
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
    Sending on a closed channel raises ``ChanClosedError`` (a Go panic).
    """
    gp = getg()
    if gp is None:
        raise RuntimeError("select() must run inside a goroutine")
    for cs in cases:
        if not isinstance(cs, Case):
            raise TypeError(f"select() takes cases from send_case/recv_case, got {cs!r}")
    pollorder, lockorder = _orders(cases)
    locks = _locks(cases, lockorder)
    for lk in locks:  # sellock
        lk.acquire()
    res = _pass1(cases, pollorder)
    if res is not None:
        _unlockall(locks)
        sg = res[3]
        if sg is not None:
            m = gp.m
            goready(sg.g, m.p if m is not None else None)
        if res[0] < 0:
            raise ChanClosedError("send on closed channel")
        if gp.preempt:
            await preempt
        return res[0], res[1], res[2]
    if default:
        _unlockall(locks)
        return -1, None, False
    return await _block(cases, lockorder, gp, locks)


def _pass1(
    cases: tuple[Case, ...], pollorder: list[int]
) -> tuple[int, Any, bool, sudog | None] | None:
    """Look for a ready case in ``pollorder``; all locks held.

    Returns (index, value, ok, sudog to ready) or None; index -1-i means case i
    sends on a closed channel.
    """
    for i in pollorder:
        cs = cases[i]
        c: Chan[Any] = cs.c  # type: ignore[assignment]  # pollorder has no nil channel
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


async def _block(
    cases: tuple[Case, ...], lockorder: list[int], gp: G, locks: list[Any]
) -> tuple[int, Any, bool]:
    """Passes 2 and 3 of selectgo: enqueue on every channel in lockorder, park, clean up.

    Pass 2 enqueues the sudogs in ``lockorder`` (``gp.waiting`` is that list), so
    the first sudog a partner dequeues from a channel with several cases is a
    random one of them, as in Go.
    """
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
    for i in lockorder:
        cs = cases[i]
        c: Chan[Any] = cs.c  # type: ignore[assignment]
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
    idx = lockorder[sgs.index(won)]
    if cases[idx].send:
        if not won.success:
            raise ChanClosedError("send on closed channel")
        return idx, None, True
    v = won.elem
    if v is _RECV:
        v = None
    return idx, v, won.success
