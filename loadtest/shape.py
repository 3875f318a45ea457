"""The spike ``LoadTestShape``: :func:`loadtest.schedule.schedule` driven by locust's clock.

Sizes and durations come from ``SPIKE_*`` environment variables (``SPIKE_PRESET``,
``SPIKE_BASELINE_USERS``, ``SPIKE_SPIKE_USERS``, ``SPIKE_BASELINE_SECONDS``...), which the
runner sets from its flags; in a distributed run only the master's environment matters.

Phase changes are announced to every user-running process with a custom message, so
shoppers switch from browsing to buying at the same moment the user count jumps.
"""

from __future__ import annotations

import time

from locust import LoadTestShape

from loadtest.schedule import Phase, SpikeConfig, schedule

PHASE_MESSAGE = "spike_phase"
"""Custom locust message carrying the new phase name to workers (or to the local runner)."""


class SpikeShape(LoadTestShape):
    """Baseline, near-instant jump, hold, fall back, recovery, stop."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # locust: unannotated
        self.config = SpikeConfig.from_env()
        self.phase: Phase | None = None
        self.phase_started_at = 0.0  # epoch of the last phase change, for exact windows
        self.target_users = 0

    def tick(self) -> tuple[int, float] | None:
        """Locust calls this about once a second; ``None`` ends the run."""
        stage = schedule(self.get_run_time(), self.config)  # type: ignore[no-untyped-call]  # locust
        if stage is None:
            return None
        if stage.phase != self.phase:
            self.phase = stage.phase
            self.phase_started_at = time.time()
            if self.runner is not None:
                self.runner.send_message(PHASE_MESSAGE, stage.phase)
        self.target_users = stage.users
        return stage.users, stage.spawn_rate
