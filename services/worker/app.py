"""The Celery application of the worker service: ``celery -A services.worker.app worker``.

Reliability settings (see ``shared/reference/stack-notes.md``): a message is acknowledged
only after its task returned (``task_acks_late``), and requeued if the worker dies
mid-task (``task_reject_on_worker_lost``; without it a lost worker acks and drops);
prefetch 1 so a crash strands at most one unstarted message per slot; publisher confirms
on every publish (retries, dead letters), since RabbitMQ may drop unconfirmed ones.

The pool is a setting (``WORKER_POOL``, Celery's ``worker_pool``; default: gmpworker's
``gmpworker.celery:GMPPool``, GOMAXPROCS from ``GMP_MAXPROCS``): the tasks do not
depend on which pool runs them.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from celery import Celery, signals
from prometheus_client import REGISTRY, CollectorRegistry, multiprocess, start_http_server

from gmpworker import Runtime
from gmpworker.celery import runtime_started
from services.messaging import durable_queue, routing_config
from services.settings import get_settings
from services.swap import enforce_no_swap
from services.worker.config import get_worker_options
from services.worker.context import close_context
from services.worker.liveness import ConsumerWatchdog
from services.worker.runtime_metrics import register_runtime

log = logging.getLogger(__name__)


def create_app() -> Celery:
    """A Celery app configured from :func:`get_settings` and :func:`get_worker_options`."""
    settings = get_settings()
    options = get_worker_options()
    celery = Celery("flashsale", broker=settings.broker_url, include=["services.worker.tasks"])
    celery.conf.update(
        **routing_config(settings),
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        # A lost broker connection would redeliver the running tasks' messages anyway;
        # cancelling them avoids running each twice at once (both are idempotent).
        worker_cancel_long_running_tasks_on_connection_loss=True,
        accept_content=["json"],
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_pool=options.pool,
        worker_concurrency=settings.worker_concurrency,
        gmp_maxprocs=settings.gmp_maxprocs,  # GOMAXPROCS of the gmpworker pool's Runtime
    )
    return celery


app = create_app()


@runtime_started.connect
def _export_runtime_metrics(runtime: Runtime, **_: Any) -> None:
    # The gmpworker pool's Runtime, as gmp_* metrics on the worker's /metrics.
    register_runtime(runtime)


@signals.worker_init.connect
def _on_worker_init(**_: Any) -> None:
    enforce_no_swap(get_settings())
    _start_metrics_server(get_worker_options().metrics_port)


@signals.worker_ready.connect
def _declare_dead_letter_queue(**_: Any) -> None:
    # Declared up front so it shows in queue-depth metrics before the first dead letter.
    with app.connection_for_write() as conn:
        durable_queue(get_settings().dead_letter_queue)(conn.default_channel).declare()


_watchdog = ConsumerWatchdog(get_worker_options().broker_lost_exit_seconds)


@signals.worker_ready.connect
def _start_watchdog(**_: Any) -> None:
    _watchdog.start()


@signals.worker_ready.connect
@signals.heartbeat_sent.connect
def _touch_heartbeat(**_: Any) -> None:
    # heartbeat_sent fires from the consumer's own timer (every 2 s while events are on),
    # so a fresh file means the consumer loop is alive, not merely the process.
    Path(get_worker_options().heartbeat_file).touch()
    _watchdog.beat()


@signals.worker_shutting_down.connect
def _stop_watchdog(**_: Any) -> None:
    # A warm shutdown stops the heartbeat while it finishes the tasks in hand.
    _watchdog.stop()


@signals.worker_shutdown.connect
def _on_worker_shutdown(**_: Any) -> None:
    Path(get_worker_options().heartbeat_file).unlink(missing_ok=True)
    close_context()


def _start_metrics_server(port: int) -> None:
    """Serve this process's metrics (every pool process's, in multiprocess mode)."""
    if port <= 0:
        return
    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    start_http_server(port, registry=registry)
    log.info("worker metrics on :%d/metrics", port)
