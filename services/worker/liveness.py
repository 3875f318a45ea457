"""The worker exits when its consumer has been cut off from the broker for too long.

Celery reconnects by itself after a broker restart; but a reconnect can also hang or
loop for ever, and then the process keeps running without consuming. A container
healthcheck would only mark it ``unhealthy``, and Docker never restarts an unhealthy
container: only a process that exits is replaced by the restart policy. So a watchdog
thread watches the consumer's heartbeat (``heartbeat_sent`` fires every 2 s from the
consumer's own event loop, and only while it is connected) and ends the process when
none came for ``WORKER_BROKER_LOST_EXIT_SECONDS``.

Ending it abruptly is safe: messages are acknowledged only after their order is
committed (``acks_late``), so the broker redelivers whatever was in hand, and
persistence is idempotent.
"""

from __future__ import annotations

import logging
import os
import threading
import time

log = logging.getLogger(__name__)

EXIT_STATUS = 75
"""EX_TEMPFAIL: the restart policy should start the worker again."""


class ConsumerWatchdog:
    """Ends the process when :meth:`beat` was not called for ``limit_seconds``."""

    def __init__(self, limit_seconds: float, exit_process: bool = True) -> None:
        self.limit_seconds = limit_seconds
        self.exit_process = exit_process
        self._last_beat = time.monotonic()
        self._stopped = threading.Event()
        self.expired = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="consumer-watchdog", daemon=True)

    def start(self) -> None:
        """Start watching (the consumer counts as alive right now)."""
        self.beat()
        self._thread.start()

    def beat(self) -> None:
        """The consumer is alive and connected."""
        self._last_beat = time.monotonic()

    def stop(self) -> None:
        """Stop watching (a shutdown that stops the heartbeat on purpose)."""
        self._stopped.set()

    def silence_seconds(self) -> float:
        """Seconds since the last beat."""
        return time.monotonic() - self._last_beat

    def _watch(self) -> None:
        interval = min(1.0, self.limit_seconds / 4)
        while not self._stopped.wait(interval):
            silence = self.silence_seconds()
            if silence < self.limit_seconds:
                continue
            log.critical(
                "no consumer heartbeat for %.0f s (broker unreachable or consumer stuck):"
                " exiting so the restart policy starts a fresh worker",
                silence,
            )
            self.expired.set()
            if self.exit_process:
                logging.shutdown()
                os._exit(EXIT_STATUS)  # a warm shutdown would wait on the dead broker
            return
