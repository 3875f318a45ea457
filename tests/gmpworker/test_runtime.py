"""Embedding: Runtime start/submit/stop, GHandle from foreign threads, cancel, panic_hook."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from gmp_guard import gmp_threads, no_leaked_threads  # noqa: F401

import gmpworker as gmp
from tests.support import wait_until

pytestmark = pytest.mark.timeout(30)


def _wait_for_gs(rt: gmp.Runtime, state: str, count: int = 1) -> None:
    """Wait until ``count`` Gs are in ``state`` (e.g. parked: ``waiting``)."""
    wait_until(lambda: rt.stats()["gs_by_state"].get(state, 0) >= count, 5, f"{count} G(s) {state}")


def test_submit_from_many_foreign_threads() -> None:
    async def square(x: int) -> int:
        await gmp.sleep(0.001)
        return x * x

    with gmp.Runtime(procs=2) as rt:
        results: dict[int, int] = {}

        def client(base: int) -> None:
            hs = [(i, rt.submit(square, i)) for i in range(base, base + 50)]
            hs += [(i, rt.submit(lambda v: v * v, i)) for i in range(base + 50, base + 100)]
            for i, h in hs:
                results[i] = h.result(timeout=10)

        ts = [threading.Thread(target=client, args=(k * 100,)) for k in range(8)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert results == {i: i * i for i in range(800)}
        assert rt.stats()["spawned"] == 800


def test_stop_leaves_no_threads_and_rejects_submit() -> None:
    rt = gmp.Runtime(procs=3).start()
    hs = [rt.submit(time.sleep, 0.01) for _ in range(10)]
    assert gmp_threads()
    rt.stop()
    assert all(h.done() for h in hs)
    assert gmp_threads() == []
    with pytest.raises(RuntimeError, match="stopped"):
        rt.submit(time.sleep, 0)
    rt.stop()  # idempotent


def test_stop_waits_for_running_goroutines() -> None:
    rt = gmp.Runtime(procs=1).start()

    async def slow() -> str:
        await gmp.sleep(0.1)
        return "finished"

    h = rt.submit(slow)
    rt.stop(wait=True, timeout=5)
    assert h.result(timeout=0) == "finished"


def test_stop_abandons_forever_parked_goroutine() -> None:
    rt = gmp.Runtime(procs=1).start()
    rt.submit(gmp.Chan[int]().recv)
    t = time.monotonic()
    rt.stop(timeout=60)
    # Nothing can wake it: stop abandons it instead of waiting out its 60 s time-out.
    assert time.monotonic() - t < 30


def test_result_timeout_done_callback_and_reraise() -> None:
    seen: list[Any] = []
    with gmp.Runtime(procs=2, panic_hook=lambda goid, exc: seen.append((goid, exc))) as rt:

        async def fail() -> None:
            await gmp.sleep(0.01)
            raise ValueError("bad task")

        h = rt.submit(fail)
        h.add_done_callback(lambda hh: seen.append(("cb", hh.goid)))
        with pytest.raises(TimeoutError):
            h.result(timeout=0.001)
        with pytest.raises(ValueError, match="bad task") as ei:
            h.result(timeout=5)
        assert "fail" in "".join(__import__("traceback").format_tb(ei.value.__traceback__))
        done_cb: list[int] = []
        h.add_done_callback(lambda hh: done_cb.append(hh.goid))  # already done: immediate
        assert done_cb == [h.goid]
    assert (h.goid, ei.value) in seen
    assert ("cb", h.goid) in seen


def test_panic_without_hook_is_printed(capfd: Any) -> None:
    with gmp.Runtime(procs=1) as rt:
        h = rt.submit(lambda: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            h.result(timeout=5)
    err = capfd.readouterr().err
    assert "ZeroDivisionError" in err and f"goroutine {h.goid}" in err


def test_cancel_parked_goroutine() -> None:
    with gmp.Runtime(procs=2) as rt:
        ch: gmp.Chan[int] = gmp.Chan()
        cleaned: list[bool] = []

        async def waiter() -> None:
            try:
                await ch.recv()
            finally:
                cleaned.append(True)

        h = rt.submit(waiter)
        _wait_for_gs(rt, "waiting")
        assert h.cancel()
        with pytest.raises(gmp.Cancelled):
            h.result(timeout=5)
        assert cleaned == [True]
        assert not ch.try_send(1)  # its sudog left the channel's queue
        assert not h.cancel()  # already done


@pytest.mark.parametrize("where", ["sleep", "select", "mutex", "handle"])
def test_cancel_in_various_park_points(where: str) -> None:
    with gmp.Runtime(procs=1) as rt:
        mu = gmp.Mutex()
        other = rt.submit(gmp.Chan[int]().recv)

        async def body() -> None:
            if where == "sleep":
                await gmp.sleep(30)
            elif where == "select":
                await gmp.select(gmp.Chan[int]().recv_case(), gmp.after(30).recv_case())
            elif where == "mutex":
                await mu.lock()
                await mu.lock()
            else:
                await other

        h = rt.submit(body)
        _wait_for_gs(rt, "waiting", 2)  # other and body
        h.cancel()
        with pytest.raises(gmp.Cancelled):
            h.result(timeout=5)
        other.cancel()


def test_cancel_running_syscall_raises_when_it_returns() -> None:
    with gmp.Runtime(procs=1) as rt:
        after: list[str] = []

        async def body() -> None:
            await gmp.syscall(time.sleep, 0.1)
            after.append("continued")

        h = rt.submit(body)
        _wait_for_gs(rt, "syscall")
        h.cancel()
        with pytest.raises(gmp.Cancelled):
            h.result(timeout=5)
        assert after == []


class _Nudge(Exception):
    """What the throw tests deliver into a G."""


@pytest.mark.parametrize("where", ["recv", "sleep", "syscall"])
def test_throw_is_delivered_once_then_the_g_awaits_normally(where: str) -> None:
    with gmp.Runtime(procs=2) as rt:
        ch: gmp.Chan[int] = gmp.Chan()
        caught: list[BaseException] = []

        async def body() -> str:
            try:
                if where == "recv":
                    await ch.recv()
                elif where == "sleep":
                    await gmp.sleep(30)
                else:
                    await gmp.syscall(time.sleep, 0.2)
            except _Nudge as e:
                caught.append(e)
            await gmp.sleep(0.01)  # one-shot: later park points do not raise it again
            return f"got {await ch.recv()}"

        h = rt.submit(body)
        _wait_for_gs(rt, "syscall" if where == "syscall" else "waiting")
        nudge = _Nudge("once")
        assert h.throw(nudge)
        rt.submit(ch.send, 7)  # a parked recv's sudog must be gone, or this is lost
        assert h.result(timeout=5) == "got 7"
        assert caught == [nudge]
        assert not h.throw(_Nudge("late"))  # already done


def test_throw_reaches_a_runnable_g_at_its_next_trap() -> None:
    with gmp.Runtime(procs=1) as rt:
        ch: gmp.Chan[int] = gmp.Chan(1)
        started = threading.Event()

        async def spinner() -> int:
            rounds = 0
            try:
                while True:  # never parks: the buffer always has room / a value
                    await ch.send(rounds)
                    await ch.recv()
                    rounds += 1
                    if rounds == 100:
                        started.set()  # it is spinning now
            except _Nudge:
                return rounds

        h = rt.submit(spinner)
        assert started.wait(5)
        assert h.throw(_Nudge("stop spinning"))
        assert h.result(timeout=5) >= 100  # stopped while spinning, not before


def test_uncaught_throw_ends_the_g_and_cancel_stays_sticky_after_it() -> None:
    with gmp.Runtime(procs=1, panic_hook=lambda goid, exc: None) as rt:
        ch: gmp.Chan[int] = gmp.Chan()
        h = rt.submit(ch.recv)
        _wait_for_gs(rt, "waiting")
        assert h.throw(_Nudge("uncaught"))
        with pytest.raises(_Nudge, match="uncaught"):
            h.result(timeout=5)

        seen: list[str] = []

        async def stubborn() -> None:
            for _ in range(3):
                try:
                    await ch.recv()
                except (_Nudge, gmp.Cancelled) as e:
                    seen.append(type(e).__name__)
            await ch.recv()

        h = rt.submit(stubborn)
        _wait_for_gs(rt, "waiting")
        assert h.throw(_Nudge("first"))
        assert h.cancel()  # the pending throw comes first, then Cancelled at every park
        with pytest.raises(gmp.Cancelled):
            h.result(timeout=5)
        assert seen == ["_Nudge", "Cancelled", "Cancelled"]


def test_throw_needs_an_exception_instance() -> None:
    with gmp.Runtime(procs=1) as rt:
        h = rt.submit(gmp.sleep, 30)
        with pytest.raises(TypeError, match="exception instance"):
            h.throw(ValueError)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="exception instance"):
            h.throw("stop")  # type: ignore[arg-type]
        assert h.cancel()
        with pytest.raises(gmp.Cancelled):
            h.result(timeout=5)


def test_submit_bad_input_and_lifecycle_errors() -> None:
    rt = gmp.Runtime(procs=1)
    with pytest.raises(RuntimeError, match="start"):
        rt.submit(time.sleep, 0)
    rt.start()
    try:
        with pytest.raises(TypeError):
            rt.submit(None)  # type: ignore[arg-type]
        with pytest.raises(RuntimeError, match="already started"):
            rt.start()
    finally:
        rt.stop()
    with pytest.raises(ValueError):
        gmp.Runtime(procs=0)


def test_stats_outside_goroutine_uses_running_runtime() -> None:
    with gmp.Runtime(procs=2) as rt:
        rt.submit(time.sleep, 0).result(timeout=5)
        st = gmp.stats()
        assert st["gomaxprocs"] == 2
        assert st["spawned"] == 1


def test_cancel_goroutine_blocked_forever_in_select() -> None:
    with gmp.Runtime(procs=1) as rt:

        async def body() -> None:
            await gmp.select(gmp.recv_case(None))

        h = rt.submit(body)
        _wait_for_gs(rt, "waiting")
        assert "status=4(select)" in rt.schedtrace(detailed=True)
        h.cancel()
        h.cancel()
        with pytest.raises(gmp.Cancelled):
            h.result(timeout=5)


def test_abandoned_goroutines_release_their_waiters() -> None:
    rt = gmp.Runtime(procs=1).start()
    h = rt.submit(gmp.Chan[int]().recv)
    _wait_for_gs(rt, "waiting")
    rt.stop(wait=False)
    with pytest.raises(gmp.Cancelled):
        h.result(timeout=5)
    assert h.done()
