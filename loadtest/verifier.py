"""After the spike: prove nothing was lost or oversold, and measure what the run achieved.

Invariants (each a :class:`Check`; any failure fails the run):

- ``accepted_persisted``: every order answered ``202`` has its row in PostgreSQL (the
  primary key makes it at most once; the stock equation below makes its effect exactly once).
- ``status_persisted``: Redis reports each of those orders ``persisted``.
- ``no_phantom_orders``: every row written since the run started belongs to an order the
  client was told was accepted, or whose answer never arrived (traced by Idempotency-Key).
- ``no_oversell``: no item's persisted units exceed its initial stock.
- ``db_stock_consistent``: every item's stock equals initial stock minus persisted units.
- ``redis_db_stock_agree``: the Redis counters equal the database stock after drain.
- ``queue_drained``: the pending set emptied within the stated bound after the spike, and
  is empty at the end with every accepted order persisted.
- ``no_unexpected_5xx``: no server error other than a deliberate ``503`` (``Retry-After``),
  and no order refused with ``503`` left a reservation behind (status ``failed``, no row);
  a ``503 outcome_unknown`` (it carries the order id) is not a refusal.

Measurements: per-phase requests/s, error rate and p50/p95/p99; cache hit ratio (deltas of
the api's ``cache_lookups_total``); accept-to-persist lag p50/p99 from the database.
Thresholds in the manner of k6 (``p99_spike<500ms``, ``error_rate<1%``) are checked last.
"""

from __future__ import annotations

import operator
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
import redis
from prometheus_client.parser import text_string_to_metric_families

from loadtest.measure import PhaseStats, PhaseWindow, phase_stats, phase_windows
from loadtest.records import Bucket, OrderRecord, Recorded
from services.keys import Keys

SAMPLE_LIMIT = 5  # ids quoted in a failed check's detail


@dataclass(frozen=True)
class Sources:
    """Where the stack keeps its state."""

    database_url: str
    redis_url: str
    redis_prefix: str

    @property
    def keys(self) -> Keys:
        """Key names under this stack's prefix."""
        return Keys(self.redis_prefix)


@dataclass(frozen=True)
class Check:
    """One invariant's verdict."""

    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class Sample:
    """The queue and the database at one moment of the run (polled once a second)."""

    t: float
    pending: int
    persisted: int


@dataclass(frozen=True)
class Drain:
    """How fast the backlog of accepted orders was persisted."""

    bound_s: float
    after_spike_s: float | None  # spike end -> first sample with an empty pending set
    after_load_s: float | None  # load stopped -> pending empty and every 202 persisted
    measured: bool = True  # False: nobody sampled the queue during the run (verify mode)


@dataclass(frozen=True)
class Lag:
    """Accept-to-persist lag (database ``persisted_at - accepted_at``) of the accepted orders."""

    count: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None


@dataclass(frozen=True)
class CacheStats:
    """Item cache lookups during the run, by result (deltas of ``cache_lookups_total``)."""

    lookups: dict[str, float]

    @property
    def total(self) -> float:
        """Every lookup."""
        return sum(self.lookups.values())

    @property
    def hit_ratio(self) -> float | None:
        """Lookups answered without PostgreSQL (near, Redis and negative hits) over all."""
        if not self.total:
            return None
        return (self.total - self.lookups.get("miss", 0.0)) / self.total


@dataclass(frozen=True)
class Threshold:
    """A k6-style pass/fail rule on one metric, e.g. ``p99_spike<500ms``."""

    metric: str
    op: str
    value: float
    text: str

    def holds(self, actual: float) -> bool:
        """Whether ``actual`` satisfies the rule."""
        return bool(_OPS[self.op](actual, self.value))


@dataclass(frozen=True)
class ThresholdResult:
    """A threshold and the measured value it was held against (``None``: not measured)."""

    threshold: Threshold
    actual: float | None

    @property
    def passed(self) -> bool:
        """Unmeasured metrics fail: a threshold nobody could check guarantees nothing."""
        return self.actual is not None and self.threshold.holds(self.actual)


@dataclass
class Verdict:
    """Everything the report shows."""

    checks: list[Check]
    phases: list[PhaseStats]
    windows: list[PhaseWindow]
    lag: Lag
    drain: Drain
    cache: CacheStats | None
    order_outcomes: dict[str, int]
    thresholds: list[ThresholdResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Every invariant and every threshold holds."""
        return all(c.passed for c in self.checks) and all(t.passed for t in self.thresholds)

    def metrics(self) -> dict[str, float | None]:
        """Named figures thresholds can refer to (latencies and lag in ms, drain in s)."""
        values: dict[str, float | None] = {}
        for row in self.phases:
            suffix = "" if row.phase == "all" else f"_{row.phase}"
            values[f"p50{suffix}"] = row.p50_ms
            values[f"p95{suffix}"] = row.p95_ms
            values[f"p99{suffix}"] = row.p99_ms
            values[f"error_rate{suffix}"] = row.error_rate
            values[f"rps{suffix}"] = row.rps
        values["lag_p50"] = self.lag.p50_ms
        values["lag_p99"] = self.lag.p99_ms
        values["drain"] = self.drain.after_spike_s
        values["drain_final"] = self.drain.after_load_s
        values["cache_hit_ratio"] = self.cache.hit_ratio if self.cache else None
        return values

    def apply_thresholds(self, thresholds: Iterable[Threshold]) -> None:
        """Evaluate ``thresholds`` against :meth:`metrics`."""
        metrics = self.metrics()
        self.thresholds = [ThresholdResult(t, metrics.get(t.metric)) for t in thresholds]


# --- thresholds ------------------------------------------------------------------------------

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_THRESHOLD_RE = re.compile(r"^\s*([a-z0-9_]+)\s*(<=|>=|<|>)\s*([0-9.]+)\s*(ms|s|%)?\s*$")
_METRIC_UNITS = {"p50": "ms", "p95": "ms", "p99": "ms", "lag": "ms", "drain": "s"}
_RATIO_METRICS = ("error_rate", "cache_hit_ratio")
DEFAULT_THRESHOLDS = ("p99_spike<1000ms", "error_rate_spike<1%", "error_rate<1%")


def _metric_unit(metric: str) -> str:
    head = metric.split("_", 1)[0]
    if head in _METRIC_UNITS:
        return _METRIC_UNITS[head]
    if metric.startswith(_RATIO_METRICS):
        return "ratio"
    if head == "rps":
        return "rps"
    raise ValueError(f"unknown threshold metric {metric!r}")


def parse_threshold(text: str) -> Threshold:
    """``p99_spike<500ms``, ``error_rate<1%``, ``drain<=30s``, ``cache_hit_ratio>0.9``...

    Latencies and lag are in ms (a bare number is ms, ``s`` converts), drain in s, ratios
    as fractions or with ``%``, rps bare.
    """
    match = _THRESHOLD_RE.match(text)
    if not match:
        raise ValueError(f"bad threshold {text!r}: expected e.g. 'p99_spike<500ms'")
    metric, op, raw, unit = match.groups()
    kind = _metric_unit(metric)
    value = float(raw)
    conversions = {
        ("ms", "s"): 1000.0,
        ("ms", "ms"): 1.0,
        ("s", "s"): 1.0,
        ("s", "ms"): 0.001,
        ("ratio", "%"): 0.01,
    }
    if unit is not None:
        if (kind, unit) not in conversions:
            raise ValueError(f"threshold {text!r}: unit {unit!r} does not fit {metric!r}")
        value *= conversions[(kind, unit)]
    return Threshold(metric, op, value, text.strip())


# --- measurements from the stack -------------------------------------------------------------


def cache_lookups(metrics_text: str) -> dict[str, float]:
    """``cache_lookups_total`` by ``result`` from a Prometheus exposition."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == "cache_lookups_total":
                result = sample.labels.get("result", "")
                found[result] = found.get(result, 0.0) + sample.value
    return found


def cache_delta(before: Mapping[str, float], after: Mapping[str, float]) -> CacheStats:
    """Lookups that happened between two scrapes."""
    return CacheStats({k: after[k] - before.get(k, 0.0) for k in sorted(after)})


def measure_lag(sources: Sources, order_ids: Sequence[str]) -> Lag:
    """Percentiles of ``persisted_at - accepted_at`` over the given orders' rows."""
    query = """
        SELECT count(*),
               percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY lag),
               max(lag)
        FROM (SELECT extract(epoch FROM persisted_at - accepted_at) * 1000 AS lag
              FROM orders WHERE order_id = ANY(%s::uuid[])) AS lags
    """
    with psycopg.connect(sources.database_url) as conn:
        row = conn.execute(query, (list(order_ids),)).fetchone()
    assert row is not None
    count, percentiles, worst = row
    p50, p95, p99 = percentiles or (None, None, None)
    return Lag(count, _ms(p50), _ms(p95), _ms(p99), _ms(worst))


def _ms(value: Any) -> float | None:
    return None if value is None else round(float(value), 1)


def _pending(client: redis.Redis, keys: Keys, conn: psycopg.Connection[Any]) -> int:
    """Orders pending in Redis, summed over the catalog's items (one pending set each)."""
    return _pending_of(client, keys, [int(row[0]) for row in conn.execute("SELECT id FROM items")])


def _pending_of(client: redis.Redis, keys: Keys, item_ids: Sequence[int]) -> int:
    """Orders pending in Redis for ``item_ids``."""
    pipe = client.pipeline(transaction=False)
    for item_id in item_ids:
        pipe.zcard(keys.pending(item_id))
    return sum(int(n) for n in pipe.execute())


def sample_state(sources: Sources) -> Sample:
    """Pending orders in Redis and persisted orders in PostgreSQL, now."""
    with (
        redis.Redis.from_url(sources.redis_url) as client,
        psycopg.connect(sources.database_url) as conn,
    ):
        pending = _pending(client, sources.keys, conn)
        row = conn.execute("SELECT count(*) FROM orders").fetchone()
    return Sample(time.time(), pending, int(row[0]) if row else 0)


def wait_for_drain(
    sources: Sources, accepted: Sequence[str], timeout_s: float, poll_s: float = 0.5
) -> float | None:
    """Wait until the pending set is empty and every accepted order has its row.

    Returns the seconds it took, or ``None`` when ``timeout_s`` passed first.
    """
    start = time.monotonic()
    with (
        redis.Redis.from_url(sources.redis_url) as client,
        psycopg.connect(sources.database_url, autocommit=True) as conn,
    ):
        while True:
            pending = _pending(client, sources.keys, conn)
            row = conn.execute(
                "SELECT count(*) FROM orders WHERE order_id = ANY(%s::uuid[])", (list(accepted),)
            ).fetchone()
            if pending == 0 and row is not None and row[0] == len(accepted):
                return time.monotonic() - start
            if time.monotonic() - start >= timeout_s:
                return None
            time.sleep(poll_s)


def drain_times(
    samples: Sequence[Sample],
    spike_end: float | None,
    load_end: float,
    after_load_s: float | None,
    bound_s: float,
) -> Drain:
    """How long the spike's backlog took to clear, from the once-a-second samples.

    Without samples (a run verified afterwards) the time after the spike is unknown and
    only the final drain can be checked.
    """
    after_load = None if after_load_s is None else round(after_load_s, 2)
    if not samples:
        return Drain(bound_s, None, after_load, measured=False)
    after_spike = None
    if spike_end is not None:
        cleared = [s.t for s in samples if s.t >= spike_end and s.pending == 0]
        if cleared:
            after_spike = round(cleared[0] - spike_end, 2)
        elif after_load_s is not None:  # never seen empty while sampling: empty at drain end
            after_spike = round(load_end + after_load_s - spike_end, 2)
    return Drain(bound_s, after_spike, after_load)


# --- invariants ------------------------------------------------------------------------------


def _quote(ids: Iterable[object]) -> str:
    ids = list(ids)
    shown = ", ".join(map(str, ids[:SAMPLE_LIMIT]))
    return shown + (f" (+{len(ids) - SAMPLE_LIMIT} more)" if len(ids) > SAMPLE_LIMIT else "")


@dataclass
class _State:
    """What PostgreSQL and Redis hold after the run."""

    rows: dict[str, tuple[int, int]]  # order id -> (item id, quantity), rows since run start
    items: dict[int, tuple[int, int, int]]  # item id -> (initial stock, stock, persisted units)
    redis_stock: dict[int, int | None]
    statuses: dict[str, str | None]  # accepted order id -> Redis status
    keyed_orders: dict[str, str | None]  # Idempotency-Key -> order id (unanswered and 503 orders)
    keyed_statuses: dict[str, str | None]  # those orders' Redis status
    pending: int


def _read_state(sources: Sources, orders: Sequence[OrderRecord], since: float) -> _State:
    accepted = [o.order_id for o in orders if o.status == 202 and o.order_id]
    traced = [o for o in orders if o.status in (0, 503)]
    with psycopg.connect(sources.database_url) as conn:
        rows = {
            str(order_id): (item_id, quantity)
            for order_id, item_id, quantity in conn.execute(
                "SELECT order_id, item_id, quantity FROM orders"
                " WHERE accepted_at >= to_timestamp(%s)",
                (since,),
            )
        }
        items = {
            item_id: (initial, stock, int(units))
            for item_id, initial, stock, units in conn.execute(
                "SELECT i.id, i.initial_stock, i.stock, coalesce(sum(o.quantity), 0)"
                " FROM items i LEFT JOIN orders o ON o.item_id = i.id GROUP BY i.id"
            )
        }
    keys = sources.keys
    with redis.Redis.from_url(sources.redis_url, decode_responses=True) as client:
        item_ids = sorted(items)
        stock_values = client.mget([keys.stock(i) for i in item_ids]) if item_ids else []
        redis_stock = {
            i: None if v is None else int(v) for i, v in zip(item_ids, stock_values, strict=True)
        }
        statuses = _order_statuses(client, keys, accepted)
        keyed = client.mget([keys.idempotency(o.item_id, o.key) for o in traced]) if traced else []
        keyed_ids = [o for o in keyed if o]
        return _State(
            rows=rows,
            items=items,
            redis_stock=redis_stock,
            statuses=statuses,
            keyed_orders=dict(zip((o.key for o in traced), keyed, strict=True)),
            keyed_statuses=_order_statuses(client, keys, keyed_ids),
            pending=_pending_of(client, keys, item_ids),
        )


def _order_statuses(client: redis.Redis, keys: Keys, order_ids: Sequence[str]) -> dict[str, Any]:
    if not order_ids:
        return {}
    pipe = client.pipeline(transaction=False)
    for order_id in order_ids:
        # An id that carries no item (not made by the api) has no Redis record.
        pipe.hget(keys.order_by_id(order_id) or keys.order(0, order_id), "status")
    return dict(zip(order_ids, pipe.execute(), strict=True))


def _lost(state: _State, accepted: Sequence[str]) -> list[str]:
    """Accepted orders with no row."""
    return [o for o in accepted if o not in state.rows]


def _phantoms(state: _State, accepted: Sequence[str]) -> list[str]:
    """Rows of the run that no client answer (or unanswered request) explains."""
    explained = set(accepted) | {o for o in state.keyed_orders.values() if o}
    return [o for o in state.rows if o not in explained]


def _oversold(state: _State) -> list[str]:
    """Items with more units persisted than they ever had."""
    return [
        f"item {i}: {units} > {initial}"
        for i, (initial, _, units) in state.items.items()
        if units > initial
    ]


def _check_accepted(state: _State, accepted: Sequence[str]) -> list[Check]:
    lost = _lost(state, accepted)
    not_persisted = [o for o, s in state.statuses.items() if s != "persisted"]
    return [
        Check(
            "accepted_persisted",
            not lost,
            f"{len(accepted)} orders answered 202, {len(accepted) - len(lost)} persisted"
            + (f"; LOST: {_quote(lost)}" if lost else ""),
        ),
        Check(
            "status_persisted",
            not not_persisted,
            "Redis says persisted for every accepted order"
            if not not_persisted
            else f"{len(not_persisted)} accepted orders not 'persisted' in Redis:"
            f" {_quote(f'{o}={state.statuses[o]}' for o in not_persisted)}",
        ),
    ]


def _check_phantoms(state: _State, accepted: Sequence[str]) -> Check:
    phantoms = _phantoms(state, accepted)
    return Check(
        "no_phantom_orders",
        not phantoms,
        f"{len(state.rows)} rows written during the run, all traced to the client"
        if not phantoms
        else f"{len(phantoms)} rows no client was told about: {_quote(phantoms)}",
    )


def _check_stock(state: _State) -> list[Check]:
    oversold = _oversold(state)
    inconsistent = [
        f"item {i}: stock {stock} != {initial} - {units}"
        for i, (initial, stock, units) in state.items.items()
        if stock != initial - units
    ]
    disagree = [
        f"item {i}: redis {state.redis_stock[i]} != db {stock}"
        for i, (_, stock, units) in state.items.items()
        if state.redis_stock[i] != stock and (state.redis_stock[i] is not None or units)
    ]
    counted = sum(v is not None for v in state.redis_stock.values())
    sold = sum(units for _, _, units in state.items.values())
    return [
        Check(
            "no_oversell",
            not oversold,
            f"{len(state.items)} items, {sold} units persisted, none above initial stock"
            if not oversold
            else f"{len(oversold)} items oversold: {_quote(oversold)}",
        ),
        Check(
            "db_stock_consistent",
            not inconsistent,
            "stock == initial_stock - persisted units for every item"
            if not inconsistent
            else f"{len(inconsistent)} items off: {_quote(inconsistent)}",
        ),
        Check(
            "redis_db_stock_agree",
            not disagree,
            f"{counted} Redis counters equal the database stock"
            if not disagree
            else f"{len(disagree)} items differ: {_quote(disagree)}",
        ),
    ]


def _check_drain(state: _State, drain: Drain) -> Check:
    problems = []
    if not drain.measured:
        pass  # nothing sampled during the run: only the final state below can be judged
    elif drain.after_spike_s is None:
        problems.append("the pending set never emptied after the spike")
    elif drain.after_spike_s > drain.bound_s:
        problems.append(f"drained {drain.after_spike_s:.1f} s after the spike")
    if drain.after_load_s is None:
        problems.append("accepted orders still unpersisted when the wait ended")
    if state.pending:
        problems.append(f"{state.pending} orders still pending")
    spike = (
        f"spike backlog cleared {drain.after_spike_s} s after the spike (bound {drain.bound_s:g} s)"
        if drain.measured
        else "queue not sampled during the run"
    )
    since = "the load stopped" if drain.measured else "verification began"
    detail = f"{spike}; all persisted {drain.after_load_s} s after {since}"
    return Check("queue_drained", not problems, detail if not problems else "; ".join(problems))


def _check_server_errors(
    state: _State, buckets: Sequence[Bucket], orders: Sequence[OrderRecord]
) -> Check:
    unexpected = sum(b.unexpected_5xx for b in buckets)
    # A 503 that carries an order id is an "outcome unknown", not a refusal: its order may
    # exist (then it must be persisted like any other, see no_phantom_orders).
    refused = [o for o in orders if o.status == 503 and not o.order_id]
    leaked = []
    for order in refused:
        order_id = state.keyed_orders.get(order.key)
        if order_id and (order_id in state.rows or state.keyed_statuses.get(order_id) != "failed"):
            leaked.append(f"{order_id}={state.keyed_statuses.get(order_id)}")
    problems = []
    if unexpected:
        problems.append(f"{unexpected} unexpected 5xx answers")
    if leaked:
        problems.append(
            f"{len(leaked)} orders refused with 503 kept a reservation: {_quote(leaked)}"
        )
    deliberate = sum(b.deliberate_503 for b in buckets)
    ok = f"no unexpected 5xx; {deliberate} deliberate 503s ({len(refused)} orders), stock restored"
    return Check("no_unexpected_5xx", not problems, ok if not problems else "; ".join(problems))


def check_invariants(
    sources: Sources,
    orders: Sequence[OrderRecord],
    buckets: Sequence[Bucket],
    drain: Drain,
    run_started: float,
) -> list[Check]:
    """Every invariant of the module docstring, against the live database and Redis."""
    accepted = [o.order_id for o in orders if o.status == 202 and o.order_id]
    state = _read_state(sources, orders, run_started)
    return [
        *_check_accepted(state, accepted),
        _check_phantoms(state, accepted),
        *_check_stock(state),
        _check_drain(state, drain),
        _check_server_errors(state, buckets, orders),
    ]


@dataclass(frozen=True)
class Audit:
    """What became of a run's orders, as counts (the fault suite's row)."""

    accepted: int
    persisted: int  # accepted orders with their row
    lost: int  # accepted orders without a row
    duplicated: int  # rows of the run no client answer explains
    oversold_items: int  # items with more units persisted than their initial stock


def audit_orders(sources: Sources, orders: Sequence[OrderRecord], run_started: float) -> Audit:
    """Count lost, duplicated and oversold orders of a run, from the live stores."""
    accepted = [o.order_id for o in orders if o.status == 202 and o.order_id]
    state = _read_state(sources, orders, run_started)
    lost = _lost(state, accepted)
    return Audit(
        accepted=len(accepted),
        persisted=len(accepted) - len(lost),
        lost=len(lost),
        duplicated=len(_phantoms(state, accepted)),
        oversold_items=len(_oversold(state)),
    )


def order_outcomes(orders: Sequence[OrderRecord]) -> dict[str, int]:
    """Orders by the answer they got (``0``: no answer)."""
    return dict(sorted(Counter(str(o.status) for o in orders).items()))


@dataclass(frozen=True)
class RunFacts:
    """What the runner observed around the load, beyond the record files."""

    samples: Sequence[Sample]
    load_end: float  # epoch when locust stopped
    after_load_s: float | None  # from wait_for_drain
    drain_bound_s: float
    cache: CacheStats | None


def verify(
    sources: Sources,
    run: Recorded,
    facts: RunFacts,
    thresholds: Iterable[Threshold] = (),
) -> Verdict:
    """Check every invariant and threshold, and gather the figures for the report."""
    windows = phase_windows(run.timeline)
    spike_end = next((w.end for w in windows if w.phase == "spike"), None)
    accepted = [o.order_id for o in run.orders if o.status == 202 and o.order_id]
    drain = drain_times(
        facts.samples, spike_end, facts.load_end, facts.after_load_s, facts.drain_bound_s
    )
    verdict = Verdict(
        checks=check_invariants(sources, run.orders, run.buckets, drain, run.started),
        phases=phase_stats(run.buckets, windows),
        windows=windows,
        lag=measure_lag(sources, accepted),
        drain=drain,
        cache=facts.cache,
        order_outcomes=order_outcomes(run.orders),
    )
    verdict.apply_thresholds(thresholds)
    return verdict
