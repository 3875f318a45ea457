"""Channel semantics (Go spec cases), FIFO/no-loss across procs, select."""

from __future__ import annotations

from collections import Counter

import pytest
from gmp_guard import no_leaked_threads  # noqa: F401
from hypothesis import given, settings
from hypothesis import strategies as st

import gmpworker as gmp
from gmpworker.runtime2 import getg

pytestmark = pytest.mark.timeout(30)


def run(main, procs: int = 1):  # type: ignore[no-untyped-def]
    return gmp.run(main, procs=procs)


# --- the Go spec table ---------------------------------------------------------


def test_unbuffered_send_blocks_until_receiver() -> None:
    async def main() -> list[str]:
        ch: gmp.Chan[int] = gmp.Chan()
        log: list[str] = []

        async def sender() -> None:
            await ch.send(1)
            log.append("sent")

        gmp.go(sender)
        await gmp.sleep(0.02)
        log.append("before recv")
        assert await ch.recv() == 1
        await gmp.sleep(0.01)
        return log

    assert run(main) == ["before recv", "sent"]


def test_buffered_fills_then_blocks() -> None:
    async def main() -> tuple[int, bool, int, int]:
        ch: gmp.Chan[int] = gmp.Chan(2)
        await ch.send(1)
        await ch.send(2)
        full = ch.try_send(3)
        return len(ch), full, ch.cap, await ch.recv() or 0

    assert run(main) == (2, False, 2, 1)


def test_recv_on_closed_returns_buffered_then_zero() -> None:
    async def main() -> list[tuple[object, bool]]:
        ch: gmp.Chan[int] = gmp.Chan(3)
        await ch.send(7)
        ch.close()
        return [await ch.recv2(), await ch.recv2(), await ch.recv2()]

    assert run(main) == [(7, True), (None, False), (None, False)]


def test_send_on_closed_and_double_close_raise() -> None:
    async def main() -> None:
        ch: gmp.Chan[int] = gmp.Chan(1)
        ch.close()
        with pytest.raises(gmp.ChanClosedError, match="send on closed channel"):
            await ch.send(1)
        with pytest.raises(gmp.ChanClosedError, match="close of closed channel"):
            ch.close()
        with pytest.raises(gmp.ChanClosedError):
            ch.try_send(1)

    run(main)


def test_close_wakes_all_receivers_and_blocked_senders_raise() -> None:
    async def main() -> tuple[list[tuple[object, bool]], int]:
        ch: gmp.Chan[int] = gmp.Chan()
        out: list[tuple[object, bool]] = []
        errors: list[BaseException] = []
        wg = gmp.WaitGroup()

        async def receiver() -> None:
            out.append(await ch.recv2())
            wg.done()

        async def sender() -> None:
            try:
                await ch.send(1)
            except gmp.ChanClosedError as e:
                errors.append(e)
            wg.done()

        wg.add(3)
        for _ in range(3):
            gmp.go(receiver)
        await gmp.sleep(0.02)
        ch.close()
        await wg.wait()
        ch2: gmp.Chan[int] = gmp.Chan()
        wg.add(2)
        ch = ch2
        gmp.go(sender)
        gmp.go(sender)
        await gmp.sleep(0.02)
        ch2.close()
        await wg.wait()
        return out, len(errors)

    out, nerr = run(main)
    assert out == [(None, False)] * 3
    assert nerr == 2


def test_try_recv_reports_readiness() -> None:
    async def main() -> list[tuple[object, bool, bool]]:
        ch: gmp.Chan[str] = gmp.Chan(1)
        r = [ch.try_recv()]
        ch.try_send("x")
        r.append(ch.try_recv())
        ch.close()
        r.append(ch.try_recv())
        return r

    assert run(main) == [(None, False, False), ("x", True, True), (None, False, True)]


def test_async_for_until_closed() -> None:
    async def main() -> list[int]:
        ch: gmp.Chan[int] = gmp.Chan(4)

        async def producer() -> None:
            for i in range(10):
                await ch.send(i)
            ch.close()

        gmp.go(producer)
        return [v async for v in ch]

    assert run(main) == list(range(10))


def test_negative_capacity_and_bad_type() -> None:
    with pytest.raises(gmp.ValuePanic, match="negative"):
        gmp.Chan(-1)
    with pytest.raises(TypeError):
        gmp.Chan(1.5)  # type: ignore[arg-type]


def test_full_buffer_receive_wakes_sender_in_order() -> None:
    # recv on a full buffer with a blocked sender: head comes out, the sender's
    # value goes into the freed slot (Go's runtime.recv).
    async def main() -> list[object]:
        ch: gmp.Chan[int] = gmp.Chan(2)
        await ch.send(1)
        await ch.send(2)
        gmp.go(ch.send, 3)
        await gmp.sleep(0.01)
        return [await ch.recv(), await ch.recv(), await ch.recv(), len(ch)]

    assert run(main) == [1, 2, 3, 0]


# --- FIFO and no loss under many producers/consumers --------------------------


async def _mpmc(nprod: int, ncons: int, per: int, cap: int) -> tuple[list[tuple[int, int]], bool]:
    ch: gmp.Chan[tuple[int, int]] = gmp.Chan(cap)
    got: list[list[tuple[int, int]]] = [[] for _ in range(ncons)]
    pw, cw = gmp.WaitGroup(), gmp.WaitGroup()

    async def producer(p: int) -> None:
        for i in range(per):
            await ch.send((p, i))
        pw.done()

    async def consumer(c: int) -> None:
        async for v in ch:
            got[c].append(v)
        cw.done()

    pw.add(nprod)
    cw.add(ncons)
    for c in range(ncons):
        gmp.go(consumer, c)
    for p in range(nprod):
        gmp.go(producer, p)
    await pw.wait()
    ch.close()
    await cw.wait()
    # Per consumer, each producer's items arrive in increasing order (FIFO).
    fifo = all(
        [i for (q, i) in items if q == p] == sorted(i for (q, i) in items if q == p)
        for items in got
        for p in range(nprod)
    )
    return [v for items in got for v in items], fifo


@pytest.mark.parametrize("procs", [1, 2, 3, 4])
@pytest.mark.parametrize("cap", [0, 1, 16])
def test_many_producers_consumers_no_loss_fifo(procs: int, cap: int) -> None:
    async def main() -> tuple[list[tuple[int, int]], bool]:
        return await _mpmc(8, 5, 200, cap)

    items, fifo = gmp.run(main, procs=procs)
    assert fifo
    assert Counter(items) == Counter((p, i) for p in range(8) for i in range(200))


@settings(max_examples=12, deadline=None)
@given(
    procs=st.integers(1, 4),
    nprod=st.integers(1, 6),
    ncons=st.integers(1, 6),
    per=st.integers(0, 60),
    cap=st.integers(0, 8),
)
def test_mpmc_property(procs: int, nprod: int, ncons: int, per: int, cap: int) -> None:
    async def main() -> tuple[list[tuple[int, int]], bool]:
        return await _mpmc(nprod, ncons, per, cap)

    items, fifo = gmp.run(main, procs=procs)
    assert fifo
    assert sorted(items) == sorted((p, i) for p in range(nprod) for i in range(per))


# --- select ------------------------------------------------------------------------


def test_select_default_and_ready_cases() -> None:
    async def main() -> list[tuple[int, object, bool]]:
        a: gmp.Chan[int] = gmp.Chan(1)
        b: gmp.Chan[int] = gmp.Chan(1)
        r = [await gmp.select(a.recv_case(), b.recv_case(), default=True)]
        await b.send(5)
        r.append(await gmp.select(a.recv_case(), b.recv_case(), default=True))
        r.append(await gmp.select(a.send_case(9), default=True))
        r.append(await gmp.select(a.send_case(10), default=True))  # full: default
        a.close()
        r.append(await gmp.select(a.recv_case(), b.recv_case()))  # buffered 9 first
        r.append(await gmp.select(a.recv_case(), b.recv_case()))  # closed
        return r

    assert run(main) == [
        (-1, None, False),
        (1, 5, True),
        (0, None, True),
        (-1, None, False),
        (0, 9, True),
        (0, None, False),
    ]


def test_select_blocks_until_one_case_and_only_one_fires() -> None:
    async def main() -> tuple[tuple[int, object, bool], int, int]:
        a: gmp.Chan[str] = gmp.Chan()
        b: gmp.Chan[str] = gmp.Chan()

        async def sender(c: gmp.Chan[str], v: str) -> None:
            c.try_send(v)  # only succeeds if a receiver (the select) is waiting

        h = gmp.go(gmp.select, a.recv_case(), b.recv_case())
        await gmp.sleep(0.02)
        gmp.go(sender, a, "A")
        gmp.go(sender, b, "B")
        res = await h
        await gmp.sleep(0.01)
        # the select's sudog on the other channel is gone: nobody is waiting
        return res, len(a.recvq), len(b.recvq)

    res, qa, qb = gmp.run(main, procs=2)
    assert res in ((0, "A", True), (1, "B", True))
    assert (qa, qb) == (0, 0)


def test_select_send_case_blocks_and_delivers() -> None:
    async def main() -> tuple[tuple[int, object, bool], object]:
        a: gmp.Chan[int] = gmp.Chan()
        nil = gmp.recv_case(None)  # a nil channel is never ready
        h = gmp.go(gmp.select, nil, a.send_case(42))
        await gmp.sleep(0.01)
        v = await a.recv()
        return await h, v

    assert run(main) == ((1, None, True), 42)


def test_select_send_on_closed_raises() -> None:
    async def main() -> None:
        a: gmp.Chan[int] = gmp.Chan()
        a.close()
        with pytest.raises(gmp.ChanClosedError):
            await gmp.select(a.send_case(1))

    run(main)


def test_select_fairness() -> None:
    # Both cases always ready: each must be chosen about half the time (random pollorder).
    async def main() -> Counter[int]:
        a: gmp.Chan[int] = gmp.Chan(1)
        b: gmp.Chan[int] = gmp.Chan(1)
        seen: Counter[int] = Counter()
        for _ in range(4000):
            a.try_send(1)
            b.try_send(2)
            i, _, _ = await gmp.select(a.recv_case(), b.recv_case())
            seen[i] += 1
        return seen

    seen = run(main)
    # Binomial(4000, 0.5): sd ~ 32; 6 sd bound.
    assert abs(seen[0] - 2000) < 200, seen


def test_select_no_cases_deadlocks() -> None:
    async def main() -> None:
        await gmp.select()

    with pytest.raises(gmp.Deadlock, match=r"goroutine 1 \[select \(no cases\)\]"):
        run(main)


def test_select_rejects_non_cases() -> None:
    async def main() -> None:
        await gmp.select(42)  # type: ignore[arg-type]

    with pytest.raises(TypeError, match="select"):
        run(main)


# --- a blocked select: which case a partner takes (selectgo's lockorder) ----------------
#
# Go's selectgo enqueues its sudogs in lockorder, a heap sort of the cases by channel
# started from the random pollorder, so a partner arriving after the select blocked
# dequeues a random one of several cases on the same channel. Bounds: Binomial(n, p) with
# n = 2000 and a +-10 percentage-point window is about 9 standard deviations for p = 1/2
# (false-failure probability below 1e-18); the three-way test uses n = 4000 and +-6 points
# for p = 1/4 (about 8.8 sd).

TRIALS = 2000


async def _until_queued(q: object, n: int) -> None:
    """Yield until the selecting G has queued its ``n`` sudogs (it is blocked)."""
    while len(q) < n:  # type: ignore[arg-type]
        await gmp.gosched()


def _blocked_select_wins(
    make_cases: object, partner: object, queue_of: object, ncases: int, trials: int
) -> Counter[int]:
    async def main() -> Counter[int]:
        wins: Counter[int] = Counter()
        for _ in range(trials):
            cases = make_cases()  # type: ignore[operator]
            h = gmp.go(gmp.select, *cases)
            await _until_queued(queue_of(), ncases)  # type: ignore[operator]
            await partner()  # type: ignore[operator]
            i, _, _ = await h
            wins[i] += 1
        return wins

    return run(main)  # type: ignore[no-any-return]


def test_blocked_select_two_send_cases_on_one_channel_win_equally() -> None:
    c: gmp.Chan[int] = gmp.Chan()
    wins = _blocked_select_wins(
        lambda: (c.send_case(1), c.send_case(0)), c.recv, lambda: c.sendq, 2, TRIALS
    )
    assert 0.4 * TRIALS < wins[0] < 0.6 * TRIALS, wins
    assert wins[0] + wins[1] == TRIALS


def test_blocked_select_two_recv_cases_on_one_channel_win_equally() -> None:
    c: gmp.Chan[int] = gmp.Chan()
    wins = _blocked_select_wins(
        lambda: (c.recv_case(), c.recv_case()), lambda: c.send(7), lambda: c.recvq, 2, TRIALS
    )
    assert 0.4 * TRIALS < wins[0] < 0.6 * TRIALS, wins
    assert wins[0] + wins[1] == TRIALS


def test_blocked_select_mixed_channels_partners_arriving_together() -> None:
    # The selecting G waits on a twice and on b once; the partner offers both channels
    # at the same moment (its own select, which polls in random order). So b wins half
    # the time and each case on a a quarter.
    a: gmp.Chan[int] = gmp.Chan()
    b: gmp.Chan[int] = gmp.Chan()
    n = 2 * TRIALS

    async def partner() -> None:
        await gmp.select(a.send_case(1), b.send_case(2))

    wins = _blocked_select_wins(
        lambda: (a.recv_case(), b.recv_case(), a.recv_case()), partner, lambda: a.recvq, 2, n
    )
    assert 0.44 * n < wins[1] < 0.56 * n, wins
    assert 0.19 * n < wins[0] < 0.31 * n, wins
    assert 0.19 * n < wins[2] < 0.31 * n, wins


def test_blocked_select_leaves_no_sudog_behind() -> None:
    async def main() -> tuple[int, int, int]:
        a: gmp.Chan[int] = gmp.Chan()
        b: gmp.Chan[int] = gmp.Chan()
        h = gmp.go(gmp.select, a.recv_case(), b.send_case(3), a.recv_case())
        await _until_queued(a.recvq, 2)
        await a.send(5)
        i, v, ok = await h
        assert ok and v == 5 and i in (0, 2)
        return len(a.recvq), len(b.sendq), len(a.sendq)

    assert run(main) == (0, 0, 0)


# --- operations that complete at once stay on the M (no scheduler round trip) -----------


def _switches_and_preemptions() -> tuple[int, int]:
    s = gmp.stats()
    return s["switches"], s["preemptions"]


def test_channel_operations_that_complete_at_once_do_not_switch() -> None:
    # A G is resumed by its M once per scheduler round trip ("switches"). None of these
    # operations can block, so none may trap; the only allowed switch is a preemption
    # (sysmon flags a G that ran 10 ms, which a loaded machine can cause).
    async def main() -> tuple[int, int]:
        ch: gmp.Chan[int] = gmp.Chan(64)
        a: gmp.Chan[int] = gmp.Chan(1)
        parked: gmp.Chan[int] = gmp.Chan()

        async def sender() -> None:
            await parked.send(1)

        gmp.go(sender)
        await gmp.sleep(0.001)  # the sender is parked now
        await gmp.gosched()  # clears a preemption flag sysmon set before the count starts
        s0, p0 = _switches_and_preemptions()
        v = await parked.recv()  # hand-off from a parked sender
        assert v == 1
        for i in range(64):
            await ch.send(i)
        for _ in range(32):
            await ch.recv()
        for _ in range(16):
            await ch.recv2()
        for _ in range(8):
            ch.try_recv()
            ch.try_send(0)
        got = 0
        async for _ in ch:
            got += 1
            if got == 8:
                break
        for _ in range(16):
            a.try_send(1)
            await gmp.select(a.recv_case(), gmp.recv_case(None))
            await gmp.select(a.send_case(2), default=True)
            await a.recv()
        s1, p1 = _switches_and_preemptions()
        return s1 - s0, p1 - p0

    switches, preemptions = run(main)
    assert switches <= preemptions, (switches, preemptions)


def test_ping_pong_round_trip_is_two_switches() -> None:
    rounds = 500

    async def main() -> tuple[int, int]:
        ping: gmp.Chan[int] = gmp.Chan()
        pong: gmp.Chan[int] = gmp.Chan()

        async def echo() -> None:
            async for v in ping:
                await pong.send(v)

        gmp.go(echo)
        await ping.send(0)
        await pong.recv()
        await gmp.gosched()  # clears a preemption flag sysmon set before the count starts
        s0, p0 = _switches_and_preemptions()
        for i in range(rounds):
            await ping.send(i)
            assert await pong.recv() == i
        s1, p1 = _switches_and_preemptions()
        ping.close()
        return s1 - s0, p1 - p0

    switches, preemptions = run(main)
    # Each round: main parks in pong.recv (the echo G runs), echo parks in ping.recv.
    assert 2 * rounds <= switches <= 2 * rounds + 2 * preemptions, (switches, preemptions)


def test_a_preempted_g_yields_at_an_immediate_operation_and_keeps_its_result() -> None:
    # sysmon's preemption flag makes the next channel operation yield the P once (to the
    # global queue) even when it completes at once; the operation's result survives it.
    async def main() -> tuple[list[object], int]:
        ch: gmp.Chan[int] = gmp.Chan(4)
        gp = getg()
        assert gp is not None
        out: list[object] = []
        s0 = gmp.stats()["switches"]
        gp.preempt = True
        await ch.send(1)
        gp.preempt = True
        await ch.send(2)
        gp.preempt = True
        out.append(await ch.recv())
        gp.preempt = True
        out.append(await ch.recv2())
        return out, gmp.stats()["switches"] - s0

    out, switches = run(main)
    assert out == [1, (2, True)]
    assert switches >= 4  # each operation went through the scheduler once


def test_a_channel_operation_is_awaited_once() -> None:
    async def main() -> None:
        ch: gmp.Chan[int] = gmp.Chan(1)
        ch.try_send(5)
        op = ch.recv()
        assert await op == 5
        with pytest.raises(RuntimeError):
            await op

    run(main)
