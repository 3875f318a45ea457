"""The spike schedule as pure functions: which phase a moment belongs to and how many users run.

Kept free of locust so the runner, the verifier and the tests can import it without
gevent's monkey-patching; :mod:`loadtest.shape` wraps it in a ``LoadTestShape``.

Timeline (seconds from the start of the run)::

    users
    spike  |            +---------+
           |            |         |
    base   |  +---------+         +-----------+
           +--+---------+---------+-----------+--> t
              baseline    spike     recovery   stop

The jump and the fall back happen within ``jump_seconds``: the spawn rate is the jump
divided by it, so locust never skips the spike stage (its ``start()`` blocks until a
ramp completes).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Literal, NamedTuple

Phase = Literal["baseline", "spike", "recovery"]
PHASES: tuple[Phase, ...] = ("baseline", "spike", "recovery")
ENV_PREFIX = "SPIKE_"


@dataclass(frozen=True)
class SpikeConfig:
    """Sizes and durations of one spike run."""

    baseline_users: int = 20
    spike_users: int = 200
    baseline_seconds: float = 30.0
    spike_seconds: float = 30.0
    recovery_seconds: float = 30.0
    jump_seconds: float = 1.0

    def __post_init__(self) -> None:
        if self.baseline_users < 1:
            raise ValueError(f"baseline_users must be >= 1, got {self.baseline_users}")
        if self.spike_users <= self.baseline_users:
            raise ValueError(
                f"spike_users ({self.spike_users}) must exceed baseline_users"
                f" ({self.baseline_users})"
            )
        for name in ("baseline_seconds", "spike_seconds", "recovery_seconds", "jump_seconds"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")

    @property
    def total_seconds(self) -> float:
        """Length of the whole run; the shape stops after it."""
        return self.baseline_seconds + self.spike_seconds + self.recovery_seconds

    @property
    def spike_window(self) -> tuple[float, float]:
        """Start and end of the spike, in seconds from the start of the run."""
        return self.baseline_seconds, self.baseline_seconds + self.spike_seconds

    @property
    def jump_spawn_rate(self) -> float:
        """Users per second for the jump and the fall back: the whole jump within jump_seconds."""
        return math.ceil((self.spike_users - self.baseline_users) / self.jump_seconds)

    def to_env(self) -> dict[str, str]:
        """This config as ``SPIKE_*`` environment variables (read back by :meth:`from_env`)."""
        return {ENV_PREFIX + key.upper(): str(value) for key, value in asdict(self).items()}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SpikeConfig:
        """The preset named by ``SPIKE_PRESET`` (default ``default``), overridden by ``SPIKE_*``."""
        environ = os.environ if environ is None else environ
        base = preset(environ.get(ENV_PREFIX + "PRESET", "default"))
        overrides: dict[str, float | int] = {}
        for field in fields(cls):
            raw = environ.get(ENV_PREFIX + field.name.upper())
            if raw is None or raw == "":
                continue
            kind = int if field.type in (int, "int") else float
            try:
                overrides[field.name] = kind(raw)
            except ValueError:
                raise ValueError(
                    f"{ENV_PREFIX}{field.name.upper()}={raw!r} is not a valid {kind.__name__}"
                ) from None
        return replace(base, **overrides)  # type: ignore[arg-type]


PRESETS: dict[str, SpikeConfig] = {
    # Fits a 2-core machine that also runs the api, worker, Redis, PostgreSQL and RabbitMQ.
    "default": SpikeConfig(),
    # For a machine with cores to spare (run locust distributed: --workers N).
    "full": SpikeConfig(
        baseline_users=200,
        spike_users=2000,
        baseline_seconds=60,
        spike_seconds=120,
        recovery_seconds=60,
        jump_seconds=2,
    ),
    # A smoke run for the test suite: well under a minute.
    "smoke": SpikeConfig(
        baseline_users=4, spike_users=40, baseline_seconds=6, spike_seconds=8, recovery_seconds=6
    ),
}


def preset(name: str) -> SpikeConfig:
    """The named preset; a ``ValueError`` lists the known names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown spike preset {name!r}; known: {', '.join(PRESETS)}") from None


class Stage(NamedTuple):
    """What the shape asks locust for at one moment."""

    phase: Phase
    users: int
    spawn_rate: float


def phase_at(elapsed: float, config: SpikeConfig) -> Phase | None:
    """The phase ``elapsed`` seconds into the run, or ``None`` once the run is over."""
    spike_start, spike_end = config.spike_window
    if elapsed < spike_start:
        return "baseline"
    if elapsed < spike_end:
        return "spike"
    if elapsed < config.total_seconds:
        return "recovery"
    return None


def schedule(elapsed: float, config: SpikeConfig) -> Stage | None:
    """Users and spawn rate ``elapsed`` seconds into the run; ``None`` means stop.

    The baseline ramps up within ``jump_seconds`` as well, so the baseline phase measures
    a steady load rather than a ramp.
    """
    phase = phase_at(elapsed, config)
    if phase is None:
        return None
    if phase == "spike":
        return Stage(phase, config.spike_users, config.jump_spawn_rate)
    if phase == "baseline":
        rate = math.ceil(config.baseline_users / config.jump_seconds)
        return Stage(phase, config.baseline_users, rate)
    return Stage(phase, config.baseline_users, config.jump_spawn_rate)
