"""The experiments' load: keep-alive HTTP connections in a process of their own, every
request recorded (stream, start, latency, status) so any window can be measured afterwards.

``python -m loadtest.experiments.drive --port P --plan '<json>' --out FILE``

A plan is a list of streams: ``kind`` (``read``: ``GET /items/{id}``; ``order``: ``POST
/orders``), ``start_s``/``stop_s`` and ``connections`` (closed loop: each connection sends
its next request when the last one is answered). Items are drawn from a Zipf distribution
over the catalog, as in the spike test, so hot items see concurrent misses. The request
and response handling is :mod:`services.bench`'s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from loadtest.popularity import Zipf
from loadtest.runner import PYTHON, ROOT, RunnerError
from services.bench import CASES, Case, exchange, request_bytes

KINDS: dict[str, Case] = {
    "read": next(c for c in CASES if c.name == "cache_hit"),
    "order": next(c for c in CASES if c.name == "order"),
}
HOST = "127.0.0.1"


@dataclass(frozen=True)
class Stream:
    """``connections`` closed-loop connections of one request kind within a time window."""

    kind: str
    start_s: float
    stop_s: float
    connections: int


@dataclass(frozen=True)
class Request:
    """One request: its stream's kind, when it started (s since the load began), how long
    it took (s) and the answer's status (0: the connection failed)."""

    kind: str
    start_s: float
    latency_s: float
    status: int


async def _connection(stream: Stream, port: int, t0: float, zipf: Zipf, out: list[Request]) -> None:
    await asyncio.sleep(max(0.0, t0 + stream.start_s - time.perf_counter()))
    case, rng, n = KINDS[stream.kind], random.Random(), 0
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        while (began := time.perf_counter()) < t0 + stream.stop_s:
            n += 1
            try:
                status = await exchange(
                    reader, writer, request_bytes(case, HOST, rng, n, zipf.pick)
                )
            except (OSError, asyncio.IncompleteReadError):
                status = 0
                writer.close()
                reader, writer = await asyncio.open_connection(HOST, port)
            out.append(Request(stream.kind, began - t0, time.perf_counter() - began, status))
    finally:
        writer.close()


async def drive(plan: Sequence[Stream], port: int, items: int) -> list[Request]:
    """Run every stream of ``plan`` against ``127.0.0.1:port``; every request, in order."""
    zipf = Zipf(range(1, items + 1))
    out: list[Request] = []
    t0 = time.perf_counter() + 0.05
    await asyncio.gather(
        *(
            _connection(stream, port, t0, zipf, out)
            for stream in plan
            for _ in range(stream.connections)
        )
    )
    return sorted(out, key=lambda r: r.start_s)


def run_plan(plan: Sequence[Stream], port: int, items: int, out: Path) -> list[Request]:
    """:func:`drive` in a process of its own (its CPU is not the runner's); the requests."""
    spec = json.dumps([asdict(s) for s in plan])
    timeout = max(s.stop_s for s in plan) + 60
    command = [
        PYTHON, "-m", "loadtest.experiments.drive", "--port", str(port), "--plan", spec,
        "--items", str(items), "--out", str(out),
    ]  # fmt: skip
    proc = subprocess.run(
        command,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RunnerError(f"load driver failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return [Request(*row) for row in json.loads(out.read_text())]


# --- figures over a window ---------------------------------------------------------------------


def window(
    requests: Iterable[Request], kind: str, start_s: float = 0.0, stop_s: float = math.inf
) -> list[Request]:
    """The requests of ``kind`` that started within ``[start_s, stop_s)``."""
    return [r for r in requests if r.kind == kind and start_s <= r.start_s < stop_s]


def percentile_ms(requests: Sequence[Request], fraction: float) -> float:
    """Nearest-rank percentile of the latencies, in ms (0 when there is no request)."""
    if not requests:
        return 0.0
    ordered = sorted(r.latency_s for r in requests)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)] * 1000


def per_second(requests: Sequence[Request], stop_s: float) -> list[list[float]]:
    """``[second, p99 ms]`` for each whole second that had requests, for the plots."""
    points = []
    for second in range(math.ceil(stop_s)):
        inside = [r for r in requests if second <= r.start_s < second + 1]
        if inside:
            points.append([second + 0.5, percentile_ms(inside, 0.99)])
    return points


def main(argv: list[str] | None = None) -> None:
    """The driver process: run the plan, write the requests as JSON rows."""
    parser = argparse.ArgumentParser(prog="python -m loadtest.experiments.drive")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--plan", required=True, help="JSON list of streams")
    parser.add_argument("--items", type=int, required=True, help="catalog ids 1..N")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    plan = [Stream(**s) for s in json.loads(args.plan)]
    requests = asyncio.run(drive(plan, args.port, args.items))
    args.out.write_text(json.dumps([list(asdict(r).values()) for r in requests]))


if __name__ == "__main__":
    main()
