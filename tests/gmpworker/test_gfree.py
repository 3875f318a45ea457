"""Finished Gs are freed by reference counting; the current G is found per M thread."""

from __future__ import annotations

import gc
import threading
import weakref

import pytest
from gmp_guard import no_leaked_threads  # noqa: F401

import gmpworker as gmp
from gmpworker.runtime2 import G, getg

pytestmark = pytest.mark.timeout(30)


def _live_gs() -> int:
    return sum(1 for o in gc.get_objects() if type(o) is G)


@pytest.mark.parametrize("procs", [1, 2])
def test_finished_gs_are_not_cyclic_garbage(procs: int) -> None:
    # Gs that parked on a channel (sudog), slept (timer) and used contextvars must
    # all be freed by refcounting when they exit: no G is left for the cyclic GC.
    async def worker(ch: gmp.Chan[int], wg: gmp.WaitGroup) -> None:
        await gmp.sleep(0.0001)
        await ch.recv()
        wg.done()

    async def main() -> int:
        ch: gmp.Chan[int] = gmp.Chan()
        wg = gmp.WaitGroup()
        wg.add(500)
        for _ in range(500):
            gmp.go(worker, ch, wg)
        for i in range(500):
            await ch.send(i)
        await wg.wait()
        await gmp.sleep(0.01)  # the last workers finish exiting
        return _live_gs()

    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what the collection finds stays in gc.garbage
    try:
        live = gmp.run(main, procs=procs)
        gc.collect()
        cyclic = {type(o).__name__ for o in gc.garbage}
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert live <= 2  # main itself, and at most one G still between goexit steps
    assert _live_gs() == 0
    # The runtime's own records (schedt <-> P <-> M) are cyclic and vary with the number
    # of Ms; no G, sudog, coroutine or timer of the 500 finished Gs may be among them.
    assert not cyclic & {"G", "sudog", "coroutine", "Timer_", "chanop", "Context"}, cyclic


def test_dead_g_is_freed_once_its_handle_is_dropped() -> None:
    refs: list[weakref.ref[gmp.GHandle]] = []

    async def child() -> int:
        return 7

    async def main() -> int:
        h = gmp.go(child)
        refs.append(weakref.ref(h))
        return await h  # type: ignore[no-any-return]

    gc.disable()
    try:
        assert gmp.run(main, procs=1) == 7
        assert refs[0]() is None  # no collection needed
    finally:
        gc.enable()


def test_getg_is_none_outside_goroutines_and_per_thread() -> None:
    seen: dict[str, object] = {}

    def foreign() -> None:
        seen["foreign"] = getg()

    async def main() -> bool:
        me = getg()
        t = threading.Thread(target=foreign)
        t.start()
        t.join()
        in_syscall = await gmp.syscall(getg)  # a syscall runs on behalf of its G
        return me is not None and me.goid == gmp.current_goid() and in_syscall is me

    assert gmp.run(main, procs=2) is True
    assert seen["foreign"] is None
    assert getg() is None  # run() has returned: this thread is no M any more
    with pytest.raises(RuntimeError, match="outside a goroutine"):
        gmp.go(gmp.sleep, 0)
