"""The consumer watchdog: a worker cut off from its broker ends itself for the restart policy."""

from __future__ import annotations

import threading

from services.worker.liveness import ConsumerWatchdog
from tests.support import wait_until


def test_silence_past_the_limit_expires_the_watchdog() -> None:
    watchdog = ConsumerWatchdog(0.2, exit_process=False)
    watchdog.start()
    wait_until(watchdog.expired.is_set, 30, "the watchdog to expire without heartbeats")


def test_heartbeats_keep_the_watchdog_quiet_and_stop_ends_it() -> None:
    watchdog = ConsumerWatchdog(5.0, exit_process=False)
    watchdog.start()
    done = threading.Event()
    beats = 0
    while beats < 40:  # ~2 s of heartbeats, well inside the limit each time
        watchdog.beat()
        beats += 1
        done.wait(0.05)
    watchdog.stop()
    assert not watchdog.expired.is_set()
    assert watchdog.silence_seconds() < 5.0
