"""Timers: sleep ordering, after, Timer stop/reset, Ticker."""

from __future__ import annotations

import itertools
import time

import pytest
from gmp_guard import no_leaked_threads  # noqa: F401

import gmpworker as gmp

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("procs", [1, 3])
def test_sleepers_wake_in_deadline_order(procs: int) -> None:
    async def main() -> list[tuple[float, float, int]]:
        out: gmp.Chan[tuple[float, float, int]] = gmp.Chan(20)

        async def sleeper(i: int) -> None:
            deadline = time.monotonic() + 0.02 * i
            await gmp.sleep(0.02 * i)
            await out.send((time.monotonic(), deadline, i))

        for i in reversed(range(1, 11)):
            gmp.go(sleeper, i)
        return [await out.recv() or (0.0, 0.0, 0) for _ in range(10)]

    woken = gmp.run(main, procs=procs)
    assert all(w >= d for w, d, _ in woken)  # never early
    order = [i for _, _, i in woken]
    # Timers fire in deadline order. Gs whose timers had both expired by the time the
    # first of them woke may run in either order (each goready takes runnext), so an
    # inversion is allowed only when the earlier deadline had passed by then: a rule of
    # the scheduler, not a time window, so a loaded machine cannot break it.
    for (w1, _, i1), (_, d2, i2) in itertools.pairwise(woken):
        assert i1 < i2 or d2 <= w1, order
    assert sorted(order) == list(range(1, 11))


def test_sleep_duration_lower_bound_and_zero() -> None:
    async def main() -> tuple[float, float]:
        t = time.monotonic()
        await gmp.sleep(0.05)
        d = time.monotonic() - t
        t = time.monotonic()
        await gmp.sleep(0)
        await gmp.sleep(-1)
        return d, time.monotonic() - t

    slept, zero = gmp.run(main, procs=1)
    assert slept >= 0.05  # never early
    # sleep(0) and a negative sleep park on no timer; the bound only catches a lost
    # wakeup (a hang), it says nothing about speed.
    assert zero < 10


def test_after_and_select_timeout() -> None:
    async def main() -> tuple[int, int]:
        never: gmp.Chan[int] = gmp.Chan()
        i, _, _ = await gmp.select(never.recv_case(), gmp.after(0.02).recv_case())
        soon: gmp.Chan[int] = gmp.Chan(1)
        soon.try_send(1)
        j, _, _ = await gmp.select(soon.recv_case(), gmp.after(1).recv_case())
        return i, j

    assert gmp.run(main, procs=1) == (1, 0)


def test_timer_stop_and_reset() -> None:
    async def main() -> tuple[bool, bool, bool, bool, bool]:
        t = gmp.Timer(0.02)
        stopped = t.stop()
        await gmp.sleep(0.05)
        fired_after_stop = t.c.try_recv()[2]
        again = t.stop()
        t.reset(0.01)
        v, ok = await t.c.recv2()
        t2 = gmp.Timer(10)
        was_active = t2.reset(0.01)
        await t2.c.recv()
        return stopped, fired_after_stop, again, ok and isinstance(v, float), was_active

    assert gmp.run(main, procs=1) == (True, False, False, True, True)


def test_ticker_ticks_and_stops() -> None:
    async def main() -> tuple[int, bool]:
        tk = gmp.Ticker(0.005)
        n = 0
        for _ in range(5):
            await tk.c.recv()
            n += 1
        tk.stop()
        while tk.c.try_recv()[2]:  # drain a tick that was already buffered
            pass
        await gmp.sleep(0.03)
        return n, tk.c.try_recv()[2]

    assert gmp.run(main, procs=2) == (5, False)
    with pytest.raises(ValueError):
        gmp.run(lambda: gmp.Ticker(0))  # type: ignore[arg-type,return-value]


def test_slow_ticker_reader_drops_ticks() -> None:
    async def main() -> int:
        tk = gmp.Ticker(0.002)
        await gmp.sleep(0.05)
        n = 0
        while tk.c.try_recv()[2]:
            n += 1
        tk.stop()
        return n

    assert gmp.run(main, procs=1) == 1  # the channel buffers one tick
