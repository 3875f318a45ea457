"""``python -m services.reconciler``: reconcile every ``RECONCILE_INTERVAL_SECONDS``.

Metrics on ``RECONCILER_METRICS_PORT`` (default 9102). A failed pass (database or broker
down) is logged and retried at the next interval; SIGTERM or Ctrl-C stops between passes.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType

from prometheus_client import start_http_server

from services.reconciler.reconcile import Reconciler
from services.settings import get_settings
from services.swap import enforce_no_swap

log = logging.getLogger("services.reconciler")


def main() -> None:
    """Run passes until stopped."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = get_settings()
    enforce_no_swap(settings)
    port = int(os.environ.get("RECONCILER_METRICS_PORT", "9102"))
    start_http_server(port)
    stop = threading.Event()

    def request_stop(signum: int, _: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    reconciler = Reconciler(settings)
    log.info("reconciling every %.1f s, metrics on :%d", settings.reconcile_interval_seconds, port)
    try:
        while not stop.is_set():
            try:
                report = reconciler.run_once()
                log.info(
                    "pass: %d pending, %d re-published, %d marked persisted, %d stock repairs",
                    report.pending,
                    len(report.republished),
                    len(report.marked_persisted),
                    len(report.stock_repairs),
                )
            except Exception:
                log.exception(
                    "reconcile pass failed; next try in %.1f s", settings.reconcile_interval_seconds
                )
            stop.wait(settings.reconcile_interval_seconds)
    finally:
        reconciler.close()


if __name__ == "__main__":
    main()
