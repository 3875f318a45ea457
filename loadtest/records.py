"""What a load run records, and how the verifier reads it back.

Every locust process (local runner, or each worker in a distributed run) appends JSON lines
to files of its own in one directory (``LOADTEST_RECORD_DIR``), so nothing needs to travel
through locust's master and a shared volume is enough under Docker Compose:

- ``orders-<node>.jsonl``: one line per order placed and its outcome (:class:`OrderRecord`).
- ``requests-<node>.jsonl``: every request, aggregated per second and phase
  (:class:`Bucket`: counts by status code and a latency histogram), so per-phase and
  per-second percentiles can be merged exactly across processes.
- ``timeline.jsonl`` (the process running the shape): one :class:`Tick` a second.

Plain Python only: no locust import here (it would monkey-patch the reader's process).
"""

from __future__ import annotations

import json
import os
import socket
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

RECORD_DIR_ENV = "LOADTEST_RECORD_DIR"
TIMELINE_FILE = "timeline.jsonl"


def round_latency(ms: float) -> int:
    """Latency bucket in ms, two significant digits (as locust's own statistics round)."""
    digits = 0 if ms < 100 else -1 if ms < 1000 else -2 if ms < 10_000 else -3
    return int(round(ms, digits))


def percentile(histogram: Counter[int], fraction: float) -> float | None:
    """The ``fraction`` percentile (0..1) of a latency histogram, or ``None`` when it is empty."""
    total = sum(histogram.values())
    if total == 0:
        return None
    rank = fraction * total
    seen = 0
    for value in sorted(histogram):
        seen += histogram[value]
        if seen >= rank:
            return float(value)
    return float(max(histogram))


@dataclass
class OrderRecord:
    """One ``POST /orders`` as the client saw it."""

    t: float  # epoch seconds when the request was sent
    item_id: int
    quantity: int
    user_id: str
    key: str  # the Idempotency-Key sent
    status: int  # HTTP status, 0 when no response arrived
    ms: float  # response time
    phase: str
    order_id: str | None = None  # from a 202 body
    retry_after: bool = False  # a 503 that carried Retry-After (a deliberate refusal)


@dataclass
class Bucket:
    """Requests started within one second of one phase."""

    sec: int
    phase: str
    requests: int = 0
    failures: int = 0
    deliberate_503: int = 0  # 503 with Retry-After: the api refusing on purpose
    codes: Counter[str] = field(default_factory=Counter)
    latency: Counter[int] = field(default_factory=Counter)

    @property
    def unexpected_5xx(self) -> int:
        """Server errors other than deliberate 503s."""
        server_errors = sum(n for code, n in self.codes.items() if code.startswith("5"))
        return server_errors - self.deliberate_503

    def add(self, status: int, ms: float, failed: bool, retry_after: bool) -> None:
        """Count one request."""
        self.requests += 1
        self.failures += failed
        self.deliberate_503 += status == 503 and retry_after
        self.codes[str(status)] += 1
        self.latency[round_latency(ms)] += 1

    def merge(self, other: Bucket) -> None:
        """Add another process's counts for the same second and phase."""
        self.requests += other.requests
        self.failures += other.failures
        self.deliberate_503 += other.deliberate_503
        self.codes.update(other.codes)
        self.latency.update(other.latency)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (histogram keys become strings)."""
        return {
            "sec": self.sec,
            "phase": self.phase,
            "requests": self.requests,
            "failures": self.failures,
            "deliberate_503": self.deliberate_503,
            "codes": dict(self.codes),
            "latency": {str(k): v for k, v in self.latency.items()},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Bucket:
        """Inverse of :meth:`to_json`."""
        return cls(
            sec=int(data["sec"]),
            phase=data["phase"],
            requests=data["requests"],
            failures=data["failures"],
            deliberate_503=data["deliberate_503"],
            codes=Counter(data["codes"]),
            latency=Counter({int(k): v for k, v in data["latency"].items()}),
        )


@dataclass
class Tick:
    """The shape's view once a second: phase, target and running users, locust's current rps."""

    t: float
    elapsed: float
    phase: str
    phase_start: float  # epoch the phase began (ticks are written up to a second later)
    target_users: int
    users: int
    rps: float
    fail_ratio: float
    p95_ms: float | None


def node_name() -> str:
    """A file-name-safe id of this process, unique across hosts sharing the record dir."""
    return f"{socket.gethostname()}-{os.getpid()}"


class JsonLines:
    """An append-only JSON-lines file, buffered and flushed on demand."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file: IO[str] = path.open("a", encoding="utf-8")

    def write(self, data: dict[str, Any]) -> None:
        """Append one record."""
        self._file.write(json.dumps(data, separators=(",", ":")) + "\n")

    def flush(self) -> None:
        """Push buffered records to the file."""
        self._file.flush()

    def close(self) -> None:
        """Flush and close."""
        self._file.close()


class RequestAggregator:
    """Per-second, per-phase buckets of one process, written out once each second is over."""

    def __init__(self, out: JsonLines) -> None:
        self.out = out
        self._open: dict[tuple[int, str], Bucket] = {}

    def add(
        self, t: float, phase: str, status: int, ms: float, failed: bool, retry_after: bool
    ) -> None:
        """Count a request that started at epoch ``t``."""
        key = (int(t), phase)
        bucket = self._open.get(key)
        if bucket is None:
            bucket = self._open[key] = Bucket(sec=key[0], phase=phase)
        bucket.add(status, ms, failed, retry_after)

    def flush(self, now: float | None = None) -> None:
        """Write buckets of seconds before ``now - 1`` (all of them when ``now`` is None).

        A second stays open one extra second because a slow request counts in the second it
        started, not the one it finished.
        """
        done = [k for k in self._open if now is None or k[0] < int(now) - 1]
        for key in sorted(done):
            self.out.write(self._open.pop(key).to_json())
        self.out.flush()


def _read_lines(paths: Iterable[Path]) -> Iterator[dict[str, Any]]:
    for path in sorted(paths):
        with path.open(encoding="utf-8") as file:
            for line in file:
                if line.strip():
                    yield json.loads(line)


def load_orders(record_dir: Path) -> list[OrderRecord]:
    """Every order recorded by every process, oldest first."""
    orders = [OrderRecord(**row) for row in _read_lines(record_dir.glob("orders-*.jsonl"))]
    return sorted(orders, key=lambda o: o.t)


def load_buckets(record_dir: Path) -> list[Bucket]:
    """Request buckets of every process merged by (second, phase), in time order."""
    merged: dict[tuple[int, str], Bucket] = {}
    for row in _read_lines(record_dir.glob("requests-*.jsonl")):
        bucket = Bucket.from_json(row)
        key = (bucket.sec, bucket.phase)
        if key in merged:
            merged[key].merge(bucket)
        else:
            merged[key] = bucket
    return [merged[k] for k in sorted(merged)]


def load_timeline(record_dir: Path) -> list[Tick]:
    """The shape's ticks, in time order."""
    path = record_dir / TIMELINE_FILE
    if not path.exists():
        return []
    return sorted((Tick(**row) for row in _read_lines([path])), key=lambda t: t.t)


@dataclass
class Recorded:
    """Everything the locust processes of one run recorded."""

    orders: list[OrderRecord]
    buckets: list[Bucket]
    timeline: list[Tick]

    @property
    def started(self) -> float:
        """Epoch a little before the first tick or order: rows accepted after it are this run's."""
        firsts = [t.t for t in self.timeline[:1]] + [o.t for o in self.orders[:1]]
        return min(firsts, default=0.0) - 1.0


def load_run(record_dir: Path) -> Recorded:
    """Read every record file in ``record_dir``."""
    if not record_dir.is_dir():
        raise FileNotFoundError(f"no record directory {record_dir}")
    return Recorded(load_orders(record_dir), load_buckets(record_dir), load_timeline(record_dir))
