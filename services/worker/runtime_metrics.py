"""Prometheus view of a gmpworker Runtime: Gs, Ps, Ms and scheduler counters.

A custom collector reads ``runtime.stats()`` at scrape time instead of mirroring every
scheduler event into prometheus-client objects, so the scheduler's hot path pays nothing
and a scrape always shows one consistent snapshot (the numbers ``GMP_SCHEDTRACE``
prints). The worker registers it when the gmpworker pool starts its Runtime
(``services.worker.app``, on the pool's ``runtime_started`` signal).

``stats()`` keys read (``gmpworker/schedtrace.py`` ``sched_stats``): ``gomaxprocs``,
``idleprocs``, ``threads``, ``spinningthreads``, ``idlethreads``, ``runqueue`` (global),
``runqsizes`` and ``pstatus`` (one entry per P), ``gs_by_state`` and the flat counters
``steals handoffs retakes preemptions syscalls switches spawned``. Missing keys read as
zero, so an older or newer runtime never breaks a scrape.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

G_STATES = ("idle", "runnable", "running", "syscall", "waiting", "dead")
P_STATES = ("idle", "running", "syscall", "stopped")

# Prometheus name (without _total) -> stats() counter key, help text.
COUNTERS: dict[str, tuple[str, str]] = {
    "gmp_steals": ("steals", "Gs stolen from another P's run queue (runqsteal)."),
    "gmp_handoffs": ("handoffs", "Ps handed to another M while their M blocked (handoffp)."),
    "gmp_retakes": ("retakes", "Ps retaken by sysmon from Ms stuck in a syscall (retake)."),
    "gmp_preemptions": ("preemptions", "Gs asked to yield after a long time slice (preemptone)."),
    "gmp_syscalls": ("syscalls", "Blocking calls entered by Gs (entersyscall)."),
    "gmp_context_switches": ("switches", "G switches done by the schedulers (execute)."),
    "gmp_goroutines_spawned": ("spawned", "Gs created (newproc)."),
}


class StatsSource(Protocol):
    """Anything with gmpworker's ``stats()`` (a Runtime, or the module itself)."""

    def stats(self) -> Mapping[str, Any]:
        """A snapshot of the scheduler's state and counters."""
        ...


def _int(value: Any) -> int:
    """``value`` as an int, zero when absent or not a number."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def goroutines_by_state(stats: Mapping[str, Any]) -> dict[str, int]:
    """Gs per state, every known state present (zero when the runtime has none)."""
    counts = dict.fromkeys(G_STATES, 0)
    for state, count in stats.get("gs_by_state", {}).items():
        counts[str(state)] = _int(count)
    return counts


def procs_by_state(stats: Mapping[str, Any]) -> dict[str, int]:
    """Ps per state, from the per-P statuses when reported, else from ``idleprocs``."""
    counts = dict.fromkeys(P_STATES, 0)
    statuses = stats.get("pstatus")
    if statuses:
        for state in statuses:
            counts[str(state)] = counts.get(str(state), 0) + 1
        return counts
    idle = _int(stats.get("idleprocs"))
    counts["idle"] = idle
    counts["running"] = max(_int(stats.get("gomaxprocs")) - idle, 0)
    return counts


def threads_by_state(stats: Mapping[str, Any]) -> dict[str, int]:
    """Ms per state: idle (parked), spinning (looking for work), syscall, running (the rest).

    An M in a syscall is the one holding each G in ``syscall`` (Go's M stays with its G).
    """
    idle = _int(stats.get("idlethreads"))
    spinning = _int(stats.get("spinningthreads"))
    syscall = goroutines_by_state(stats)["syscall"]
    running = max(_int(stats.get("threads")) - idle - spinning - syscall, 0)
    return {"running": running, "idle": idle, "spinning": spinning, "syscall": syscall}


def runqueue_lengths(stats: Mapping[str, Any]) -> list[int]:
    """Local run queue length of each P (runnext included), in P order."""
    return [_int(size) for size in stats.get("runqsizes", ())]


def _labelled_gauge(name: str, doc: str, label: str, values: Mapping[str, int]) -> Metric:
    """A gauge family with one sample per ``label`` value."""
    family = GaugeMetricFamily(name, doc, labels=[label])
    for key, value in values.items():
        family.add_metric([key], value)
    return family


class RuntimeCollector(Collector):
    """Collects the ``gmp_*`` metrics from one snapshot of ``stats()`` per scrape."""

    def __init__(self, stats: Callable[[], Mapping[str, Any]]) -> None:
        self._stats = stats

    def describe(self) -> list[Metric]:
        """No up-front description: the per-P labels depend on GOMAXPROCS at scrape time."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Yield every ``gmp_*`` family from a fresh snapshot."""
        stats = self._stats()
        yield _labelled_gauge(
            "gmp_goroutines", "Gs by scheduling state.", "state", goroutines_by_state(stats)
        )
        yield _labelled_gauge(
            "gmp_threads", "Ms (OS threads) by state.", "state", threads_by_state(stats)
        )
        yield _labelled_gauge("gmp_procs", "Ps by state.", "state", procs_by_state(stats))
        per_p = {str(i): size for i, size in enumerate(runqueue_lengths(stats))}
        yield _labelled_gauge(
            "gmp_runqueue_length", "Gs in each P's local run queue, runnext included.", "p", per_p
        )
        yield GaugeMetricFamily(
            "gmp_global_runqueue_length",
            "Gs in the global run queue (sched.runq).",
            value=_int(stats.get("runqueue")),
        )
        yield GaugeMetricFamily(
            "gmp_gomaxprocs", "Number of Ps (GOMAXPROCS).", value=_int(stats.get("gomaxprocs"))
        )
        for name, (key, doc) in COUNTERS.items():
            yield CounterMetricFamily(name, doc, value=_int(stats.get(key)))


_lock = threading.Lock()
_registered: dict[int, RuntimeCollector] = {}


def register_runtime(
    runtime: StatsSource, registry: CollectorRegistry = REGISTRY
) -> RuntimeCollector:
    """Export ``runtime.stats()`` as ``gmp_*`` metrics on ``registry``.

    Registering again (a pool restarted with a new Runtime) replaces the previous
    collector, because two collectors with the same names make every scrape fail.
    """
    collector = RuntimeCollector(runtime.stats)
    with _lock:
        previous = _registered.pop(id(registry), None)
        if previous is not None:
            registry.unregister(previous)
        registry.register(collector)
        _registered[id(registry)] = collector
    return collector


def unregister_runtime(registry: CollectorRegistry = REGISTRY) -> None:
    """Stop exporting the runtime registered on ``registry`` (the pool is shutting down)."""
    with _lock:
        previous = _registered.pop(id(registry), None)
        if previous is not None:
            registry.unregister(previous)
