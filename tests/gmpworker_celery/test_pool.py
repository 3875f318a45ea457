"""The gmpworker Celery pool's contract, on a real worker subprocess and a real RabbitMQ.

One worker (``-P custom`` route) serves the read-only contract tests of the module;
the tests that stop or kill a worker start their own.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from celery.exceptions import TaskRevokedError, TimeLimitExceeded

from tests.gmpworker_celery.pool_support import PoolWorker, events, ready_messages
from tests.support import (
    AMQP_HOST,
    PG_ADMIN_URL,
    REDIS_HOST_URL,
    create_vhost,
    delete_vhost,
    require,
    unique_name,
    wait_until,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def pool_env() -> Iterator[dict[str, str]]:
    """A vhost and a Redis prefix of this module's own (PostgreSQL is only read)."""
    vhost = create_vhost()
    prefix = unique_name("rk") + ":"
    env = {
        "TEST_BROKER_URL": f"amqp://guest:guest@{AMQP_HOST}/{vhost}",
        "TEST_REDIS_URL": f"{REDIS_HOST_URL}/2",
        "TEST_PREFIX": prefix,
        "TEST_PG_URL": PG_ADMIN_URL,
    }
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)  # the test app (imported below) reads them once
    yield env
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    delete_vhost(vhost)
    client = redis.Redis.from_url(env["TEST_REDIS_URL"])
    for key in client.scan_iter(match=f"{prefix}*"):
        client.delete(key)
    client.close()


@pytest.fixture(scope="module")
def testapp(pool_env: dict[str, str]) -> Any:
    """The test app's module, configured for this module's vhost and prefix."""
    import tests.gmpworker_celery.testapp as module

    module.app.conf.broker_url = pool_env["TEST_BROKER_URL"]
    module.PREFIX = pool_env["TEST_PREFIX"]
    return module


@pytest.fixture(scope="module")
def shared_worker(
    pool_env: dict[str, str], testapp: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PoolWorker]:
    """The module's worker: GOMAXPROCS=1, concurrency 8, started with ``-P custom``."""
    worker = PoolWorker(pool_env, tmp_path_factory.mktemp("pool"), concurrency=8, procs=1)
    worker.start()
    yield worker
    worker.kill()


@pytest.fixture
def own_worker(pool_env: dict[str, str], testapp: Any, tmp_path: Path) -> Iterator[PoolWorker]:
    """A worker for one test (not started), on a queue of the test's own."""
    worker = PoolWorker(pool_env, tmp_path, concurrency=2, procs=1, queue=unique_name("q"))
    yield worker
    worker.kill()


@pytest.fixture
def rdb(pool_env: dict[str, str]) -> Iterator[redis.Redis]:
    """The Redis client the tasks leave their traces in."""
    client = redis.Redis.from_url(pool_env["TEST_REDIS_URL"])
    yield client
    client.close()


def tag() -> str:
    """A unique label for one task's traces."""
    return uuid.uuid4().hex[:8]


# --- results, failures, retries ---------------------------------------------------------


def test_sync_task_result_comes_from_a_g_on_an_m(testapp: Any, shared_worker: PoolWorker) -> None:
    result = testapp.add.delay(2, 3).get(timeout=20)
    assert result["sum"] == 5
    assert result["goid"] > 0  # it ran inside a G...
    assert result["thread"].startswith("gmp-M")  # ...in syscall mode on one of the Ms


def test_async_tasks_run_natively_with_their_request(
    testapp: Any, shared_worker: PoolWorker
) -> None:
    sent = testapp.async_sleep.delay(0.05)
    result = sent.get(timeout=20)
    assert result["id"] == sent.id  # self.request works in the native phase
    assert result["goid"] > 0
    assert testapp.async_fanout.delay(20).get(timeout=20) == sum(range(20))


def test_many_parked_async_tasks_share_few_threads(testapp: Any, shared_worker: PoolWorker) -> None:
    sent = [testapp.async_sleep.delay(3.0) for _ in range(8)]
    snapshots: list[dict[str, Any]] = []

    def all_parked() -> bool:
        replies = testapp.app.control.inspect(timeout=2, limit=1).stats() or {}
        gmp = replies.get(f"{shared_worker.name}@{_host()}", {}).get("pool", {}).get("gmpworker")
        snapshots.append(gmp or {})
        return bool(gmp) and gmp["gs_by_state"].get("waiting", 0) >= 8

    wait_until(all_parked, 20, "the 8 tasks to park on their timers")
    # 8 tasks parked at once, on a runtime that never needed 8 threads for them
    assert snapshots[-1]["threads"] < 8
    assert len({r.get(timeout=20)["goid"] for r in sent}) == 8  # eight Gs


def test_a_g_that_raises_fails_its_task_and_acks_it(
    testapp: Any, shared_worker: PoolWorker, pool_env: dict[str, str]
) -> None:
    with pytest.raises(ValueError, match="kaboom"):
        testapp.boom.delay("kaboom").get(timeout=20)
    assert testapp.add.delay(1, 1).get(timeout=20)["sum"] == 2  # the worker lives on
    assert ready_messages(pool_env["TEST_BROKER_URL"]) == 0


@pytest.mark.parametrize("task_name", ["flaky", "async_flaky"])
def test_autoretry_retries_until_success(
    testapp: Any, shared_worker: PoolWorker, task_name: str
) -> None:
    task = getattr(testapp, task_name)
    assert task.delay(tag(), 2).get(timeout=30) == 3  # failed twice, retried, then ran


def test_worker_lost_g_is_requeued_by_celerys_rules(
    testapp: Any, shared_worker: PoolWorker, rdb: redis.Redis
) -> None:
    key = tag()
    # First delivery raises SystemExit in its G (the pool reports WorkerLostError and,
    # with task_reject_on_worker_lost, Celery requeues); the redelivery succeeds.
    assert testapp.die_once.delay(key).get(timeout=30) == "second life"
    assert int(rdb.get(f"{testapp.PREFIX}tries:{key}") or 0) == 2


# --- time limits, revoke ----------------------------------------------------------------


def test_soft_time_limit_is_raised_inside_sync_and_async_bodies(
    testapp: Any, shared_worker: PoolWorker
) -> None:
    # async_soft catches the limit, then awaits gmp.sleep and a channel: it must succeed.
    assert testapp.soft_sync.delay().get(timeout=20) == "soft"
    assert testapp.async_soft.delay().get(timeout=20) == "soft"


def test_hard_time_limit_fails_the_task_and_stops_it(
    testapp: Any, shared_worker: PoolWorker, rdb: redis.Redis
) -> None:
    label = tag()
    with pytest.raises(TimeLimitExceeded):
        testapp.hard_sync.delay(label).get(timeout=20)
    # Stopped cooperatively: its G is gone from inspect active, the worker still serves.
    wait_until(lambda: not _active(testapp, shared_worker), 10, "the G to be stopped")
    assert testapp.add.delay(2, 2).get(timeout=20)["sum"] == 4
    assert f"start:{label}" in events(rdb, testapp.PREFIX)


def test_inspect_active_shows_the_g_and_revoke_terminate_cancels_it(
    testapp: Any, shared_worker: PoolWorker, rdb: redis.Redis, pool_env: dict[str, str]
) -> None:
    label = tag()
    sent = testapp.record.delay(label, 20)
    wait_until(lambda: bool(_active(testapp, shared_worker)), 10, "the task to show as active")
    [active] = _active(testapp, shared_worker)
    assert active["id"] == sent.id
    assert isinstance(active["worker_pid"], int) and active["worker_pid"] > 0  # the G id
    testapp.app.control.revoke(sent.id, terminate=True)
    with pytest.raises(TaskRevokedError):
        sent.get(timeout=10)
    wait_until(lambda: not _active(testapp, shared_worker), 10, "the G to end")
    assert f"start:{label}" in events(rdb, testapp.PREFIX)
    assert f"done:{label}" not in events(rdb, testapp.PREFIX)
    assert ready_messages(pool_env["TEST_BROKER_URL"]) == 0  # revoked = acked, not requeued


def test_inspect_stats_shows_the_runtime(testapp: Any, shared_worker: PoolWorker) -> None:
    stats = testapp.app.control.inspect(timeout=3).stats()[f"{shared_worker.name}@{_host()}"]
    pool = stats["pool"]
    assert pool["implementation"] == "gmpworker.celery:GMPPool"
    assert pool["max-concurrency"] == 8
    gmp = pool["gmpworker"]
    assert gmp["gomaxprocs"] == 1
    assert len(gmp["runqsizes"]) == 1
    assert gmp["threads"] >= 1
    assert gmp["spawned"] > 0 and gmp["syscalls"] > 0
    assert "gs_by_state" in gmp


def test_waiting_tasks_are_checked_for_expiry_and_revocation_when_a_slot_frees(
    testapp: Any, own_worker: PoolWorker, rdb: redis.Redis, pool_env: dict[str, str]
) -> None:
    """Both slots busy, four tasks prefetched and waiting: as under prefork, the one that
    expired, the one revoked and the one revoked with ``terminate`` never start."""
    own_worker.prefetch_multiplier = 4  # prefetch 8: tasks wait in the worker, not the broker
    own_worker.start()
    queue = own_worker.queue
    blockers = [tag() for _ in range(2)]
    for label in blockers:
        testapp.record.apply_async((label, 6.0), queue=queue)
    wait_until(
        lambda: all(f"start:{b}" in events(rdb, testapp.PREFIX) for b in blockers),
        15,
        "both slots to be taken",
    )
    expired, revoked, terminated, control = (tag() for _ in range(4))
    sent = {
        "expired": testapp.record.apply_async((expired, 0), queue=queue, expires=3.0),
        "revoked": testapp.record.apply_async((revoked, 0), queue=queue),
        "terminated": testapp.record.apply_async((terminated, 0), queue=queue),
        "control": testapp.record.apply_async((control, 0), queue=queue),
    }
    waiting = {result.id for result in sent.values()}
    wait_until(
        lambda: waiting <= {r["id"] for r in _reserved(testapp, own_worker)},
        10,
        "the four tasks to wait in the worker",
    )
    assert all(f"start:{b}" not in events(rdb, testapp.PREFIX) for b in (expired, control))
    testapp.app.control.revoke(sent["revoked"].id)
    testapp.app.control.revoke(sent["terminated"].id, terminate=True)

    assert sent["control"].get(timeout=30) == control  # it ran once a slot freed...
    for name in ("expired", "revoked", "terminated"):  # ...the others were discarded
        with pytest.raises(TaskRevokedError):
            sent[name].get(timeout=10)
    seen = events(rdb, testapp.PREFIX)
    first_free = min(seen.index(f"done:{b}") for b in blockers if f"done:{b}" in seen)
    assert seen.index(f"start:{control}") > first_free
    assert not {f"start:{expired}", f"start:{revoked}", f"start:{terminated}"} & set(seen)
    assert ready_messages(pool_env["TEST_BROKER_URL"], queue) == 0  # discarded = acked
    assert testapp.record.apply_async((tag(), 0), queue=queue).get(timeout=20)  # slots back


# --- the point of G-M-P -----------------------------------------------------------------


def test_task_blocked_in_the_database_does_not_stop_its_p(
    testapp: Any, shared_worker: PoolWorker, rdb: redis.Redis
) -> None:
    """GOMAXPROCS=1: while one task sits 500 ms in pg_sleep, the P runs the others."""
    require(_pg_ok(), f"PostgreSQL unreachable at {PG_ADMIN_URL}")
    mine = tag()
    blocked = testapp.db_sleep.delay(mine, 0.5)
    wait_until(lambda: f"db_sleep:start:{mine}" in events(rdb, testapp.PREFIX), 10, "the pg_sleep")
    labels = [f"quick:{tag()}" for _ in range(20)]
    quick = [testapp.stamp.delay(label) for label in labels]
    assert [r.get(timeout=20) for r in quick]
    assert blocked.get(timeout=20) >= 0.5  # it did sit in the database
    # This test's own events (the worker is shared): every quick task ran while the
    # blocked one was in the database, on the same P.
    seen = [e for e in events(rdb, testapp.PREFIX) if e.endswith(mine) or e in labels]
    assert seen[0] == f"db_sleep:start:{mine}"
    assert sorted(seen[1:21]) == sorted(labels)
    assert seen[21:] == [f"db_sleep:{mine}"]


# --- shutdown ---------------------------------------------------------------------------


def test_warm_shutdown_finishes_running_and_redelivers_queued(
    testapp: Any, own_worker: PoolWorker, rdb: redis.Redis, pool_env: dict[str, str]
) -> None:
    own_worker.route = "conf"  # the other documented route: worker_pool in the config
    # Prefetch 8 with concurrency 2: the four tasks that cannot start wait in the worker
    # (in Celery's semaphore, which GMPPool uses as prefork does), not in the broker, so
    # stopping must leave them unacknowledged for RabbitMQ to deliver them again.
    own_worker.prefetch_multiplier = 4
    own_worker.start()
    labels = [tag() for _ in range(6)]
    for label in labels:
        testapp.record.apply_async((label, 1.0), queue=own_worker.queue)
    wait_until(
        lambda: (
            sum(e.startswith("start:") and e[6:] in labels for e in events(rdb, testapp.PREFIX))
            == 2
        ),
        15,
        "two tasks to start",
    )
    wait_until(
        lambda: ready_messages(pool_env["TEST_BROKER_URL"], own_worker.queue) == 0,
        15,
        "the four others to wait in the worker",
    )
    assert own_worker.stop() == 0
    seen = events(rdb, testapp.PREFIX)
    started = [label for label in labels if f"start:{label}" in seen]
    assert len(started) == 2  # concurrency 2: the rest were never started...
    assert all(f"done:{label}" in seen for label in started)  # ...the running ones finished
    # ...and the others are back in the queue
    assert ready_messages(pool_env["TEST_BROKER_URL"], own_worker.queue) == 4
    own_worker.start()
    wait_until(
        lambda: all(f"done:{label}" in events(rdb, testapp.PREFIX) for label in labels),
        30,
        "the redelivered tasks",
    )
    seen = events(rdb, testapp.PREFIX)
    assert all(seen.count(f"done:{label}") == 1 for label in labels)  # none ran twice


def _host() -> str:
    import socket

    return socket.gethostname()


def _active(testapp: Any, worker: PoolWorker) -> list[dict[str, Any]]:
    replies = testapp.app.control.inspect(timeout=2).active() or {}
    return list(replies.get(f"{worker.name}@{_host()}", []))


def _reserved(testapp: Any, worker: PoolWorker) -> list[dict[str, Any]]:
    replies = testapp.app.control.inspect(timeout=2).reserved() or {}
    return list(replies.get(f"{worker.name}@{_host()}", []))


def _pg_ok() -> bool:
    try:
        psycopg.connect(PG_ADMIN_URL).close()
    except psycopg.OperationalError:
        return False
    return True


# --- native (async) bodies under limits, revoke and cold shutdown -------------------------


def test_hard_time_limit_ends_an_async_body_at_its_await(
    testapp: Any, shared_worker: PoolWorker, rdb: redis.Redis
) -> None:
    label = tag()
    with pytest.raises(TimeLimitExceeded):
        testapp.async_hard.delay(label).get(timeout=20)
    wait_until(lambda: not _active(testapp, shared_worker), 10, "the G to be stopped")
    seen = events(rdb, testapp.PREFIX)
    assert f"start:{label}" in seen and f"done:{label}" not in seen
    assert testapp.add.delay(2, 3).get(timeout=20)["sum"] == 5  # the worker still serves


def test_revoke_terminate_cancels_a_parked_async_body(
    testapp: Any, shared_worker: PoolWorker, rdb: redis.Redis, pool_env: dict[str, str]
) -> None:
    label = tag()
    sent = testapp.async_record.delay(label, 20)
    wait_until(lambda: f"start:{label}" in events(rdb, testapp.PREFIX), 10, "the body to park")
    testapp.app.control.revoke(sent.id, terminate=True)
    with pytest.raises(TaskRevokedError):
        sent.get(timeout=10)
    wait_until(lambda: not _active(testapp, shared_worker), 10, "the G to end")
    assert f"done:{label}" not in events(rdb, testapp.PREFIX)
    assert ready_messages(pool_env["TEST_BROKER_URL"]) == 0  # revoked = acked, not requeued


def test_cold_shutdown_stops_running_gs_without_waiting_and_loses_nothing(
    testapp: Any, own_worker: PoolWorker, rdb: redis.Redis, pool_env: dict[str, str]
) -> None:
    """SIGQUIT (``on_terminate``): the running bodies, sync and native, are interrupted
    instead of awaited, and their messages, never acknowledged (acks_late), come back."""
    own_worker.start()
    sync_label, async_label = tag(), tag()
    testapp.record.apply_async((sync_label, 60), queue=own_worker.queue)
    testapp.async_record.apply_async((async_label, 60), queue=own_worker.queue)
    wait_until(
        lambda: {f"start:{sync_label}", f"start:{async_label}"} <= set(events(rdb, testapp.PREFIX)),
        15,
        "both bodies to run",
    )
    code = own_worker.stop(timeout=30, how=signal.SIGQUIT)
    assert code is not None and code != -signal.SIGKILL, "it had to be killed"
    seen = events(rdb, testapp.PREFIX)
    assert f"done:{sync_label}" not in seen and f"done:{async_label}" not in seen
    assert ready_messages(pool_env["TEST_BROKER_URL"], own_worker.queue) == 2
