"""Micro-benchmark rows for the ``switch`` and ``handoff`` experiments, measured by
:mod:`gmpworker.bench` (same functions, same interleaved repeats and medians) in a process
of their own, plus the rows that benchmark has no use for: spawning and parking OS
processes and threads, and greenlets when installed (locust brings them).

``python -m loadtest.experiments.micro KEY... [--quick] --json FILE``
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import subprocess
import threading
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from gmpworker import bench
from loadtest.runner import PYTHON, ROOT, RunnerError

PAGE = os.sysconf("SC_PAGE_SIZE")


def greenlet_missing() -> str | None:
    """Why the greenlet rows cannot run, or ``None``."""
    return None if importlib.util.find_spec("greenlet") else "greenlet not installed"


# --- OS processes ------------------------------------------------------------------------------


def spawn_processes(n: int) -> float:
    """fork n children that exit at once, wait for each: µs per process."""
    t0 = time.perf_counter()
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
    return bench.per_op_us(time.perf_counter() - t0, n)


def _private_bytes(pid: int) -> int:
    """Memory only this process holds (Private_Clean + Private_Dirty), from smaps_rollup."""
    total = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            total += int(line.split()[1]) * 1024
    return total


def memory_processes(n: int) -> float:
    """Private bytes per forked child parked in os.read (shared pages not counted)."""
    read_end, write_end = os.pipe()
    children = []
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            os.close(write_end)
            os.read(read_end, 1)  # parked until the parent closes the pipe
            os._exit(0)
        children.append(pid)
    time.sleep(0.2)  # every child reaches its read
    try:
        return sum(_private_bytes(pid) for pid in children) / n
    finally:
        os.close(write_end)
        os.close(read_end)
        for pid in children:
            os.waitpid(pid, 0)


# --- OS threads --------------------------------------------------------------------------------


def _resident_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * PAGE


def memory_threads(n: int) -> float:
    """Resident-set growth per thread parked on a threading.Event (its stack pages, its
    thread state), sampled once every thread has parked."""
    gc.collect()
    release, parked = threading.Event(), threading.Semaphore(0)

    def park() -> None:
        parked.release()
        release.wait()

    before = _resident_bytes()
    threads = [threading.Thread(target=park) for _ in range(n)]
    for thread in threads:
        thread.start()
    for _ in range(n):
        parked.acquire()
    grown = _resident_bytes() - before
    release.set()
    for thread in threads:
        thread.join()
    return grown / n


# --- greenlets ---------------------------------------------------------------------------------


def pingpong_greenlet(n: int) -> float:
    """Round trip (µs) between two greenlets: switch there, switch back."""
    import greenlet

    def echo(value: int | None) -> None:
        main = greenlet.getcurrent().parent
        while value is not None:
            value = main.switch(value)

    other = greenlet.greenlet(echo)
    other.switch(0)
    for i in range(bench.warmup_count(n)):
        other.switch(i)
    t0 = time.perf_counter()
    for i in range(n):
        other.switch(i)
    elapsed = time.perf_counter() - t0
    other.switch(None)
    return bench.per_op_us(elapsed, n)


def spawn_greenlets(n: int) -> float:
    """Create n greenlets and run each to its end: µs per greenlet."""
    import greenlet

    t0 = time.perf_counter()
    for _ in range(n):
        greenlet.greenlet(bench._noop).switch()
    return bench.per_op_us(time.perf_counter() - t0, n)


def memory_greenlets(n: int) -> float:
    """tracemalloc growth per greenlet parked (switched back to the main greenlet)."""
    import greenlet

    def park() -> None:
        greenlet.getcurrent().parent.switch()

    tracemalloc.start()
    try:
        before = bench.traced_bytes()
        parked = [greenlet.greenlet(park) for _ in range(n)]
        for g in parked:
            g.switch()
        grown = bench.traced_bytes() - before
    finally:
        tracemalloc.stop()
    for g in parked:
        g.switch()  # each returns from its park() and ends
    return grown / n


def _case(
    key: str,
    label: str,
    measure: Callable[[int], float],
    sizes: tuple[int, int, int],
    note: str,
    needs: Callable[[], str | None] = lambda: None,
) -> bench.Case:
    n_full, n_quick, repeats = sizes
    section = key.split(".")[0]
    return bench.Case(key, section, label, measure, n_full, n_quick, repeats, note, needs)


EXTRA_CASES = (
    _case(
        "spawn.process", "OS process fork + exit + wait", spawn_processes, (200, 20, 5),
        "os.fork, os._exit(0), os.waitpid",
    ),
    _case(
        "memory.process", "OS process parked in os.read", memory_processes, (20, 4, 1),
        "Private_Clean + Private_Dirty per child (smaps_rollup)",
    ),
    _case(
        "memory.thread", "OS thread parked on an Event", memory_threads, (500, 50, 1),
        "resident-set growth / n",
    ),
    _case(
        "pingpong.greenlet", "greenlet switch", pingpong_greenlet, (20_000, 500, 5),
        "two greenlets, switch there and back", greenlet_missing,
    ),
    _case(
        "spawn.greenlet", "greenlet create + run", spawn_greenlets, (20_000, 500, 5),
        "create, switch in, return", greenlet_missing,
    ),
    _case(
        "memory.greenlet", "greenlet parked (switched out)", memory_greenlets, (20_000, 500, 1),
        "tracemalloc growth / n", greenlet_missing,
    ),
)  # fmt: skip
CASES = {c.key: c for c in (*bench.CASES, *EXTRA_CASES)}


def measure(keys: Sequence[str], quick: bool, out: Path, log: Path) -> list[dict[str, Any]]:
    """Run the rows ``keys`` in a fresh process (its progress goes to ``log``); the rows."""
    with log.open("w") as stderr:
        proc = subprocess.run(
            [PYTHON, "-m", "loadtest.experiments.micro", *keys, "--json", str(out)]
            + (["--quick"] if quick else []),
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            timeout=900,
        )
    if proc.returncode != 0:
        raise RunnerError(f"micro-benchmarks failed ({proc.returncode}); see {log}")
    rows: list[dict[str, Any]] = json.loads(out.read_text())
    return rows


def main(argv: list[str] | None = None) -> None:
    """Measure the named rows (interleaved, as gmpworker.bench does); write them as JSON."""
    parser = argparse.ArgumentParser(prog="python -m loadtest.experiments.micro")
    parser.add_argument("keys", nargs="+", choices=sorted(CASES))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)
    rows = bench.measure_all(tuple(CASES[k] for k in args.keys), args.quick)
    args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1))


if __name__ == "__main__":
    main()
