"""sync primitives and context."""

from __future__ import annotations

import time

import pytest
from gmp_guard import no_leaked_threads  # noqa: F401

import gmpworker as gmp
from gmpworker import context

pytestmark = pytest.mark.timeout(30)


def test_waitgroup_waits_for_all_and_rejects_negative() -> None:
    async def main() -> list[int]:
        wg = gmp.WaitGroup()
        done: list[int] = []

        async def worker(i: int) -> None:
            await gmp.sleep(0.001 * (i % 5))
            done.append(i)
            wg.done()

        wg.add(50)
        for i in range(50):
            gmp.go(worker, i)
        await wg.wait()
        await wg.wait()  # zero counter: returns at once
        with pytest.raises(gmp.ValuePanic, match="negative WaitGroup counter"):
            wg.done()
        return sorted(done)

    assert gmp.run(main, procs=3) == list(range(50))


@pytest.mark.parametrize("procs", [1, 3])
def test_mutex_mutual_exclusion(procs: int) -> None:
    async def main() -> tuple[int, int]:
        mu = gmp.Mutex()
        wg = gmp.WaitGroup()
        counter = [0]
        inside = [0]
        worst = [0]

        async def worker() -> None:
            for _ in range(100):
                async with mu:
                    inside[0] += 1
                    worst[0] = max(worst[0], inside[0])
                    v = counter[0]
                    await gmp.gosched()  # try to interleave inside the critical section
                    counter[0] = v + 1
                    inside[0] -= 1
            wg.done()

        wg.add(8)
        for _ in range(8):
            gmp.go(worker)
        await wg.wait()
        return counter[0], worst[0]

    assert gmp.run(main, procs=procs) == (800, 1)


def test_mutex_trylock() -> None:
    async def main() -> tuple[bool, bool, bool]:
        mu = gmp.Mutex()
        a = mu.try_lock()
        b = mu.try_lock()
        mu.unlock()
        return a, b, mu.locked()

    assert gmp.run(main, procs=1) == (True, False, False)


def test_mutex_starvation_mode_hands_off_fifo() -> None:
    # A waiter blocked > 1 ms switches the mutex to starvation mode: the unlocker
    # hands ownership to the first waiter, so a barging G cannot steal it.
    async def main() -> list[str]:
        mu = gmp.Mutex()
        order: list[str] = []
        await mu.lock()

        async def waiter(name: str) -> None:
            await mu.lock()
            order.append(name)
            mu.unlock()

        gmp.go(waiter, "w1")
        await gmp.sleep(0.005)
        gmp.go(waiter, "w2")
        await gmp.sleep(0.005)
        mu.unlock()  # w1 wakes, finds it stolen? no: starving waiters get FIFO hand-off
        await mu.lock()
        order.append("main")
        mu.unlock()
        await gmp.sleep(0.01)
        return order

    order = gmp.run(main, procs=1)
    assert order.index("w1") < order.index("w2")
    assert sorted(order) == ["main", "w1", "w2"]


def test_rwmutex_readers_share_writers_exclude() -> None:
    async def main() -> tuple[int, bool]:
        rw = gmp.RWMutex()
        readers = [0]
        max_readers = [0]
        writer_alone = [True]
        wg = gmp.WaitGroup()

        async def reader() -> None:
            await rw.rlock()
            readers[0] += 1
            max_readers[0] = max(max_readers[0], readers[0])
            await gmp.sleep(0.01)
            readers[0] -= 1
            rw.runlock()
            wg.done()

        async def writer() -> None:
            async with rw:
                if readers[0]:
                    writer_alone[0] = False
                await gmp.sleep(0.005)
                if readers[0]:
                    writer_alone[0] = False
            wg.done()

        wg.add(12)
        for i in range(10):
            gmp.go(reader)
            if i == 5:
                gmp.go(writer)
        gmp.go(writer)
        await wg.wait()
        return max_readers[0], writer_alone[0]

    max_readers, alone = gmp.run(main, procs=2)
    assert max_readers > 1
    assert alone


def test_once_runs_once_and_waits() -> None:
    async def main() -> tuple[int, list[int]]:
        once = gmp.Once()
        calls = [0]
        seen: list[int] = []

        async def init() -> None:
            await gmp.sleep(0.01)
            calls[0] += 1

        async def user(i: int) -> None:
            await once.do(init)
            seen.append(calls[0])

        hs = [gmp.go(user, i) for i in range(10)]
        for h in hs:
            await h
        await once.do(lambda: calls.__setitem__(0, 99))
        return calls[0], seen

    calls, seen = gmp.run(main, procs=2)
    assert calls == 1
    assert seen == [1] * 10  # nobody returned before init finished


def test_cond_signal_and_broadcast() -> None:
    async def main() -> tuple[list[int], int]:
        mu = gmp.Mutex()
        cond = gmp.Cond(mu)
        ready = [0]
        woken: list[int] = []
        arrivals: list[int] = []

        async def waiter(i: int) -> None:
            await mu.lock()
            arrivals.append(i)
            while ready[0] == 0:
                await cond.wait()
            woken.append(i)
            ready[0] -= 1 if ready[0] < 100 else 0
            mu.unlock()

        for i in range(5):
            gmp.go(waiter, i)
        await gmp.sleep(0.01)
        await mu.lock()
        ready[0] = 1
        cond.signal()
        mu.unlock()
        await gmp.sleep(0.01)
        first = list(woken)
        await mu.lock()
        ready[0] = 100
        cond.broadcast()
        mu.unlock()
        await gmp.sleep(0.02)
        return first == arrivals[:1], len(woken)

    first_is_longest_waiter, total = gmp.run(main, procs=2)
    assert first_is_longest_waiter  # signal wakes the longest waiter
    assert total == 5


def test_context_cancel_propagates_to_children() -> None:
    async def main() -> list[object]:
        root = context.background()
        parent, cancel = context.with_cancel(root)
        child, _ = context.with_cancel(parent)
        vctx = context.with_value(child, "k", "v")
        before = [child.err(), vctx.value("k")]
        cancel()
        _, ok = await child.done().recv2()
        await vctx.done().recv()
        late, _ = context.with_cancel(parent)  # derived from a cancelled parent
        cancel()  # idempotent
        return [*before, ok, child.err(), late.err(), root.err()]

    assert gmp.run(main, procs=1) == [
        None,
        "v",
        False,
        context.Canceled,
        context.Canceled,
        None,
    ]


def test_context_timeout_in_select() -> None:
    async def main() -> tuple[int, object, float]:
        t = time.monotonic()
        ctx, cancel = context.with_timeout(context.background(), 0.03)
        work: gmp.Chan[int] = gmp.Chan()
        i, _, _ = await gmp.select(work.recv_case(), ctx.done().recv_case())
        cancel()
        return i, ctx.err(), time.monotonic() - t

    i, err, took = gmp.run(main, procs=2)
    assert i == 1
    assert err is context.DeadlineExceeded
    assert took >= 0.03  # the deadline, not before; the time after it is the machine's


def test_context_deadline_inherits_earlier_parent() -> None:
    async def main() -> tuple[bool, object]:
        parent, _ = context.with_timeout(context.background(), 0.02)
        child, cancel = context.with_timeout(parent, 10)
        dl, ok = child.deadline()
        await child.done().recv()
        cancel()
        return ok and dl is not None and dl - time.monotonic() < 1, child.err()

    assert gmp.run(main, procs=1) == (True, context.DeadlineExceeded)
