"""GMPPool after a broker reconnect: the callbacks (acks) of new tasks still run.

The pool hands Celery's callbacks to the consumer's hub with one scheduled drain at a
time. When the broker connection breaks, the hub may drop the ready batch holding that
drain (one of its callbacks raised on the dead connection, and the rest of the popped
batch is never run). Celery re-registers the pool with the event loop when it reconnects,
and the pool must schedule its drain again then: otherwise no task is acknowledged
again and the broker's unacked count grows by one per task.
"""

from __future__ import annotations

from typing import Any

from kombu.asynchronous import Hub

from gmpworker.celery import GMPPool


def run_ready(hub: Hub) -> None:
    """Run what the hub would run on its next loop turn."""
    for callback in hub._pop_ready():
        callback()


def test_callbacks_delivered_after_a_lost_drain_run_once_the_pool_is_re_registered() -> None:
    pool = GMPPool(limit=2)
    hub = Hub()
    pool.register_with_event_loop(hub)
    acked: list[Any] = []

    pool.deliver(acked.append, "before the connection broke")
    hub._pop_ready()  # the batch holding the scheduled drain is lost with the connection
    pool.deliver(acked.append, "after the reconnect")
    run_ready(hub)
    assert acked == []  # nothing scheduled: the pool believes its drain is still pending

    pool.register_with_event_loop(hub)  # Celery does this on every reconnect
    run_ready(hub)
    assert acked == ["before the connection broke", "after the reconnect"]

    pool.deliver(acked.append, "later")
    run_ready(hub)
    assert acked[-1] == "later"


def test_re_registering_with_nothing_queued_schedules_nothing() -> None:
    pool = GMPPool(limit=2)
    hub = Hub()
    pool.register_with_event_loop(hub)
    pool.register_with_event_loop(hub)
    assert not hub._pop_ready()
