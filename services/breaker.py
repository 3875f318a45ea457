"""Circuit breakers: fail fast while a dependency is known to be down.

Without them, every request that needs a dead Redis or PostgreSQL waits for its own
connect or command time-out before it is answered: seconds per request, and the waiting
requests hold connections and sockets while the dependency is away. A breaker per
dependency turns that into one wait:

- **closed** (normal): calls go through. The first connection-level failure
  (:meth:`CircuitBreaker.trip`, fed by :class:`services.cache.DependencyHealth`) opens it.
- **open**: callers check :attr:`CircuitBreaker.is_open` and answer at once without
  touching the dependency (an order gets ``503`` with ``Retry-After``, an item read goes
  to the other source). One background probe per breaker asks the dependency every
  ``probe_interval`` (a ``PING``, ``SELECT 1``) with a short time-out.
- the first probe that succeeds closes it (the probe is the half-open trial: one call,
  not a burst of real requests).

The broker's equivalent is the publisher's own connection state (``services.publisher``).
State is exported as ``circuit_breaker_open{dependency}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, ParamSpec, TypeVar

from services.metrics import CIRCUIT_BREAKER_OPEN, CIRCUIT_BREAKER_TRIPS

log = logging.getLogger(__name__)

Probe = Callable[[], Awaitable[Any]]
P = ParamSpec("P")
T = TypeVar("T")


class DependencyDown(Exception):
    """A call was refused because its dependency's breaker is open."""

    def __init__(self, dependency: str) -> None:
        super().__init__(f"{dependency} is down (circuit open)")
        self.dependency = dependency


class CircuitBreaker:
    """The breaker of one dependency, with its background probe (see the module docstring)."""

    def __init__(
        self, dependency: str, probe: Probe, probe_interval: float, probe_timeout: float
    ) -> None:
        self.dependency = dependency
        self._probe = probe
        self.probe_interval = probe_interval
        self.probe_timeout = probe_timeout
        self._prober: asyncio.Task[None] | None = None
        self.probes = 0  # probes sent since start (tests and logs)
        CIRCUIT_BREAKER_OPEN.labels(dependency).set(0)

    @property
    def is_open(self) -> bool:
        """True while the dependency is known to be down."""
        return self._prober is not None

    def check(self) -> None:
        """Raise :class:`DependencyDown` while open."""
        if self._prober is not None:
            raise DependencyDown(self.dependency)

    def guard(
        self, call: Callable[P, Awaitable[T]], failures: tuple[type[BaseException], ...]
    ) -> Callable[P, Awaitable[T]]:
        """``call`` refused at once while open, and tripping the breaker when it raises one
        of ``failures`` (the errors that mean "could not reach it")."""

        @functools.wraps(call)
        async def guarded(*args: P.args, **kwargs: P.kwargs) -> T:
            self.check()
            try:
                return await call(*args, **kwargs)
            except failures:
                self.trip()
                raise

        return guarded

    def trip(self) -> None:
        """A call failed to reach the dependency: open, and start probing (on this loop)."""
        if self._prober is not None:
            return
        log.warning("%s unreachable: circuit open, probing every %.2fs", self.dependency,
                    self.probe_interval)  # fmt: skip
        CIRCUIT_BREAKER_TRIPS.labels(self.dependency).inc()
        CIRCUIT_BREAKER_OPEN.labels(self.dependency).set(1)
        self._prober = asyncio.get_running_loop().create_task(self._probe_until_back())

    async def _probe_until_back(self) -> None:
        while True:
            await asyncio.sleep(self.probe_interval)
            self.probes += 1
            try:
                await asyncio.wait_for(self._probe(), self.probe_timeout)
            except Exception as exc:
                log.debug("%s probe failed: %r", self.dependency, exc)
                continue
            break
        self._prober = None
        CIRCUIT_BREAKER_OPEN.labels(self.dependency).set(0)
        log.warning("%s answers again: circuit closed", self.dependency)

    async def stop(self) -> None:
        """Cancel the probe (shutdown); the breaker is left closed."""
        prober, self._prober = self._prober, None
        if prober is not None:
            prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await prober


class Breakers(Mapping[str, CircuitBreaker]):
    """The breakers of one process, by dependency name."""

    def __init__(
        self, probes: Mapping[str, Probe], probe_interval: float, probe_timeout: float
    ) -> None:
        self._breakers = {
            name: CircuitBreaker(name, probe, probe_interval, probe_timeout)
            for name, probe in probes.items()
        }

    def __getitem__(self, name: str) -> CircuitBreaker:
        return self._breakers[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._breakers)

    def __len__(self) -> int:
        return len(self._breakers)

    def is_open(self, name: str) -> bool:
        """Whether ``name`` has a breaker and it is open."""
        breaker = self._breakers.get(name)
        return breaker is not None and breaker.is_open

    def trip(self, name: str) -> None:
        """Open ``name``'s breaker, if it has one."""
        breaker = self._breakers.get(name)
        if breaker is not None:
            breaker.trip()

    async def stop(self) -> None:
        """Stop every probe."""
        for breaker in self._breakers.values():
            await breaker.stop()
