"""Admission control: a bounded number of requests in flight per api process, per gate.

Under overload an unbounded server only queues: throughput stays flat and every extra
request becomes waiting (at 1,024 connections, p99 of seconds and client time-outs). Here
each gate admits at most ``limit`` requests at once; the next one is answered at once with
``503 overloaded`` and ``Retry-After`` before its body is even read, so the admitted ones
keep a low latency however much load arrives, and the client learns in a millisecond to
come back instead of watching a spinner.

Why 503 and not 429: 429 says *this client* sent too many requests (a per-client rate
limit); here the process is over capacity whoever is asking, which is what RFC 9110 gives
503 for ("temporarily overloaded"). Clients and load balancers also treat 503 as "another
instance may serve it", which is right for a per-process limit.

The limits (``Settings.order_admission_limit``, ``read_admission_limit``) follow Little's
law, in flight = throughput x latency: the README's benchmark section gives the measured
order throughput of one process and the latency budget the default was derived from.
The gate is a plain counter: the event loop is single-threaded, so no lock is needed.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Receive, Scope, Send

from services.api.errors import error_response
from services.metrics import ADMISSION_GATES, ADMISSION_REJECTED
from services.settings import Settings


@dataclass(frozen=True)
class RouteLabel:
    """Stands for the matched route in the scope of a request the router never saw."""

    path: str


@dataclass
class Gate:
    """Requests of one kind (``method`` on a path starting with ``path``) and their bound."""

    name: str
    method: str
    path: str
    limit: int
    exact: bool = False
    """Match ``path`` exactly rather than as a prefix."""
    wait_seconds: float = 0.0
    """How long a request beyond the limit may wait for a place before it is refused."""
    in_flight: int = 0
    waiting: collections.deque[asyncio.Future[None]] = field(default_factory=collections.deque)

    @property
    def route(self) -> str:
        """The ``route`` label of a rejected request in ``http_requests_total``: the path
        as a template (``/items*`` for a prefix), never "unmatched"."""
        return self.path if self.exact else f"{self.path}*"

    async def enter(self) -> bool:
        """Take a place: at once if one is free, else the first to free up within
        ``wait_seconds`` (first come, first served); ``False`` if none did."""
        if self.in_flight < self.limit:
            self.in_flight += 1
            return True
        if self.wait_seconds <= 0:
            return False
        place = asyncio.get_running_loop().create_future()
        self.waiting.append(place)
        try:
            async with asyncio.timeout(self.wait_seconds):
                await place
        except TimeoutError:
            pass
        except asyncio.CancelledError:
            if place.done() and not place.cancelled():
                self.leave()  # handed a place just as the client went away: pass it on
            raise
        # A place handed over just as the time-out fired is still ours: never lose it.
        if place.done() and not place.cancelled():
            return True
        place.cancel()  # :meth:`leave` skips it
        return False

    def leave(self) -> None:
        """Give the place back: to the oldest waiting request, or free it."""
        while self.waiting:
            place = self.waiting.popleft()
            if not place.done():
                place.set_result(None)
                return
        self.in_flight -= 1

    def matches(self, scope: Scope) -> bool:
        """Whether this request belongs to the gate."""
        if scope["method"] != self.method:
            return False
        path: str = scope["path"]
        return path == self.path if self.exact else path.startswith(self.path)


class AdmissionMiddleware:
    """Pure ASGI middleware: ``503 overloaded`` beyond a gate's limit, counted per gate."""

    def __init__(self, app: ASGIApp, gates: list[Gate], retry_after_seconds: int) -> None:
        self.app = app
        self.gates = gates
        self.headers = {"Retry-After": str(retry_after_seconds)}
        self._rejected = {gate.name: ADMISSION_REJECTED.labels(gate.name) for gate in gates}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Admit the request, or reject it at once if its gate is full."""
        gate = self._gate_of(scope) if scope["type"] == "http" else None
        if gate is None:
            await self.app(scope, receive, send)
            return
        if not await gate.enter():
            self._rejected[gate.name].inc()
            # The router never sees the request: label it for the metrics middleware
            # (which reads ``scope["route"].path``) as the router would have.
            scope["route"] = RouteLabel(gate.route)
            detail = f"more than {gate.limit} {gate.name} requests in flight; retry shortly"
            await error_response(503, "overloaded", detail, self.headers)(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            gate.leave()

    def _gate_of(self, scope: Scope) -> Gate | None:
        for gate in self.gates:
            if gate.matches(scope):
                return gate
        return None


def admission_gates(settings: Settings) -> list[Gate]:
    """The api's gates: ``POST /orders`` and the item reads (``GET /items...``)."""
    orders, reads = ADMISSION_GATES
    return [
        Gate(
            orders,
            "POST",
            "/orders",
            settings.order_admission_limit,
            exact=True,
            wait_seconds=settings.admission_wait_seconds,
        ),
        Gate(
            reads,
            "GET",
            "/items",
            settings.read_admission_limit,
            wait_seconds=settings.admission_wait_seconds,
        ),
    ]
