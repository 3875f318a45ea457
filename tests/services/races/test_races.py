"""Issue 17's races, one test each, every step held at its dangerous point.

Each test drives the real api (in-process) through TCP fault proxies in front of the real
Redis and RabbitMQ, the worker's own functions in-process (held between claim and commit
by a :class:`~race_support.Gate`), and ends on :meth:`~race_support.Race.check`'s invariants.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from race_support import Gate, Race, cancel_waits_for

from services.catalog import warmup
from services.store import Status
from services.worker import tasks
from services.worker.context import WorkerContext
from services.worker.items import ItemUpdate, apply_update
from tests.support import wait_until_async

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]


async def held_publish(
    race: Race, item_id: int, key: str
) -> tuple[asyncio.Task[Any], dict[str, Any]]:
    """An order whose message reached the broker but whose confirm is held back; the
    request is still waiting for it. Returns the request's task and the message."""
    await race.order(1, "warm-up", 1)  # the publisher's channel is open and used
    race.commit(race.take_messages())
    race.broker_proxy.hold_replies()
    request = asyncio.create_task(race.order(item_id, "ann", 2, key))
    await wait_until_async(lambda: race.queued() == 1, 10, "the message in the queue")
    [message] = race.take_messages()
    return request, message


async def test_race1_late_confirm_loses_to_the_worker_claim(
    race: Race, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The confirm is late, the worker has claimed the order and waits to commit: the api's
    cancel finds it claimed, so the client gets 202 (true), never "nothing was reserved"."""
    gate = Gate()
    cancel_waits_for(monkeypatch, gate.reached.is_set)
    request, message = await held_publish(race, 2, "race-one-0001")
    worker = asyncio.create_task(asyncio.to_thread(race.commit, [message], gate))
    await wait_until_async(gate.reached.is_set, 10, "the worker's claim")
    answer = await request  # the publish times out; the cancel finds the order claimed
    assert (answer.status, answer.order_id) == (202, message["order_id"])
    gate.open()
    outcome = await worker
    assert [o.order_id for o in outcome.result.inserted] == [message["order_id"]]
    race.broker_proxy.heal()
    assert race.store.get_order(message["order_id"])["status"] == Status.PERSISTED  # type: ignore[index]
    await race.check()


async def test_race1_late_confirm_cancel_first_then_the_worker_skips(race: Race) -> None:
    """The cancel wins (503, nothing reserved): the message the broker did take is skipped
    by the worker, and the client's retry with the same key is the one order."""
    request, message = await held_publish(race, 2, "race-one-0002")
    answer = await request
    assert (answer.status, answer.code) == (503, "broker_unavailable")
    assert race.store.get_stocks([2]) == [10]
    outcome = race.commit([message])
    assert [o.order_id for o in outcome.cancelled] == [message["order_id"]]
    assert message["order_id"] not in race.rows()
    race.broker_proxy.heal()
    await race.publisher_connected()
    retry = await race.order(2, "ann", 2, "race-one-0002")
    assert retry.status == 202 and retry.order_id != message["order_id"]
    await race.check()


async def test_race2_worker_first_then_the_confirm_times_out(
    race: Race, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker persisted the order before the confirm timed out: 202 with its id."""
    committed = threading.Event()
    cancel_waits_for(monkeypatch, committed.is_set)
    request, message = await held_publish(race, 2, "race-two-0001")
    race.commit([message])
    committed.set()
    assert race.store.get_order(message["order_id"])["status"] == Status.PERSISTED  # type: ignore[index]
    answer = await request
    assert (answer.status, answer.order_id) == (202, message["order_id"])
    race.broker_proxy.heal()
    await race.check()


async def test_publish_and_cancel_both_fail_the_order_stands(
    race: Race, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The confirm is late and Redis is gone when the api tries to cancel: the order is
    still reserved, so the answer is 202 (true); its message and the reconciler's copy
    persist it once."""
    redis_gone = threading.Event()
    cancel_waits_for(monkeypatch, redis_gone.is_set)
    request, message = await held_publish(race, 2, "both-fail-001")
    race.redis_proxy.refuse()
    redis_gone.set()
    answer = await request
    assert (answer.status, answer.order_id) == (202, message["order_id"])
    race.broker_proxy.heal()
    await race.heal_redis()
    outcome = race.commit([message, message])
    assert [o.order_id for o in outcome.result.inserted] == [message["order_id"]]
    await race.check()


def apply_item_update(worker: WorkerContext, update: dict[str, Any], monkeypatch: Any) -> str:
    """The worker's ``apply_item_update`` task body, run in-process on ``worker``."""
    monkeypatch.setattr(tasks, "get_context", lambda: worker)
    return str(tasks.apply_item_update(update))


async def test_race3_item_update_retried_after_its_commit_shifts_once(
    race: Race, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis fails right after the update's commit: the retry finds the row already at its
    version and still shifts the counter, once; a redelivery changes nothing more."""
    await race.order(3, "ann", 2)  # counter created (10), 2 pending
    proxied = race.settings.model_copy(
        update={"redis_url": f"redis://127.0.0.1:{race.redis_proxy.port}/2"}
    )
    worker = WorkerContext.connect(proxied, race.worker.options)
    try:
        update = {"item_id": 3, "stock": 50, "version": 10**15}
        race.redis_proxy.refuse()
        with pytest.raises(Exception, match=r"(?i)connect"):
            apply_item_update(worker, update, monkeypatch)
        assert race.db.execute("SELECT stock FROM items WHERE id = 3").fetchone() == (50,)
        assert race.store.get_stocks([3]) == [8]  # the commit happened, the shift did not
        race.redis_proxy.heal()
        assert apply_item_update(worker, update, monkeypatch) == "stale"
        assert race.store.get_stocks([3]) == [48]
        assert apply_item_update(worker, update, monkeypatch) == "stale"  # a redelivery
        assert race.store.get_stocks([3]) == [48]
    finally:
        worker.close()
    await race.check()


async def test_race4_copies_in_one_batch_share_the_failing_first_copys_fate(
    race: Race,
) -> None:
    """A republished copy next to its original, the first failing the stock check: neither
    is marked persisted; the order is failed once, its stock given back once."""
    accepted = await race.order(1, "ann", 3, "race-four-001")
    [message] = race.take_messages()
    race.db.execute("UPDATE items SET stock = 1 WHERE id = 1")  # drift the test injects
    outcome = race.commit([message, message])
    assert outcome.result.persisted == []
    assert len(outcome.result.failed) == 2
    order = race.store.get_order(accepted.order_id or "")
    assert order is not None and order["status"] == Status.FAILED
    assert race.store.get_stocks([1]) == [10]  # 10 - 3 + 3: given back once
    race.answers.remove(accepted)  # told 202, then failed by the drift injected above
    race.db.execute("UPDATE items SET stock = 10 WHERE id = 1")
    await race.check(dead_letters=2)


async def test_race4_copies_in_one_batch_persist_once(race: Race) -> None:
    """The reconciler republished an order still waiting in a worker: both copies land in
    one batch; one row, the copy is a duplicate, the status persisted."""
    accepted = await race.order(1, "bob", 2, "race-four-002")
    [message] = race.take_messages()
    outcome = race.commit([message, message])
    assert [o.order_id for o in outcome.result.inserted] == [accepted.order_id]
    assert [o.order_id for o in outcome.result.duplicates] == [accepted.order_id]
    assert race.rows() == {accepted.order_id: (1, 2)}
    await race.check()


async def test_race5_first_use_counter_includes_an_update_landing_meanwhile(
    race: Race, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The api reads the item (stock 10) to create its counter; an update to stock 0 commits
    and shifts before the counter exists. The counter still ends at 0: no order accepted."""
    from services import db as db_module

    load_items = db_module.load_items

    async def read_then_update(pool: Any, ids: Any) -> Any:
        found = await load_items(pool, ids)
        update = {"item_id": 2, "stock": 0, "version": 10**15}
        await asyncio.to_thread(apply_item_update, race.worker, update, monkeypatch)
        return found

    monkeypatch.setattr(db_module, "load_items", read_then_update)
    answer = await race.order(2, "ann", 1, "race-five-001")
    assert (answer.status, answer.code) == (409, "sold_out")
    assert race.store.get_stocks([2]) == [0]
    await race.check()


async def test_race5_non_reset_warmup_includes_an_update_landing_meanwhile(
    race: Race, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services import db as db_module

    load_items = db_module.load_items

    async def read_then_update(pool: Any, ids: Any) -> Any:
        found = await load_items(pool, ids)
        update = {"item_id": 3, "stock": 4, "version": 10**15}
        await asyncio.to_thread(apply_item_update, race.worker, update, monkeypatch)
        return found

    monkeypatch.setattr("services.catalog.db.load_items", read_then_update)
    counts = await warmup(race.ctx.db_pool, race.ctx.cache, race.ctx.store, [3])
    assert counts.stock_counters_set == 1
    assert race.store.get_stocks([3]) == [4]
    await race.check()


async def test_race6_lost_reservation_reply_gives_the_order_id(race: Race) -> None:
    """Redis runs the reservation but its replies never arrive (twice: the client's retry
    too): 503 outcome_unknown with the order id, which GET then shows; the reconciler
    publishes the order and the worker persists it. Reserved once although sent twice."""
    await race.order(1, "warm-up", 1)  # the counter exists
    race.redis_proxy.drop_replies()
    answer = await race.order(1, "ann", 2)
    assert (answer.status, answer.code) == (503, "outcome_unknown")
    await race.heal_redis()
    stored = race.store.get_order(answer.order_id or "")
    assert stored is not None and stored["status"] == Status.ACCEPTED
    assert race.store.get_stocks([1]) == [7]
    shown = await race.client.get(f"/orders/{answer.order_id}")
    assert shown.json()["status"] == "accepted"
    await race.check()


async def test_race6_lost_reply_then_the_retry_with_the_key_returns_that_order(
    race: Race,
) -> None:
    """With an Idempotency-Key: the key's binding and the reservation travel together, both
    replies are lost: 503 outcome_unknown with the order id; the retry with the same key
    returns that very order, reserved once."""
    await race.order(1, "warm-up", 1)
    race.redis_proxy.drop_replies()
    answer = await race.order(1, "ann", 2, "race-six-0001")
    assert (answer.status, answer.code) == (503, "outcome_unknown")
    await race.heal_redis()
    retry = await race.order(1, "ann", 2, "race-six-0001")
    assert (retry.status, retry.order_id) == (200, answer.order_id)
    assert race.store.get_stocks([1]) == [7]
    await race.check()


async def test_race7_the_redis_retry_resends_the_same_reservation_once(race: Race) -> None:
    """The first attempt's reply is lost after the script ran; the client's own retry
    re-sends the same order id on a fresh connection and gets the order it made: 202,
    reserved once."""
    await race.order(1, "warm-up", 1)
    race.redis_proxy.drop_replies()
    request = asyncio.create_task(race.order(1, "ann", 2))
    await wait_until_async(lambda: race.store.get_stocks([1]) == [7], 10, "the script to run")
    race.redis_proxy.heal()  # the retry's connection forwards normally
    answer = await request
    assert answer.status == 202
    assert race.store.get_stocks([1]) == [7]
    assert len([o for o in race.orders() if o["user_id"] == "ann"]) == 1
    await race.check()


async def test_race7_a_cut_connection_is_retried_not_refused(race: Race) -> None:
    """Pooled connections reset (Redis restarted): the retry on a fresh one serves."""
    await race.order(1, "warm-up", 1)
    race.redis_proxy.cut()
    answer = await race.order(1, "bob", 1, "race-seven-02")
    assert answer.status == 202
    await race.check()


async def test_update_committed_but_task_lost_is_replayed_by_the_reconciler(race: Race) -> None:
    """The update's transaction committed and its task vanished: the reconciler replays the
    recorded change once."""
    await race.order(3, "ann", 1)
    with race.worker.db.connection() as conn:
        applied = apply_update(conn, ItemUpdate(3, 10**15, stock=30))
    assert applied is not None and applied.stock_delta == 20
    assert race.store.get_stocks([3]) == [9]
    race.reconciler.run_once()
    race.reconciler.run_once()
    assert race.store.get_stocks([3]) == [29]
    await race.check()
