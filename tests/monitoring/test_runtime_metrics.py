"""The ``gmp_*`` collector over a real gmpworker Runtime doing real work."""

from __future__ import annotations

import time

import pytest
from prometheus_client import CollectorRegistry, generate_latest

import gmpworker as gmp
from services.monitoring.scrape import Scrape
from services.worker.runtime_metrics import register_runtime, unregister_runtime

GS = 40


async def _work(i: int) -> int:
    """Yield a few times, sleep, and block in a real syscall (so Ps get handed off)."""
    for _ in range(3):
        await gmp.gosched()
    await gmp.sleep(0.001)
    await gmp.syscall(time.sleep, 0.005, block=i % 2 == 0)
    return i


def _scrape(registry: CollectorRegistry) -> Scrape:
    scrape = Scrape()
    scrape.add_text(generate_latest(registry).decode())
    return scrape


@pytest.fixture
def runtime() -> object:
    """A started Runtime with GOMAXPROCS=2, stopped afterwards."""
    rt = gmp.Runtime(procs=2).start()
    yield rt
    rt.stop(timeout=10)


def test_collector_reports_the_runtime_after_real_work(runtime: object) -> None:
    """Counts of Ps, spawned Gs, switches and syscalls match what the Gs did."""
    registry = CollectorRegistry()
    register_runtime(runtime, registry)  # type: ignore[arg-type]
    handles = [runtime.submit(_work, i) for i in range(GS)]  # type: ignore[attr-defined]
    assert sorted(h.result(timeout=30) for h in handles) == list(range(GS))

    scrape = _scrape(registry)
    assert scrape.total("gmp_gomaxprocs") == 2
    assert set(scrape.by("gmp_runqueue_length", "p")) == {"0", "1"}
    assert scrape.total("gmp_procs") == 2
    assert scrape.total("gmp_goroutines_spawned_total") >= GS
    assert scrape.total("gmp_syscalls_total") >= GS
    assert scrape.total("gmp_context_switches_total") >= GS * 3
    assert scrape.total("gmp_handoffs_total") >= 1  # block=True hands the P off at once
    assert scrape.total("gmp_threads") >= 2
    for state in ("runnable", "running", "syscall", "waiting"):
        assert scrape.total("gmp_goroutines", state=state) is not None
    for name in ("gmp_steals_total", "gmp_retakes_total", "gmp_preemptions_total"):
        assert scrape.total(name) is not None, name
    unregister_runtime(registry)
    assert scrape.total("gmp_gomaxprocs") is not None
    assert _scrape(registry).total("gmp_gomaxprocs") is None


def test_registering_again_replaces_the_previous_runtime(runtime: object) -> None:
    """A pool restarted with a new Runtime re-registers without duplicate-name errors."""
    registry = CollectorRegistry()
    register_runtime(runtime, registry)  # type: ignore[arg-type]
    other = gmp.Runtime(procs=3)
    register_runtime(other, registry)
    assert _scrape(registry).total("gmp_gomaxprocs") == 3
    unregister_runtime(registry)
