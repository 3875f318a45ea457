"""The verifier on crafted data in a real PostgreSQL database and Redis prefix: it passes a
consistent sale and catches a lost order, an oversell, stock mismatches, a stuck queue,
unexpected server errors and a refused order that kept its reservation."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import psycopg
import pytest
import redis

from loadtest.records import Bucket, OrderRecord, Recorded, Tick
from loadtest.verifier import (
    CacheStats,
    RunFacts,
    Sample,
    Sources,
    Verdict,
    cache_delta,
    cache_lookups,
    parse_threshold,
    verify,
    wait_for_drain,
)
from services.keys import Keys, new_order_id
from tests.support import REDIS_HOST_URL

INITIAL = {1: 10, 2: 10, 3: 10}
T0 = time.time() - 60  # the crafted run started a minute ago


@dataclass
class Sale:
    """A crafted sale: rows in PostgreSQL, state in Redis, and what the client recorded."""

    sources: Sources
    orders: list[OrderRecord] = field(default_factory=list)
    buckets: list[Bucket] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)

    @property
    def keys(self) -> Keys:
        """Key names under the test's prefix."""
        return self.sources.keys

    def redis(self) -> redis.Redis:
        """A client on the state Redis."""
        return redis.Redis.from_url(self.sources.redis_url, decode_responses=True)

    def sql(self, query: str, *params: object) -> None:
        """Run one statement."""
        with psycopg.connect(self.sources.database_url, autocommit=True) as conn:
            conn.execute(query, params)

    def persist(self, item_id: int, quantity: int, recorded_status: int | None = 202) -> str:
        """An order accepted, persisted and (unless None) recorded with the given answer."""
        order_id = new_order_id(item_id)
        key = uuid.uuid4().hex
        self.sql(
            "INSERT INTO orders (order_id, item_id, user_id, quantity, accepted_at, persisted_at)"
            " VALUES (%s, %s, 'u', %s, to_timestamp(%s), to_timestamp(%s))",
            order_id,
            item_id,
            quantity,
            T0 + 10,
            T0 + 10.05,
        )
        self.sql("UPDATE items SET stock = stock - %s WHERE id = %s", quantity, item_id)
        with self.redis() as r:
            r.decrby(self.keys.stock(item_id), quantity)
            r.hset(
                self.keys.order(item_id, order_id),
                mapping={"status": "persisted", "item_id": item_id},
            )
            r.set(self.keys.idempotency(item_id, key), order_id)
        if recorded_status is not None:
            self.record(item_id, quantity, key, recorded_status, order_id)
        return order_id

    def key_of(self, item_id: int, order_id: str) -> str:
        """The Idempotency-Key that produced ``order_id`` (from the item's records)."""
        prefix = self.keys.idempotency(item_id, "")
        with self.redis() as r:
            found = (k for k in r.scan_iter(f"{prefix}*") if r.get(k) == order_id)
            return str(next(found)).removeprefix(prefix)

    def record(
        self, item_id: int, quantity: int, key: str, status: int, order_id: str | None = None
    ) -> None:
        """What the client saw for one order."""
        self.orders.append(
            OrderRecord(T0 + 10, item_id, quantity, "u", key, status, 3.0, "spike", order_id)
        )

    def verdict(self) -> Verdict:
        """Run the verifier over the crafted sale."""
        timeline = [
            Tick(T0 + t, t, phase, T0 + t, 1, 1, 0.0, 0.0, None)
            for t, phase in ((0, "baseline"), (5, "spike"), (20, "recovery"), (30, "stopped"))
        ]
        run = Recorded(sorted(self.orders, key=lambda o: o.t), self.buckets, timeline)
        facts = RunFacts(self.samples, T0 + 30, 0.5, 30.0, CacheStats({"hit": 90, "miss": 10}))
        return verify(self.sources, run, facts, [parse_threshold("p99_spike<500ms")])


@pytest.fixture
def sale(pg_url: str, redis_prefix: str) -> Iterator[Sale]:
    """A consistent sale: three items, three persisted orders, a sold-out answer, a refused
    order whose reservation was compensated, deliberate 503s only, the queue drained."""
    made = Sale(Sources(pg_url, f"{REDIS_HOST_URL}/2", redis_prefix))
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for item_id, stock in INITIAL.items():
            conn.execute(
                "INSERT INTO items (id, name, price_cents, stock, initial_stock)"
                " VALUES (%s, %s, 100, %s, %s)",
                (item_id, f"item {item_id}", stock, stock),
            )
    with made.redis() as r:
        for item_id, stock in INITIAL.items():
            r.set(made.keys.stock(item_id), stock)
    made.persist(1, 2)
    made.persist(1, 3)
    made.persist(2, 1)
    made.record(3, 1, uuid.uuid4().hex, 409)
    refused_key, refused_id = uuid.uuid4().hex, new_order_id(2)
    with made.redis() as r:
        r.set(made.keys.idempotency(2, refused_key), refused_id)
        r.hset(made.keys.order(2, refused_id), mapping={"status": "failed", "reason": "broker"})
    made.record(2, 1, refused_key, 503)
    made.buckets = [
        Bucket(
            sec=int(T0) + 10,
            phase="spike",
            requests=5,
            failures=1,
            deliberate_503=1,
            codes=Counter({"202": 3, "409": 1, "503": 1}),
            latency=Counter({3: 4, 40: 1}),
        )
    ]
    made.samples = [Sample(T0 + t, p, 0) for t, p in ((18, 2), (20, 1), (22, 0), (24, 0))]
    yield made


def failed(verdict: Verdict) -> set[str]:
    """Names of the checks that failed."""
    return {c.name for c in verdict.checks if not c.passed}


def test_a_consistent_sale_passes(sale: Sale) -> None:
    verdict = sale.verdict()
    assert failed(verdict) == set(), [c for c in verdict.checks if not c.passed]
    assert verdict.passed
    assert verdict.lag.count == 3
    assert verdict.lag.p50_ms == pytest.approx(50, abs=1)
    assert verdict.drain.after_spike_s == pytest.approx(2.0)
    assert verdict.order_outcomes == {"202": 3, "409": 1, "503": 1}
    assert verdict.cache is not None and verdict.cache.hit_ratio == 0.9
    spike = next(p for p in verdict.phases if p.phase == "spike")
    assert (spike.requests, spike.deliberate_503, spike.p99_ms) == (5, 1, 40)
    assert verdict.thresholds[0].passed and verdict.thresholds[0].actual == 40


def test_a_lost_order_is_caught(sale: Sale) -> None:
    lost = str(uuid.uuid4())
    sale.record(3, 1, uuid.uuid4().hex, 202, lost)  # the client was told "accepted"...
    verdict = sale.verdict()  # ...but no row exists
    assert failed(verdict) == {"accepted_persisted", "status_persisted"}
    detail = next(c.detail for c in verdict.checks if c.name == "accepted_persisted")
    assert lost in detail
    assert not verdict.passed


def test_an_oversell_is_caught(sale: Sale) -> None:
    sale.persist(3, 8)
    sale.persist(3, 2)
    assert "no_oversell" not in failed(sale.verdict())  # exactly the stock is fine
    # one more unit slips past every guard: the database stock clamps at 0, as it would
    sale.sql(
        "INSERT INTO orders (order_id, item_id, user_id, quantity, accepted_at)"
        " VALUES (%s, 3, 'u', 1, to_timestamp(%s))",
        str(uuid.uuid4()),
        T0 + 10,
    )
    verdict = sale.verdict()
    assert "no_oversell" in failed(verdict)
    assert "item 3: 11 > 10" in next(c.detail for c in verdict.checks if c.name == "no_oversell")


def test_a_database_stock_mismatch_is_caught(sale: Sale) -> None:
    sale.sql("UPDATE items SET stock = stock - 1 WHERE id = 2")  # decremented without an order
    assert failed(sale.verdict()) == {"db_stock_consistent", "redis_db_stock_agree"}


def test_redis_and_database_disagreeing_is_caught(sale: Sale) -> None:
    with sale.redis() as r:
        r.incrby(sale.keys.stock(3), 1)  # a compensation applied twice
    verdict = sale.verdict()
    assert failed(verdict) == {"redis_db_stock_agree"}
    detail = next(c.detail for c in verdict.checks if c.name == "redis_db_stock_agree")
    assert "item 3: redis 11 != db 10" in detail


def test_a_row_nobody_was_told_about_is_caught(sale: Sale) -> None:
    sale.persist(3, 1, recorded_status=None)
    assert failed(sale.verdict()) == {"no_phantom_orders"}


def test_an_unanswered_order_that_was_persisted_is_not_a_phantom(sale: Sale) -> None:
    order_id = sale.persist(3, 1, recorded_status=None)
    sale.record(3, 1, sale.key_of(3, order_id), 0)  # response lost
    assert failed(sale.verdict()) == set()


def test_a_queue_that_does_not_drain_is_caught(sale: Sale) -> None:
    with sale.redis() as r:
        r.zadd(sale.keys.pending(1), {new_order_id(1): T0 * 1000})
    sale.samples = [Sample(T0 + t, 3, 0) for t in range(18, 40)]
    verdict = sale.verdict()
    assert "queue_drained" in failed(verdict)


def test_waiting_for_the_drain_gives_up_at_its_timeout(sale: Sale) -> None:
    persisted = [o.order_id for o in sale.orders if o.order_id]
    assert wait_for_drain(sale.sources, persisted, timeout_s=5, poll_s=0.05) is not None
    with sale.redis() as r:
        r.zadd(sale.keys.pending(1), {new_order_id(1): T0 * 1000})  # never persisted
    assert wait_for_drain(sale.sources, persisted, timeout_s=0.3, poll_s=0.05) is None
    unknown = [*persisted, new_order_id(1)]  # an accepted order with no row
    with sale.redis() as r:
        r.delete(sale.keys.pending(1))
    assert wait_for_drain(sale.sources, unknown, timeout_s=0.3, poll_s=0.05) is None


def test_a_slow_drain_breaks_the_bound(sale: Sale) -> None:
    sale.samples = [Sample(T0 + t, 0 if t > 60 else 5, 0) for t in range(18, 70)]
    verdict = sale.verdict()
    assert failed(verdict) == {"queue_drained"}
    assert verdict.drain.after_spike_s == pytest.approx(41)


def test_without_samples_only_the_final_drain_is_judged(sale: Sale) -> None:
    sale.samples = []
    verdict = sale.verdict()
    assert failed(verdict) == set()
    assert not verdict.drain.measured and verdict.drain.after_spike_s is None
    with sale.redis() as r:
        r.zadd(sale.keys.pending(1), {new_order_id(1): T0 * 1000})
    assert failed(sale.verdict()) == {"queue_drained"}


def test_server_errors_other_than_deliberate_503_are_caught(sale: Sale) -> None:
    sale.buckets[0].codes["500"] += 2
    assert failed(sale.verdict()) == {"no_unexpected_5xx"}


def test_a_refused_order_that_kept_its_reservation_is_caught(sale: Sale) -> None:
    order_id = sale.persist(2, 1, recorded_status=None)
    sale.record(2, 1, sale.key_of(2, order_id), 503)  # told 503, yet persisted
    assert "no_unexpected_5xx" in failed(sale.verdict())


def test_an_outcome_unknown_503_whose_order_was_persisted_is_no_leak(sale: Sale) -> None:
    order_id = sale.persist(2, 1, recorded_status=None)
    # 503 outcome_unknown: the answer carried the order id, which then was persisted.
    sale.record(2, 1, sale.key_of(2, order_id), 503, order_id)
    assert failed(sale.verdict()) == set()


def test_a_failed_threshold_fails_the_verdict(sale: Sale) -> None:
    sale.buckets[0].latency[900] += 5
    verdict = sale.verdict()
    assert failed(verdict) == set()
    assert not verdict.thresholds[0].passed
    assert not verdict.passed


@pytest.mark.parametrize(
    ("text", "metric", "op", "value"),
    [
        ("p99_spike<500ms", "p99_spike", "<", 500),
        ("p95<0.5s", "p95", "<", 500),
        ("error_rate<1%", "error_rate", "<", 0.01),
        ("error_rate_spike <= 0.02", "error_rate_spike", "<=", 0.02),
        ("drain<30s", "drain", "<", 30),
        ("drain<1500ms", "drain", "<", 1.5),
        ("cache_hit_ratio>90%", "cache_hit_ratio", ">", 0.9),
        ("rps_spike>=100", "rps_spike", ">=", 100),
        ("lag_p99<2s", "lag_p99", "<", 2000),
    ],
)
def test_thresholds_parse_like_k6(text: str, metric: str, op: str, value: float) -> None:
    threshold = parse_threshold(text)
    assert (threshold.metric, threshold.op) == (metric, op)
    assert threshold.value == pytest.approx(value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("p99_spike=500", "expected e.g."),
        ("latency<5ms", "unknown threshold metric"),
        ("error_rate<5ms", "does not fit"),
        ("p99<5%", "does not fit"),
    ],
)
def test_bad_thresholds_are_named(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_threshold(text)


def test_an_unmeasured_threshold_fails(sale: Sale) -> None:
    verdict = sale.verdict()
    verdict.apply_thresholds([parse_threshold("p99_baseline<10ms")])  # no baseline traffic
    assert verdict.thresholds[0].actual is None
    assert not verdict.passed


def test_cache_hit_ratio_from_metrics_deltas() -> None:
    before = cache_lookups('cache_lookups_total{result="hit"} 5.0\n')
    after = cache_lookups(
        "# TYPE cache_lookups_total counter\n"
        'cache_lookups_total{result="hit"} 75.0\n'
        'cache_lookups_total{result="near_hit"} 20.0\n'
        'cache_lookups_total{result="negative_hit"} 5.0\n'
        'cache_lookups_total{result="miss"} 10.0\n'
    )
    delta = cache_delta(before, after)
    assert delta.lookups == {"hit": 70.0, "miss": 10.0, "near_hit": 20.0, "negative_hit": 5.0}
    assert delta.hit_ratio == pytest.approx(95 / 105)
    assert CacheStats({}).hit_ratio is None
