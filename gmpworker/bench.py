"""Side-by-side benchmark of gmpworker against the Python alternatives (issue 16).

Run ``python -m gmpworker.bench [--quick] [--json FILE]``. Every row is measured in
the same run, so the ratio column (against the asyncio row of each section) compares
like with like on whatever machine runs it. Lower is better in every section. Both
gmpworker implementations appear: the native core (``gmpworker._core``) and the pure
runtime (``GMPWORKER_PURE=1``); each of their samples runs in a child process with
that setting (``--child``), timed inside the runtime like every other row. Progress
goes to stderr; the single table goes to stdout.

Sections:

- ping-pong round trip: one value there and back between two parties;
- spawn + run + exit: start N trivial tasks, wait for all of them, cost per task;
- memory per parked G: tracemalloc growth per task blocked on a channel/queue receive;
- blocking-call isolation: p99 lateness of a 1 ms ticker while 64 Gs block 50 ms each.

Only the standard library is needed; uvloop is measured when importable. Timings are
taken inside the runtime (start-up excluded); the rows of one section use the same n.
Repeats are interleaved across rows (round 1 measures every row once, then round 2...)
so a burst of load from other processes does not bias one row, and the median is
reported with the min..max spread. The storm's ticker lateness is the gap between
consecutive ticks minus the interval; with about 70 ticks per storm its p99 is close
to the worst stall, so that row takes the median over the repeats.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import importlib
import importlib.util
import itertools
import json
import math
import os
import platform
import queue
import statistics
import subprocess
import sys
import threading
import time
import traceback
import tracemalloc
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict, dataclass, field
from typing import Any

import gmpworker as gmp

TICK_S = 0.001  # the ticker's interval
BLOCK_S = 0.05  # how long each storm G blocks
WARM_TICKS = 5  # ticks received before the storm starts (ticker phase settles)
GO_STACK_MIN = 2048  # runtime/stack.go _StackMin since Go 1.4
KB = 1024

GMP_API = ("run", "go", "Chan", "WaitGroup", "sleep", "gosched", "syscall", "Ticker")


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class Section:
    """A group of rows measuring the same thing in the same unit."""

    key: str
    title: str
    unit: str
    baseline: str  # key of the asyncio row the ratio column divides by


@dataclass(frozen=True)
class Case:
    """One row to measure: ``measure(n)`` returns one sample in the section's unit."""

    key: str
    section: str
    label: str
    measure: Callable[[int], float]
    n_full: int
    n_quick: int
    repeats_full: int
    note: str
    needs: Callable[[], str | None] = lambda: None  # reason the row cannot run, or None


@dataclass
class Row:
    """A measured row, as printed and as written by ``--json``."""

    key: str
    section: str
    label: str
    unit: str
    n: int
    repeats: int
    note: str
    samples: list[float] = field(default_factory=list)
    value: float | None = None
    ratio: float | None = None
    error: str | None = None
    skipped: bool = False  # not measurable here (error says why), as opposed to failed


@dataclass(frozen=True)
class Verdict:
    """One issue target checked against one row."""

    target: str
    row: str
    value: str
    met: bool | None  # None: not measured


# --------------------------------------------------------------------------- helpers


def gmp_missing() -> str | None:
    """Why the gmpworker rows cannot run (its public API is incomplete), or None."""
    absent = [name for name in GMP_API if not hasattr(gmp, name)]
    if absent:
        return f"gmpworker unavailable: no {', '.join(absent)} in {gmp.__name__}"
    return None


def native_missing() -> str | None:
    """Why the native-core rows cannot run (gmpworker._core not built), or None."""
    if importlib.util.find_spec("gmpworker._core") is None:
        return "gmpworker._core is not built (pip install builds it when gcc is there)"
    return gmp_missing()


def uvloop_missing() -> str | None:
    """Why the uvloop row cannot run, or None."""
    try:
        importlib.import_module("uvloop")
    except ImportError:
        return "uvloop not installed"
    return None


# The clocks a timed row can use: wall time (every section), and CPU time of the whole
# process (all its threads) for the "CPU time" sections, which load from other processes
# on a shared machine does not inflate.
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def per_op_us(elapsed: float, n: int) -> float:
    """Seconds for ``n`` operations, as microseconds per operation."""
    return elapsed / n * 1e6


def warmup_count(n: int) -> int:
    """Untimed iterations before a timed loop of ``n``."""
    return max(1, min(n // 10, 1000))


def p99(values: list[float]) -> float:
    """The 99th percentile (nearest rank) of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


class Storm:
    """When the blocking storm ran, written by the storm G and read by the ticker."""

    __slots__ = ("done", "end", "start")

    def __init__(self) -> None:
        self.start = math.inf
        self.end = math.inf
        self.done = False


def storm_lateness_ms(ticks: list[float], storm: Storm) -> float:
    """p99 lateness (ms) of the ticks whose gap overlaps the storm.

    Lateness of a tick is the gap since the previous tick minus the interval (at
    least 0): robust to tickers that drop missed ticks, as Go's does.
    """
    late = [
        max(0.0, (cur - prev) - TICK_S) * 1e3
        for prev, cur in itertools.pairwise(ticks)
        if cur > storm.start and prev < storm.end
    ]
    if not late:
        raise RuntimeError("no tick was received during the storm")
    return p99(late)


def settle() -> None:
    """Collect garbage so one row's leftovers do not bill the next."""
    gc.collect()


# --------------------------------------------------------------------------- ping-pong


def pingpong_processes(n: int) -> float:
    """Round trip (µs) of one byte between two processes over two pipes (os.fork)."""
    down_r, down_w = os.pipe()
    up_r, up_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: echo until EOF
        status = 0
        try:
            os.close(down_w)
            os.close(up_r)
            while msg := os.read(down_r, 1):
                os.write(up_w, msg)
        except BaseException:
            status = 1
        finally:
            os._exit(status)
    os.close(down_r)
    os.close(up_w)
    try:
        for _ in range(warmup_count(n)):
            os.write(down_w, b"x")
            os.read(up_r, 1)
        t0 = time.perf_counter()
        for _ in range(n):
            os.write(down_w, b"x")
            os.read(up_r, 1)
        elapsed = time.perf_counter() - t0
    finally:
        os.close(down_w)
        os.close(up_r)
        os.waitpid(pid, 0)
    return per_op_us(elapsed, n)


def _thread_echo(down: queue.SimpleQueue[int | None], up: queue.SimpleQueue[int]) -> None:
    while (v := down.get()) is not None:
        up.put(v)


def pingpong_threads(n: int) -> float:
    """Round trip (µs) between two OS threads over two queue.SimpleQueue."""
    down: queue.SimpleQueue[int | None] = queue.SimpleQueue()
    up: queue.SimpleQueue[int] = queue.SimpleQueue()
    echo = threading.Thread(target=_thread_echo, args=(down, up), daemon=True)
    echo.start()
    for i in range(warmup_count(n)):
        down.put(i)
        up.get()
    t0 = time.perf_counter()
    for i in range(n):
        down.put(i)
        up.get()
    elapsed = time.perf_counter() - t0
    down.put(None)
    echo.join()
    return per_op_us(elapsed, n)


async def _aio_echo(down: asyncio.Queue[int | None], up: asyncio.Queue[int]) -> None:
    while (v := await down.get()) is not None:
        await up.put(v)


async def _aio_pingpong(n: int, clock: str = "wall") -> float:
    now = CLOCKS[clock]
    down: asyncio.Queue[int | None] = asyncio.Queue()
    up: asyncio.Queue[int] = asyncio.Queue()
    echo = asyncio.create_task(_aio_echo(down, up))
    for i in range(warmup_count(n)):
        await down.put(i)
        await up.get()
    t0 = now()
    for i in range(n):
        await down.put(i)
        await up.get()
    elapsed = now() - t0
    await down.put(None)
    await echo
    return per_op_us(elapsed, n)


def run_asyncio(coro: Coroutine[Any, Any, float], *, uvloop: bool = False) -> float:
    """Run ``coro`` on a fresh asyncio event loop (uvloop's when asked) and return its result."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if uvloop:
        factory = importlib.import_module("uvloop").new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


def pingpong_asyncio(n: int, clock: str = "wall") -> float:
    """Round trip (µs) between two asyncio tasks over two asyncio.Queue."""
    return run_asyncio(_aio_pingpong(n, clock))


def pingpong_uvloop(n: int, clock: str = "wall") -> float:
    """Round trip (µs) between two tasks over two asyncio.Queue on uvloop."""
    return run_asyncio(_aio_pingpong(n, clock), uvloop=True)


async def _gmp_echo(down: gmp.Chan[int | None], up: gmp.Chan[int | None]) -> None:
    while (v := await down.recv()) is not None:
        await up.send(v)


async def _gmp_pingpong(n: int, clock: str = "wall") -> float:
    now = CLOCKS[clock]
    down: gmp.Chan[int | None] = gmp.Chan(0)
    up: gmp.Chan[int | None] = gmp.Chan(0)
    echo = gmp.go(_gmp_echo, down, up)
    for i in range(warmup_count(n)):
        await down.send(i)
        await up.recv()
    t0 = now()
    for i in range(n):
        await down.send(i)
        await up.recv()
    elapsed = now() - t0
    await down.send(None)
    await echo
    return per_op_us(elapsed, n)


IMPLEMENTATIONS = ("native", "pure")  # gmpworker.native.IMPLEMENTATION values


def gmp_in(
    impl: str, procs: int, main: Callable[..., Awaitable[float]], clock: str = "wall"
) -> Callable[[int], float]:
    """A measure function running ``main(n)`` as G1 of a fresh gmpworker runtime, on the
    native core or the pure runtime: in a child process (``--child``) whose
    ``GMPWORKER_PURE`` selects it, so both appear in one run. The child times only
    ``main`` itself, as every other row does; its start-up is not counted."""

    def measure(n: int) -> float:
        env = dict(os.environ, GMPWORKER_PURE="1" if impl == "pure" else "0")
        child = [sys.executable, "-m", "gmpworker.bench", "--child", impl, main.__name__]
        done = subprocess.run(
            [*child, str(procs), str(n), clock],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(child)} failed: {done.stderr.strip()[-2000:]}")
        return float(done.stdout.split()[-1])

    measure.__doc__ = f"{main.__name__} under gmp.run(procs={procs}), {impl} runtime"
    return measure


def run_child(impl: str, main_name: str, procs: int, n: int, clock: str) -> float:
    """The ``--child`` side of ``gmp_in``: one sample of ``main_name(n)`` on ``impl``."""
    if impl != gmp.native.IMPLEMENTATION:
        raise RuntimeError(f"asked for the {impl} runtime, got {gmp.native.IMPLEMENTATION}")
    main = globals()[main_name]
    # The memory and storm rows take no clock (they measure bytes and lateness).
    args = (n, clock) if clock != "wall" else (n,)
    result: float = gmp.run(main, *args, procs=procs)
    return result


# --------------------------------------------------------------------------- spawn


def _noop() -> None:
    """A thread body that does nothing."""


def spawn_threads(n: int) -> float:
    """Start n threading.Thread, join them all: µs per thread."""
    t0 = time.perf_counter()
    threads = [threading.Thread(target=_noop) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return per_op_us(time.perf_counter() - t0, n)


async def _aio_noop() -> None:
    """A task body that does nothing."""


async def _aio_spawn(n: int, clock: str = "wall") -> float:
    now = CLOCKS[clock]
    create_task = asyncio.create_task
    t0 = now()
    tasks = [create_task(_aio_noop()) for _ in range(n)]
    await asyncio.gather(*tasks)
    return per_op_us(now() - t0, n)


def spawn_asyncio(n: int, clock: str = "wall") -> float:
    """asyncio.create_task n times, then gather: µs per task."""
    return run_asyncio(_aio_spawn(n, clock))


async def _gmp_done(wg: gmp.WaitGroup) -> None:
    wg.done()


async def _gmp_spawn(n: int, clock: str = "wall") -> float:
    now = CLOCKS[clock]
    go = gmp.go
    wg = gmp.WaitGroup()
    wg.add(n)
    t0 = now()
    for _ in range(n):
        go(_gmp_done, wg)
    await wg.wait()
    return per_op_us(now() - t0, n)


# --------------------------------------------------------------------------- memory


def traced_bytes() -> int:
    """Bytes currently traced by tracemalloc, after a full collection."""
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


async def _aio_parked(q: asyncio.Queue[None]) -> None:
    await q.get()


async def _aio_memory(n: int) -> float:
    q: asyncio.Queue[None] = asyncio.Queue()
    create_task = asyncio.create_task
    tracemalloc.start()
    try:
        before = traced_bytes()
        for _ in range(n):
            create_task(_aio_parked(q))
        await asyncio.sleep(0)  # every task runs once and parks in q.get()
        grown = traced_bytes() - before
    finally:
        tracemalloc.stop()
    for _ in range(n):
        q.put_nowait(None)
    while len(asyncio.all_tasks()) > 1:
        await asyncio.sleep(0)
    return grown / n


def memory_asyncio(n: int) -> float:
    """Bytes per asyncio task parked in asyncio.Queue.get (tracemalloc)."""
    return run_asyncio(_aio_memory(n))


async def _gmp_parked(ch: gmp.Chan[None], wg: gmp.WaitGroup) -> None:
    wg.done()  # parked from here on
    await ch.recv()
    wg.done()  # exited


async def _gmp_memory(n: int) -> float:
    ch: gmp.Chan[None] = gmp.Chan(0)
    wg = gmp.WaitGroup()  # counts the Gs that are parked, then (reused) those still alive
    wg.add(n)
    go = gmp.go
    tracemalloc.start()
    try:
        before = traced_bytes()
        for _ in range(n):
            go(_gmp_parked, ch, wg)
        await wg.wait()
        await gmp.gosched()  # the last G parks before we look
        grown = traced_bytes() - before
    finally:
        tracemalloc.stop()
    wg.add(n)
    ch.close()  # every parked G receives the zero value and exits
    await wg.wait()
    return grown / n


def memory_go(n: int) -> float:
    """Go's published starting stack per goroutine (a constant, not measured)."""
    del n
    return float(GO_STACK_MIN)


# --------------------------------------------------------------------------- isolation


async def _aio_ticks_until(storm: Storm) -> list[float]:
    """A 1 ms ticker in asyncio (deadline-based, drops missed ticks as Go's Ticker)."""
    ticks = [time.perf_counter()]
    deadline = ticks[0]
    while not storm.done:
        deadline += TICK_S
        now = time.perf_counter()
        if deadline < now:
            deadline = now
        await asyncio.sleep(deadline - now)
        ticks.append(time.perf_counter())
    return ticks


async def _aio_storm(storm: Storm, n: int, blocker: Callable[[], Awaitable[None]]) -> None:
    storm.start = time.perf_counter()
    await asyncio.gather(*(blocker() for _ in range(n)))
    storm.end = time.perf_counter()
    storm.done = True


async def _aio_isolation(n: int, blocker: Callable[[], Awaitable[None]]) -> float:
    storm = Storm()
    for _ in range(WARM_TICKS):
        await asyncio.sleep(TICK_S)
    storm_task = asyncio.create_task(_aio_storm(storm, n, blocker))
    ticks = await _aio_ticks_until(storm)
    await storm_task
    return storm_lateness_ms(ticks, storm)


async def _block_in_loop() -> None:
    time.sleep(BLOCK_S)  # deliberately blocks the event loop: that is the row


async def _block_to_thread() -> None:
    await asyncio.to_thread(time.sleep, BLOCK_S)


def isolation_asyncio_direct(n: int) -> float:
    """Ticker p99 lateness (ms) while n asyncio tasks call time.sleep(0.05) directly."""
    return run_asyncio(_aio_isolation(n, _block_in_loop))


def isolation_asyncio_to_thread(n: int) -> float:
    """Ticker p99 lateness (ms) while n asyncio tasks await to_thread(time.sleep, 0.05)."""
    return run_asyncio(_aio_isolation(n, _block_to_thread))


async def _gmp_blocker(wg: gmp.WaitGroup) -> None:
    await gmp.syscall(time.sleep, BLOCK_S)
    wg.done()


async def _gmp_storm(storm: Storm, n: int) -> None:
    wg = gmp.WaitGroup()
    wg.add(n)
    storm.start = time.perf_counter()
    for _ in range(n):
        gmp.go(_gmp_blocker, wg)
    await wg.wait()
    storm.end = time.perf_counter()
    storm.done = True


async def _gmp_isolation(n: int) -> float:
    ticker = gmp.Ticker(TICK_S)
    for _ in range(WARM_TICKS):
        await ticker.c.recv()
    storm = Storm()
    gmp.go(_gmp_storm, storm, n)
    ticks = [time.perf_counter()]
    while not storm.done:
        await ticker.c.recv()
        ticks.append(time.perf_counter())
    ticker.stop()
    return storm_lateness_ms(ticks, storm)


# --------------------------------------------------------------------------- the table

SECTIONS = (
    Section("pingpong", "ping-pong round trip", "µs/round trip", "pingpong.asyncio"),
    Section(
        "pingpong_cpu",
        "ping-pong round trip, CPU time (time.process_time)",
        "µs/round trip",
        "pingpong_cpu.asyncio",
    ),
    Section("spawn", "spawn + run + exit", "µs/task", "spawn.asyncio"),
    Section(
        "spawn_cpu",
        "spawn + run + exit, CPU time (time.process_time)",
        "µs/task",
        "spawn_cpu.asyncio",
    ),
    Section("memory", "memory per parked task", "B/task", "memory.asyncio"),
    Section("isolation", "ticker p99 lateness, blocking storm", "ms", "isolation.to_thread"),
)
SECTION_BY_KEY = {s.key: s for s in SECTIONS}


def gmp_cases(
    section: str,
    what: str,
    main: Callable[..., Awaitable[float]],
    sizes: tuple[int, int, int],
    note: str,
    procs: tuple[int, ...] = (1, 2),
    clock: str = "wall",
) -> list[Case]:
    """The gmpworker rows of a section: each implementation (native core, pure Python)
    at each GOMAXPROCS, keyed ``<section>.<impl><procs>`` (``memory.native``)."""
    n_full, n_quick, repeats = sizes
    cases = []
    for impl in IMPLEMENTATIONS:
        for p in procs:
            suffix = f"{impl}{p}" if len(procs) > 1 else impl
            label = f"gmpworker {impl}, {what}" + (f", procs={p}" if len(procs) > 1 else "")
            cases.append(
                Case(
                    f"{section}.{suffix}",
                    section,
                    label,
                    gmp_in(impl, p, main, clock),
                    n_full,
                    n_quick,
                    repeats,
                    note + ("" if len(procs) > 1 else f", procs={p}"),
                    native_missing if impl == "native" else gmp_missing,
                )
            )
    return cases


CASES = (
    Case(
        "pingpong.process",
        "pingpong",
        "OS processes, os.pipe (os.fork)",
        pingpong_processes,
        5_000,
        200,
        5,
        "1-byte messages, blocking os.read/os.write",
    ),
    Case(
        "pingpong.thread",
        "pingpong",
        "OS threads, queue.SimpleQueue",
        pingpong_threads,
        5_000,
        200,
        5,
        "threading.Thread echo over two SimpleQueue",
    ),
    Case(
        "pingpong.asyncio",
        "pingpong",
        "asyncio.Queue",
        pingpong_asyncio,
        20_000,
        500,
        5,
        "two tasks, two unbounded Queues, await put/get",
    ),
    Case(
        "pingpong.uvloop",
        "pingpong",
        "asyncio.Queue on uvloop",
        pingpong_uvloop,
        20_000,
        500,
        5,
        "same code as asyncio.Queue, uvloop event loop",
        uvloop_missing,
    ),
    *gmp_cases(
        "pingpong", "Chan(0)", _gmp_pingpong, (20_000, 500, 5), "two Gs, two unbuffered Chans"
    ),
    Case(
        "pingpong_cpu.asyncio",
        "pingpong_cpu",
        "asyncio.Queue",
        functools.partial(pingpong_asyncio, clock="cpu"),
        20_000,
        500,
        5,
        "two tasks, two unbounded Queues, await put/get",
    ),
    Case(
        "pingpong_cpu.uvloop",
        "pingpong_cpu",
        "asyncio.Queue on uvloop",
        functools.partial(pingpong_uvloop, clock="cpu"),
        20_000,
        500,
        5,
        "same code as asyncio.Queue, uvloop event loop",
        uvloop_missing,
    ),
    *gmp_cases(
        "pingpong_cpu",
        "Chan(0)",
        _gmp_pingpong,
        (20_000, 500, 5),
        "two Gs, two unbuffered Chans",
        clock="cpu",
    ),
    Case(
        "spawn.thread",
        "spawn",
        "threading.Thread start+join",
        spawn_threads,
        1_000,
        50,
        5,
        "start n, then join n",
    ),
    Case(
        "spawn.asyncio",
        "spawn",
        "asyncio.create_task + gather",
        spawn_asyncio,
        20_000,
        500,
        5,
        "create n tasks, then gather",
    ),
    *gmp_cases(
        "spawn", "go + WaitGroup", _gmp_spawn, (20_000, 500, 5), "go n times, then wg.wait()"
    ),
    Case(
        "spawn_cpu.asyncio",
        "spawn_cpu",
        "asyncio.create_task + gather",
        functools.partial(spawn_asyncio, clock="cpu"),
        20_000,
        500,
        5,
        "create n tasks, then gather",
    ),
    *gmp_cases(
        "spawn_cpu",
        "go + WaitGroup",
        _gmp_spawn,
        (20_000, 500, 5),
        "go n times, then wg.wait()",
        clock="cpu",
    ),
    Case(
        "memory.go",
        "memory",
        "Go goroutine stack (published)",
        memory_go,
        1,
        1,
        1,
        "constant: _StackMin = 2048 B since Go 1.4, not measured",
    ),
    Case(
        "memory.asyncio",
        "memory",
        "asyncio task parked in Queue.get",
        memory_asyncio,
        100_000,
        2_000,
        1,
        "tracemalloc growth / n, one measurement",
    ),
    *gmp_cases(
        "memory",
        "G parked in Chan.recv",
        _gmp_memory,
        (100_000, 2_000, 1),
        "tracemalloc growth / n, one measurement",
        procs=(1,),
    ),
    Case(
        "isolation.direct",
        "isolation",
        "asyncio, time.sleep in the task",
        isolation_asyncio_direct,
        64,
        8,
        5,
        "the blocking call stalls the event loop",
    ),
    Case(
        "isolation.to_thread",
        "isolation",
        "asyncio.to_thread(time.sleep)",
        isolation_asyncio_to_thread,
        64,
        8,
        5,
        "default executor",
    ),
    *gmp_cases(
        "isolation", "syscall(time.sleep)", _gmp_isolation, (64, 8, 5), "gmp.Ticker(0.001) in G1"
    ),
)


def new_row(case: Case, quick: bool) -> Row:
    """The row ``case`` will fill; marked skipped (with the reason) if it cannot run here."""
    section = SECTION_BY_KEY[case.section]
    n = case.n_quick if quick else case.n_full
    repeats = 1 if quick else case.repeats_full
    row = Row(case.key, section.key, case.label, section.unit, n, repeats, case.note)
    reason = case.needs()
    if reason is not None:
        row.error = reason
        row.skipped = True
    return row


def take_sample(case: Case, row: Row, progress: str) -> None:
    """Add one sample to ``row``, or record why it failed; report on stderr."""
    print(f"{progress} (n={row.n}) ...", end="", file=sys.stderr, flush=True)
    settle()
    try:
        row.samples.append(case.measure(row.n))
    except Exception as exc:
        row.error = f"{type(exc).__name__}: {exc}"
        print(f" FAILED: {row.error}", file=sys.stderr, flush=True)
        traceback.print_exc(file=sys.stderr)
        return
    print(f" {row.samples[-1]:.4g} {row.unit}", file=sys.stderr, flush=True)


def measure_all(cases: tuple[Case, ...], quick: bool) -> list[Row]:
    """Measure every case, interleaved: round r takes the r-th sample of each row.

    Interleaving spreads a burst of load from other processes over all rows, so
    the ratios stay fair on a shared machine; each row's value is its median.
    """
    rows = [new_row(c, quick) for c in cases]
    for case, row in zip(cases, rows, strict=True):
        if row.skipped:
            print(
                f"{SECTION_BY_KEY[case.section].title}: {case.label}: skipped ({row.error})",
                file=sys.stderr,
                flush=True,
            )
    rounds = max(r.repeats for r in rows)
    for rnd in range(1, rounds + 1):
        for i, (case, row) in enumerate(zip(cases, rows, strict=True), 1):
            if row.error is None and len(row.samples) < row.repeats:
                section = SECTION_BY_KEY[case.section].title
                progress = f"[round {rnd}/{rounds}, row {i:2d}/{len(rows)}] {section}: {case.label}"
                take_sample(case, row, progress)
    for row in rows:
        if row.error is None:
            row.value = statistics.median(row.samples)
    return rows


def add_ratios(rows: list[Row]) -> None:
    """Fill each row's ratio against its section's asyncio baseline."""
    by_key = {r.key: r for r in rows}
    for row in rows:
        base = by_key[SECTION_BY_KEY[row.section].baseline]
        if row.value is not None and base.value:
            row.ratio = row.value / base.value


# --------------------------------------------------------------------------- targets


def _ratio_target(
    rows: dict[str, Row], target: str, keys: tuple[str, ...], limit: float
) -> list[Verdict]:
    """Rows whose ratio to their section's asyncio row must be at most ``limit``."""
    verdicts = []
    for key in keys:
        row = rows[key]
        if row.value is None or row.ratio is None:
            verdicts.append(Verdict(target, row.label, "n/a", None))
            continue
        value = f"{format_value(row.value)} {row.unit} = {row.ratio:.3f}x"
        verdicts.append(Verdict(target, row.label, value, row.ratio <= limit))
    return verdicts


def _limit_target(
    rows: dict[str, Row], target: str, keys: tuple[str, ...], limit: float, strict: bool
) -> list[Verdict]:
    verdicts = []
    for key in keys:
        row = rows[key]
        if row.value is None:
            verdicts.append(Verdict(target, row.label, "n/a", None))
            continue
        met = row.value < limit if strict else row.value <= limit
        verdicts.append(Verdict(target, row.label, f"{format_value(row.value)} {row.unit}", met))
    return verdicts


def _keys(sections: tuple[str, ...], impl: str) -> tuple[str, ...]:
    """The row keys of ``impl`` at procs 1 and 2 in each of ``sections``."""
    return tuple(f"{s}.{impl}{p}" for s in sections for p in (1, 2))


def check_targets(rows: list[Row]) -> list[Verdict]:
    """The issue's targets (16, and issue 2's storm bound), checked against this run."""
    by_key = {r.key: r for r in rows}
    isolation = tuple(f"isolation.{i}{p}" for i in IMPLEMENTATIONS for p in (1, 2))
    return [
        *_ratio_target(
            by_key,
            "ping-pong ≤ 0.10x asyncio.Queue, native",
            _keys(("pingpong", "pingpong_cpu"), "native"),
            0.10,
        ),
        *_ratio_target(
            by_key,
            "ping-pong ≤ 0.25x asyncio.Queue, pure",
            _keys(("pingpong", "pingpong_cpu"), "pure"),
            0.25,
        ),
        *_limit_target(
            by_key,
            "spawn+exit ≤ 1 µs per G, native",
            _keys(("spawn", "spawn_cpu"), "native"),
            1.0,
            strict=False,
        ),
        *_limit_target(
            by_key, "≤ 1 KB per parked G", ("memory.native", "memory.pure"), KB, strict=False
        ),
        *_limit_target(
            by_key, "ticker p99 lateness < 5 ms in the storm", isolation, 5.0, strict=True
        ),
    ]


# --------------------------------------------------------------------------- output


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or platform's guess elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "switchinterval_ms": sys.getswitchinterval() * 1e3,
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    if uvloop_missing() is None:
        info["uvloop"] = importlib.import_module("uvloop").__version__
    return info


def format_value(value: float | None) -> str:
    """A measured value with about four significant digits."""
    if value is None:
        return "n/a"
    return f"{value:,.0f}" if value >= 1000 else f"{value:.3g}"


def format_ratio(ratio: float | None) -> str:
    """A ratio to the asyncio row, two decimals when it is small."""
    if ratio is None:
        return ""
    return f"{ratio:.2f}x" if ratio < 100 else f"{ratio:,.0f}x"


def render_table(rows: list[Row], info: dict[str, Any]) -> str:
    """The single table: header with the machine, rows, then the targets."""
    lines = [
        f"gmpworker benchmark: {info['command']}",
        f"machine: {info['cpu']}, {info['cores']} cores; {info['python']}; {info['platform']}",
        f"sys.getswitchinterval()={info['switchinterval_ms']:g} ms, "
        f"load average {info['loadavg_at_start']} at start, {info['loadavg_at_end']} at end"
        + (f", uvloop {info['uvloop']}" if "uvloop" in info else ""),
        "value = median of repeats; ratio = value / the section's asyncio row "
        "(marked =); lower is better everywhere",
        "",
    ]
    header = f"{'':2}{'implementation':48} {'value':>9} {'unit':14} {'vs asyncio':>10}  spread"
    for section in SECTIONS:
        lines.append(section.title)
        lines.append(header)
        for row in (r for r in rows if r.section == section.key):
            mark = "=" if row.key == section.baseline else " "
            ratio = format_ratio(row.ratio)
            spread = (
                f"{format_value(min(row.samples))}..{format_value(max(row.samples))}"
                if len(row.samples) > 1
                else ""
            )
            if row.error:
                spread = f"({row.error})"
            lines.append(
                f"{mark:2}{row.label:48} {format_value(row.value):>9} {row.unit:14} "
                f"{ratio:>10}  {spread}"
            )
        lines.append("")
    return "\n".join(lines)


def render_targets(verdicts: list[Verdict]) -> str:
    """The issue's targets and whether this run meets each."""
    lines = ["targets (issue 16):"]
    for v in verdicts:
        state = {True: "MET", False: "NOT MET", None: "NOT MEASURED"}[v.met]
        lines.append(f"  {state:12} {v.target}: {v.row}: {v.value}")
    return "\n".join(lines)


def write_json(path: str, rows: list[Row], verdicts: list[Verdict], info: dict[str, Any]) -> None:
    """Write the rows, targets and machine for the README."""
    doc = {
        "machine": info,
        "gmpworker_unavailable": gmp_missing(),
        "rows": [asdict(r) for r in rows],
        "targets": [asdict(v) for v in verdicts],
    }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2, ensure_ascii=False)
        f.write("\n")


def main(argv: list[str] | None = None) -> int:
    """Measure every row, print the table and the targets; 1 if a row failed."""
    parser = argparse.ArgumentParser(prog="python -m gmpworker.bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat (smoke)")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    parser.add_argument(
        "--child",
        nargs=5,
        metavar=("IMPL", "MAIN", "PROCS", "N", "CLOCK"),
        help="internal: print one sample of a gmpworker row (see gmp_in)",
    )
    args = parser.parse_args(argv)
    if args.child:
        impl, main_name, procs, n, clock = args.child
        print(run_child(impl, main_name, int(procs), int(n), clock))
        return 0
    info = machine_info()
    info["command"] = " ".join(
        ["python -m gmpworker.bench", *(argv if argv is not None else sys.argv[1:])]
    )
    rows = measure_all(CASES, args.quick)
    info["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    add_ratios(rows)
    verdicts = check_targets(rows)
    print(render_table(rows, info))
    print(render_targets(verdicts))
    if args.json:
        write_json(args.json, rows, verdicts, info)
    return 1 if any(r.error and not r.skipped for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
