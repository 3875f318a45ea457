"""Figures from the recorded requests: per-phase throughput, errors and latency percentiles,
and per-second series for the plot."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from loadtest.records import Bucket, Tick, percentile
from loadtest.schedule import PHASES


@dataclass(frozen=True)
class PhaseWindow:
    """When a phase ran (epoch seconds), as the shape saw it."""

    phase: str
    start: float
    end: float

    @property
    def seconds(self) -> float:
        """Length of the window."""
        return self.end - self.start


@dataclass
class PhaseStats:
    """Throughput, errors and latency of one phase (or of the whole run: phase ``all``)."""

    phase: str
    seconds: float
    requests: int
    failures: int
    deliberate_503: int
    unexpected_5xx: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    codes: dict[str, int] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        """Requests per second over the phase's window."""
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def error_rate(self) -> float:
        """Failed requests (5xx, connection errors, unexpected answers) over all requests."""
        return self.failures / self.requests if self.requests else 0.0


@dataclass(frozen=True)
class SecondPoint:
    """All requests started within one second."""

    t: float
    requests: int
    failures: int
    p99_ms: float | None


def phase_windows(timeline: Sequence[Tick]) -> list[PhaseWindow]:
    """Consecutive phase windows from the shape's ticks; the ``stopped`` tick closes the last."""
    windows: list[PhaseWindow] = []
    for tick in timeline:
        if windows and windows[-1].phase == tick.phase:
            continue
        if windows:
            last = windows[-1]
            windows[-1] = PhaseWindow(last.phase, last.start, tick.phase_start)
        windows.append(PhaseWindow(tick.phase, tick.phase_start, tick.phase_start))
    if windows and windows[-1].phase == "stopped":
        windows.pop()
    elif windows:  # no stop tick (killed run): close the last window one tick later
        last = windows[-1]
        windows[-1] = PhaseWindow(last.phase, last.start, timeline[-1].t + 1)
    return windows


def _summarise(phase: str, buckets: Sequence[Bucket], seconds: float) -> PhaseStats:
    total = Bucket(sec=0, phase=phase)
    for bucket in buckets:
        total.merge(bucket)
    return PhaseStats(
        phase=phase,
        seconds=seconds,
        requests=total.requests,
        failures=total.failures,
        deliberate_503=total.deliberate_503,
        unexpected_5xx=total.unexpected_5xx,
        p50_ms=percentile(total.latency, 0.50),
        p95_ms=percentile(total.latency, 0.95),
        p99_ms=percentile(total.latency, 0.99),
        codes=dict(sorted(total.codes.items())),
    )


def _span(buckets: Sequence[Bucket]) -> float:
    return float(max(b.sec for b in buckets) - min(b.sec for b in buckets) + 1) if buckets else 0.0


def phase_stats(buckets: Sequence[Bucket], windows: Sequence[PhaseWindow]) -> list[PhaseStats]:
    """One row per phase in run order, then ``all``.

    Requests are attributed to the phase their process was in when they started (the
    phase travels to every worker); rates divide by the shape's window, or by the seconds
    the phase's requests span when no timeline was recorded.
    """
    seconds: dict[str, float] = defaultdict(float)
    for window in windows:
        seconds[window.phase] += window.seconds
    rows = []
    for phase in PHASES:
        mine = [b for b in buckets if b.phase == phase]
        if mine or seconds[phase]:
            rows.append(_summarise(phase, mine, seconds[phase] or _span(mine)))
    rows.append(_summarise("all", buckets, sum(seconds.values()) or _span(buckets)))
    return rows


def per_second(buckets: Sequence[Bucket]) -> list[SecondPoint]:
    """Requests, failures and p99 latency for every second with traffic, in time order."""
    by_second: dict[int, Bucket] = {}
    for bucket in buckets:
        by_second.setdefault(bucket.sec, Bucket(sec=bucket.sec, phase="all")).merge(bucket)
    return [
        SecondPoint(float(sec), b.requests, b.failures, percentile(b.latency, 0.99))
        for sec, b in sorted(by_second.items())
    ]
