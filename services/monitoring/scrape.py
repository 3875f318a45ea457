"""Prometheus samples in memory: parse expositions, merge sources, rates and quantiles.

The built-in dashboard computes the figures Grafana shows (per-second rates, histogram
percentiles over a window) without a Prometheus server: it keeps a few recent
:class:`Scrape` snapshots and differences them, as ``rate()`` and
``histogram_quantile()`` do. The tests use the same parsing to check metric names.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

Labels = Mapping[str, str]
LabelFilter = Callable[[Labels], bool]


def _matches(labels: Labels, match: Mapping[str, str | tuple[str, ...]]) -> bool:
    """True when every matcher holds: a string for equality, a tuple for "one of"."""
    for key, want in match.items():
        have = labels.get(key)
        if (have not in want) if isinstance(want, tuple) else (have != want):
            return False
    return True


@dataclass
class Scrape:
    """Every sample of one moment, by sample name (``x_total``, ``y_bucket``...)."""

    at: float = field(default_factory=time.monotonic)
    samples: dict[str, list[tuple[dict[str, str], float]]] = field(default_factory=dict)
    family_types: dict[str, str] = field(default_factory=dict)

    def add_families(
        self, families: Iterable[Metric], keep: LabelFilter | None = None, **extra: str
    ) -> None:
        """Add parsed or collected families, tagging every sample with ``extra`` labels.

        ``keep(labels)`` false drops a sample (the dashboards leave out their own polling).
        """
        for family in families:
            self.family_types.setdefault(family.name, family.type)
            for sample in family.samples:
                if keep is None or keep(sample.labels):
                    labels = {**sample.labels, **extra}
                    self.samples.setdefault(sample.name, []).append((labels, float(sample.value)))

    def add_text(self, text: str, keep: LabelFilter | None = None, **extra: str) -> None:
        """Add a text exposition (a ``/metrics`` body)."""
        self.add_families(text_string_to_metric_families(text), keep, **extra)

    def add_registry(
        self, registry: CollectorRegistry, keep: LabelFilter | None = None, **extra: str
    ) -> None:
        """Add everything a registry collects now."""
        self.add_families(registry.collect(), keep, **extra)

    def total(self, name: str, **match: str | tuple[str, ...]) -> float | None:
        """Sum of the matching samples; None when there are none."""
        values = [v for labels, v in self.samples.get(name, ()) if _matches(labels, match)]
        return sum(values) if values else None

    def maximum(self, name: str, **match: str | tuple[str, ...]) -> float | None:
        """Largest matching sample; None when there are none."""
        values = [v for labels, v in self.samples.get(name, ()) if _matches(labels, match)]
        return max(values) if values else None

    def by(self, name: str, label: str, **match: str | tuple[str, ...]) -> dict[str, float]:
        """Matching samples summed per value of ``label``."""
        out: dict[str, float] = {}
        for labels, value in self.samples.get(name, ()):
            if label in labels and _matches(labels, match):
                out[labels[label]] = out.get(labels[label], 0.0) + value
        return out

    def buckets(self, histogram: str, **match: str | tuple[str, ...]) -> dict[float, float]:
        """A histogram's cumulative bucket counts summed over every other label, by ``le``."""
        return {
            float(le): count for le, count in self.by(f"{histogram}_bucket", "le", **match).items()
        }

    def exported_names(self) -> set[str]:
        """Every sample name a PromQL query could select, including empty families'."""
        suffixes = {
            "counter": ("_total", "_created"),
            "histogram": ("_bucket", "_sum", "_count", "_created"),
            "summary": ("_sum", "_count", "_created"),
            "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
        }
        names = set(self.samples)
        for family, kind in self.family_types.items():
            names.update(family + s for s in suffixes.get(kind, ("",)))
        return names


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """Prometheus's ``histogram_quantile`` over cumulative ``{le: count}`` (None if empty).

    Linear interpolation inside the bucket holding the rank, the lowest bucket starting
    at zero, and the ``+Inf`` bucket answered by the highest finite bound, as Prometheus does.
    """
    bounds = sorted(buckets)
    if not bounds or not math.isinf(bounds[-1]):
        return None
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


class History:
    """Recent scrapes, so counters can be turned into rates over a trailing window."""

    def __init__(self, window_s: float = 5.0, keep_s: float = 60.0) -> None:
        self.window_s = window_s
        self.keep_s = keep_s
        self._scrapes: deque[Scrape] = deque()

    def push(self, scrape: Scrape) -> Scrape | None:
        """Record ``scrape`` and return the one to difference against (None at first)."""
        while self._scrapes and scrape.at - self._scrapes[0].at > self.keep_s:
            self._scrapes.popleft()
        base = None
        for old in self._scrapes:
            if scrape.at - old.at >= self.window_s or base is None:
                base = old
        self._scrapes.append(scrape)
        return base


@dataclass
class Window:
    """A scrape and an earlier one: rates and percentiles over the time between them."""

    now: Scrape
    base: Scrape | None

    @property
    def seconds(self) -> float:
        """Time between the two scrapes (0 when there is no earlier one)."""
        return self.now.at - self.base.at if self.base else 0.0

    def rate(self, name: str, **match: str | tuple[str, ...]) -> float | None:
        """Per-second increase of a counter; None until two scrapes exist or if absent."""
        now = self.now.total(name, **match)
        if now is None or self.base is None or self.seconds <= 0:
            return None
        before = self.base.total(name, **match) or 0.0
        # A restarted process resets its counters: count from zero, as rate() does.
        return (now - before if now >= before else now) / self.seconds

    def rates_by(self, name: str, label: str, **match: str | tuple[str, ...]) -> dict[str, float]:
        """Per-second increase of a counter per value of ``label``."""
        if self.base is None or self.seconds <= 0:
            return {}
        before = self.base.by(name, label, **match)
        out = {}
        for key, now in self.now.by(name, label, **match).items():
            old = before.get(key, 0.0)
            out[key] = (now - old if now >= old else now) / self.seconds
        return out

    def quantile(self, q: float, histogram: str, **match: str | tuple[str, ...]) -> float | None:
        """``histogram_quantile(q, rate(histogram_bucket[window]))``; None if nothing observed."""
        if self.base is None:
            return None
        before = self.base.buckets(histogram, **match)
        delta = {
            le: count - before.get(le, 0.0)
            for le, count in self.now.buckets(histogram, **match).items()
        }
        return histogram_quantile(q, delta)

    def mean(self, histogram: str, **match: str | tuple[str, ...]) -> float | None:
        """Mean observation over the window: rate of ``_sum`` over rate of ``_count``."""
        total = self.rate(f"{histogram}_sum", **match)
        count = self.rate(f"{histogram}_count", **match)
        return total / count if total is not None and count else None
