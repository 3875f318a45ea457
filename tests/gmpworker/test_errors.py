"""The error model (gmpworker/errors.py): every Go panic is a recoverable ``GoPanic``,
every Go fatal error an unrecoverable ``FatalError``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from gmp_guard import no_leaked_threads  # noqa: F401

import gmpworker as gmp

pytestmark = pytest.mark.timeout(30)


async def _send_on_closed() -> None:
    ch: gmp.Chan[int] = gmp.Chan(1)
    ch.close()
    await ch.send(1)


async def _try_send_on_closed() -> None:
    ch: gmp.Chan[int] = gmp.Chan(1)
    ch.close()
    ch.try_send(1)


async def _select_send_on_closed() -> None:
    ch: gmp.Chan[int] = gmp.Chan()
    ch.close()
    await gmp.select(ch.send_case(1), gmp.recv_case(None))


async def _blocked_send_then_closed() -> None:
    ch: gmp.Chan[int] = gmp.Chan()

    async def closer() -> None:
        ch.close()

    gmp.go(closer)
    await ch.send(1)  # parks; the close wakes it with the panic


async def _close_of_closed() -> None:
    ch: gmp.Chan[int] = gmp.Chan()
    ch.close()
    ch.close()


async def _makechan_negative() -> None:
    gmp.Chan(-1)


async def _negative_waitgroup() -> None:
    wg = gmp.WaitGroup()
    wg.add(1)
    wg.done()
    wg.done()


async def _ticker_non_positive() -> None:
    gmp.Ticker(0)


PANICS: list[tuple[Callable[[], Awaitable[None]], type[gmp.GoPanic], str]] = [
    (_send_on_closed, gmp.ChanClosedError, "send on closed channel"),
    (_try_send_on_closed, gmp.ChanClosedError, "send on closed channel"),
    (_select_send_on_closed, gmp.ChanClosedError, "send on closed channel"),
    (_blocked_send_then_closed, gmp.ChanClosedError, "send on closed channel"),
    (_close_of_closed, gmp.ChanClosedError, "close of closed channel"),
    (_makechan_negative, gmp.ValuePanic, "makechan: size out of range"),
    (_negative_waitgroup, gmp.ValuePanic, "sync: negative WaitGroup counter"),
    (_ticker_non_positive, gmp.ValuePanic, "non-positive interval for Ticker"),
]


@pytest.mark.parametrize(("op", "kind", "message"), PANICS, ids=[p[0].__name__ for p in PANICS])
def test_panic_is_recoverable(
    op: Callable[[], Awaitable[None]], kind: type[gmp.GoPanic], message: str
) -> None:
    """``except Exception`` (Go's recover) catches it and the program carries on."""

    async def main() -> tuple[str, str]:
        try:
            await op()
        except Exception as e:  # recover()
            caught = e
        else:
            raise AssertionError("no panic")
        assert isinstance(caught, kind) and isinstance(caught, gmp.GoPanic)
        await gmp.sleep(0.001)  # the runtime still schedules this G afterwards
        return type(caught).__name__, str(caught)

    name, text = gmp.run(main, procs=1)
    assert name == kind.__name__
    assert message in text


@pytest.mark.parametrize(("op", "kind", "message"), PANICS, ids=[p[0].__name__ for p in PANICS])
def test_unrecovered_panic_ends_run_with_it(
    op: Callable[[], Awaitable[None]], kind: type[gmp.GoPanic], message: str
) -> None:
    async def main() -> None:
        async def g() -> None:
            await op()

        gmp.go(g)
        await gmp.sleep(5)  # the panic in the other G ends the program first

    with pytest.raises(kind, match=message):
        gmp.run(main, procs=1)


def test_value_panics_are_also_value_errors() -> None:
    assert issubclass(gmp.ValuePanic, ValueError)
    with pytest.raises(ValueError):
        gmp.Chan(-3)


async def _unlock_of_unlocked_mutex() -> None:
    gmp.Mutex().unlock()


async def _unlock_of_unlocked_rwmutex() -> None:
    gmp.RWMutex().unlock()


async def _runlock_of_unlocked_rwmutex() -> None:
    gmp.RWMutex().runlock()


FATALS: list[tuple[Callable[[], Awaitable[None]], str]] = [
    (_unlock_of_unlocked_mutex, "sync: unlock of unlocked mutex"),
    (_unlock_of_unlocked_rwmutex, "sync: Unlock of unlocked RWMutex"),
    (_runlock_of_unlocked_rwmutex, "sync: RUnlock of unlocked RWMutex"),
]


@pytest.mark.parametrize(("op", "message"), FATALS, ids=[f[0].__name__ for f in FATALS])
def test_fatal_error_is_not_recoverable(op: Callable[[], Awaitable[None]], message: str) -> None:
    """``except Exception`` does not catch it, and even a G that catches it with
    ``except BaseException`` does not keep the program alive: run() raises it."""
    seen: list[str] = []

    async def main() -> str:
        try:
            await op()
        except Exception:  # recover() cannot stop a fatal error
            seen.append("recovered")
        except BaseException as e:
            seen.append(type(e).__name__)
        await gmp.sleep(0)  # the next park point: the runtime is exiting
        return "survived"

    with pytest.raises(gmp.FatalError, match=message):
        gmp.run(main, procs=1)
    assert seen == ["FatalError"]


def test_fatal_error_in_an_embedded_runtime_reaches_only_the_g() -> None:
    """A library cannot kill the process: the G gets the FatalError, the runtime goes on."""
    hooked: list[BaseException] = []
    rt = gmp.Runtime(procs=1, panic_hook=lambda goid, exc: hooked.append(exc)).start()
    try:
        h = rt.submit(_unlock_of_unlocked_mutex)
        with pytest.raises(gmp.FatalError, match="unlock of unlocked mutex"):
            h.result(timeout=10)

        async def after() -> int:
            await gmp.sleep(0)
            return 7

        assert rt.submit(after).result(timeout=10) == 7
    finally:
        rt.stop(wait=True, timeout=10)
    assert [type(e) for e in hooked] == [gmp.FatalError]


def test_deadlock_is_a_fatal_error() -> None:
    async def main() -> Any:
        return await gmp.Chan().recv()

    with pytest.raises(gmp.Deadlock) as ei:
        gmp.run(main, procs=1)
    assert isinstance(ei.value, gmp.FatalError)
    assert not isinstance(ei.value, Exception)
    assert "all goroutines are asleep - deadlock!" in str(ei.value)
