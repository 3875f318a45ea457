"""Order state in Redis: atomic reservation, compensation and status, for every service.

The state Redis (``REDIS_URL``) holds live stock, orders, per-user counts, idempotency
keys and the pending set (layout in :mod:`services.keys`). Every change that touches
more than one of them is one Lua script, so a reservation can never half-happen.

One logic, two flavours. Each operation is written once, as a generator that yields the
value a client call returns and receives the reply (sans-I/O style): with a synchronous
``redis.Redis`` that value already is the reply, with ``redis.asyncio.Redis`` it is an
awaitable. :class:`OrderStore` (worker, reconciler, CLI) and :class:`AsyncOrderStore`
(api) only differ in the ten-line driver that runs those generators.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Awaitable, Callable, Generator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Concatenate, Generic, ParamSpec, TypedDict, TypeVar

import redis
import redis.asyncio

from services.keys import Keys

P = ParamSpec("P")
T = TypeVar("T")
ClientT = TypeVar("ClientT", redis.Redis, redis.asyncio.Redis)
Steps = Generator[Any, Any, T]

ORDER_FIELDS = (
    "order_id",
    "item_id",
    "user_id",
    "quantity",
    "status",
    "reason",
    "accepted_at_ms",
    "persisted_at_ms",
    "idempotency_key",
)
_INT_FIELDS = frozenset({"item_id", "quantity", "accepted_at_ms", "persisted_at_ms"})
TASK_FIELDS = ("order_id", "item_id", "user_id", "quantity", "accepted_at_ms")
"""Fields of the ``persist_order`` task payload (see :func:`task_payload`)."""


class Order(TypedDict, total=False):
    """An order as stored in its Redis hash (integers parsed; absent fields omitted)."""

    order_id: str
    item_id: int
    user_id: str
    quantity: int
    status: str
    reason: str
    accepted_at_ms: int
    persisted_at_ms: int
    idempotency_key: str


class Status(enum.StrEnum):
    """Lifecycle of an order in Redis."""

    ACCEPTED = "accepted"
    PERSISTED = "persisted"
    FAILED = "failed"


class Outcome(enum.StrEnum):
    """What :meth:`OrderStore.reserve` decided."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    """The Idempotency-Key already produced an order: that order is returned, nothing reserved."""
    IDEMPOTENCY_CONFLICT = "idempotency_conflict"
    """The Idempotency-Key was used for a different item, user or quantity."""
    SOLD_OUT = "sold_out"
    LIMIT_EXCEEDED = "limit_exceeded"
    UNKNOWN_ITEM = "unknown_item"
    """No stock counter: the item does not exist or was never warmed up."""


@dataclass(frozen=True, slots=True)
class ReserveResult:
    """Result of a reservation; ``order`` is set for ``accepted`` and ``duplicate``."""

    outcome: Outcome
    order: Order | None = None
    stock_left: int | None = None
    """Stock after an accepted reservation, or the stock that was too low for ``sold_out``."""
    bought: int | None = None
    """Units the user already held, for ``limit_exceeded``."""


def task_payload(order: Order) -> dict[str, Any]:
    """The ``persist_order`` task argument: the order's immutable fields."""
    return {field: order[field] for field in TASK_FIELDS}  # type: ignore[literal-required]


# KEYS: stock, order, idem, bought, pending
# ARGV: order_id, item_id, user_id, quantity, now_ms, per_user_limit, idem_ttl_s,
#       idem_key ('' for none), order key prefix (to read the order an idem key points to)
_RESERVE = """
local idem_key = ARGV[8]
if idem_key ~= '' then
  local existing = redis.call('GET', KEYS[3])
  if existing then
    local order = redis.call('HGETALL', ARGV[9] .. existing)
    local f = {}
    for i = 1, #order, 2 do f[order[i]] = order[i + 1] end
    if f.item_id ~= ARGV[2] or f.user_id ~= ARGV[3] or f.quantity ~= ARGV[4] then
      return {'idempotency_conflict'}
    end
    return {'duplicate', order}
  end
end
local stock = redis.call('GET', KEYS[1])
if not stock then return {'unknown_item'} end
local qty = tonumber(ARGV[4])
if tonumber(stock) < qty then return {'sold_out', stock} end
local bought = tonumber(redis.call('GET', KEYS[4]) or '0')
if bought + qty > tonumber(ARGV[6]) then return {'limit_exceeded', bought} end
local left = redis.call('DECRBY', KEYS[1], qty)
redis.call('INCRBY', KEYS[4], qty)
redis.call('HSET', KEYS[2], 'order_id', ARGV[1], 'item_id', ARGV[2], 'user_id', ARGV[3],
  'quantity', ARGV[4], 'status', 'accepted', 'accepted_at_ms', ARGV[5], 'idempotency_key', idem_key)
redis.call('ZADD', KEYS[5], ARGV[5], ARGV[1])
if idem_key ~= '' then redis.call('SET', KEYS[3], ARGV[1], 'EX', ARGV[7]) end
return {'accepted', left}
"""

# KEYS: order, stock, bought, pending, idem   ARGV: order_id, reason
# Only an order still 'accepted' is undone, so compensating twice restores stock once.
# The idempotency key is released so that a client retrying after a 503 gets a new try.
_COMPENSATE = """
if redis.call('HGET', KEYS[1], 'status') ~= 'accepted' then return 0 end
local qty = tonumber(redis.call('HGET', KEYS[1], 'quantity'))
redis.call('INCRBY', KEYS[2], qty)
if tonumber(redis.call('DECRBY', KEYS[3], qty)) <= 0 then redis.call('DEL', KEYS[3]) end
redis.call('HSET', KEYS[1], 'status', 'failed', 'reason', ARGV[2])
redis.call('ZREM', KEYS[4], ARGV[1])
if redis.call('GET', KEYS[5]) == ARGV[1] then redis.call('DEL', KEYS[5]) end
return 1
"""

# KEYS: pending, order keys...   ARGV: persisted_at_ms, order ids...
# Returns the ids that moved accepted -> persisted (a redelivery changes nothing).
_MARK_PERSISTED = """
local done = {}
for i = 2, #KEYS do
  if redis.call('HGET', KEYS[i], 'status') == 'accepted' then
    redis.call('HSET', KEYS[i], 'status', 'persisted', 'persisted_at_ms', ARGV[1])
    redis.call('ZREM', KEYS[1], ARGV[i])
    done[#done + 1] = ARGV[i]
  end
end
return done
"""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def parse_order(raw: Mapping[Any, Any] | list[Any]) -> Order | None:
    """An :class:`Order` from a Redis hash reply (mapping or flat list); ``None`` if empty."""
    pairs = raw.items() if isinstance(raw, Mapping) else zip(raw[::2], raw[1::2], strict=True)
    fields: dict[str, Any] = {}
    for key, value in pairs:
        name, text = _text(key), _text(value)
        if text == "" and name != "idempotency_key":
            continue
        fields[name] = int(text) if name in _INT_FIELDS else text
    return Order(**fields) if fields else None  # type: ignore[typeddict-item]


def _parse_reserve(reply: list[Any]) -> ReserveResult:
    outcome = Outcome(_text(reply[0]))
    if outcome is Outcome.ACCEPTED:
        return ReserveResult(outcome, stock_left=int(reply[1]))
    if outcome is Outcome.DUPLICATE:
        return ReserveResult(outcome, order=parse_order(reply[1]))
    if outcome is Outcome.SOLD_OUT:
        return ReserveResult(outcome, stock_left=int(reply[1]))
    if outcome is Outcome.LIMIT_EXCEEDED:
        return ReserveResult(outcome, bought=int(reply[1]))
    return ReserveResult(outcome)


class _StoreCore(Generic[ClientT]):
    """Scripts, key building and every operation as a step generator, shared by both flavours."""

    def __init__(
        self,
        client: ClientT,
        prefix: str,
        *,
        per_user_limit: int,
        idempotency_ttl_seconds: int = 86_400,
    ) -> None:
        self.client = client
        self.keys = Keys(prefix)
        self.per_user_limit = per_user_limit
        self.idempotency_ttl_seconds = idempotency_ttl_seconds
        # register_script exists on both clients: EVALSHA, falling back to EVAL once per server.
        self._lua_reserve = client.register_script(_RESERVE)
        self._lua_compensate = client.register_script(_COMPENSATE)
        self._lua_mark_persisted = client.register_script(_MARK_PERSISTED)

    def _reserve_steps(
        self,
        order_id: str,
        item_id: int,
        user_id: str,
        quantity: int,
        idempotency_key: str | None,
        now_ms: int,
    ) -> Steps[ReserveResult]:
        """Atomically check the idempotency key, stock and the per-user limit, then reserve and
        record the order as accepted and pending. One key never reserves twice."""
        k = self.keys
        idem = idempotency_key or ""
        reply = yield self._lua_reserve(
            keys=[
                k.stock(item_id),
                k.order(order_id),
                k.idempotency(idem),
                k.bought(user_id, item_id),
                k.pending,
            ],
            args=[
                order_id,
                item_id,
                user_id,
                quantity,
                now_ms,
                self.per_user_limit,
                self.idempotency_ttl_seconds,
                idem,
                k.order(""),
            ],
        )
        result = _parse_reserve(reply)
        if result.outcome is Outcome.ACCEPTED:
            order = Order(
                order_id=order_id,
                item_id=item_id,
                user_id=user_id,
                quantity=quantity,
                status=Status.ACCEPTED.value,
                accepted_at_ms=now_ms,
                idempotency_key=idem,
            )
            result = ReserveResult(result.outcome, order=order, stock_left=result.stock_left)
        return result

    def _get_order_steps(self, order_id: str) -> Steps[Order | None]:
        """The order, or ``None`` if unknown."""
        raw = yield self.client.hgetall(self.keys.order(order_id))
        return parse_order(raw)

    def _compensate_steps(self, order_id: str, reason: str) -> Steps[bool]:
        """Undo an accepted order: restore stock and the user's count, set status failed with
        ``reason``, drop it from pending and release its idempotency key.

        Idempotent: only an order still ``accepted`` is undone. Returns whether it was.
        """
        k = self.keys
        item_id, user_id, idem = yield self.client.hmget(
            k.order(order_id), ["item_id", "user_id", "idempotency_key"]
        )
        if item_id is None or user_id is None:
            return False
        # item_id/user_id never change after acceptance, so reading them first is race-free;
        # the script re-checks the status atomically.
        item = int(item_id)
        done = yield self._lua_compensate(
            keys=[
                k.order(order_id),
                k.stock(item),
                k.bought(_text(user_id), item),
                k.pending,
                k.idempotency(_text(idem or b"")),
            ],
            args=[order_id, reason],
        )
        return bool(done)

    def _mark_persisted_steps(
        self, order_ids: Iterable[str], persisted_at_ms: int
    ) -> Steps[list[str]]:
        """Move accepted orders to persisted (call after their rows are committed) and out of
        pending. Idempotent; returns the ids that changed."""
        ids = list(order_ids)
        if not ids:
            return []
        done = yield self._lua_mark_persisted(
            keys=[self.keys.pending, *(self.keys.order(i) for i in ids)],
            args=[persisted_at_ms, *ids],
        )
        return [_text(i) for i in done]

    def _pending_older_than_steps(
        self, accepted_before_ms: int, limit: int = 1000
    ) -> Steps[list[Order]]:
        """Accepted, unpersisted orders accepted strictly before the epoch millisecond
        ``accepted_before_ms`` (pass ``now_ms - grace_ms``), oldest first, at most ``limit``."""
        ids = yield self.client.zrangebyscore(
            self.keys.pending, "-inf", f"({accepted_before_ms}", start=0, num=limit
        )
        if not ids:
            return []
        pipe = self.client.pipeline(transaction=False)
        for order_id in ids:
            pipe.hgetall(self.keys.order(_text(order_id)))
        raws = yield pipe.execute()
        orders = (parse_order(raw) for raw in raws)
        return [o for o in orders if o is not None and o.get("status") == Status.ACCEPTED]

    def _set_stock_steps(self, item_id: int, n: int) -> Steps[None]:
        """Set one live stock counter (overwrites)."""
        yield self.client.set(self.keys.stock(item_id), n)

    def _set_stocks_steps(self, stocks: Mapping[int, int], overwrite: bool = False) -> Steps[int]:
        """Set stock counters ``{item_id: n}``; without ``overwrite`` only the missing ones
        (SET NX: never clobbers the live stock of a running sale). Returns how many were set."""
        if not stocks:
            return 0
        pipe = self.client.pipeline(transaction=False)
        for item_id, n in stocks.items():
            pipe.set(self.keys.stock(item_id), n, nx=not overwrite)
        replies = yield pipe.execute()
        return sum(1 for r in replies if r)

    def _get_stocks_steps(self, item_ids: list[int]) -> Steps[list[int | None]]:
        """Live stock counters of ``item_ids`` (``None`` where missing)."""
        if not item_ids:
            return []
        values = yield self.client.mget([self.keys.stock(i) for i in item_ids])
        return [None if v is None else int(v) for v in values]

    def _clear_sale_steps(self) -> Steps[int]:
        """Delete every order, idempotency key, per-user count and the pending set under this
        prefix (a fresh sale). Returns the number of keys deleted."""
        p = self.keys.prefix
        deleted = yield self.client.delete(self.keys.pending)
        for pattern in (f"{p}order:*", f"{p}idem:*", f"{p}bought:*"):
            cursor = 0
            while True:
                cursor, found = yield self.client.scan(cursor, match=pattern, count=1000)
                if found:
                    deleted += yield self.client.delete(*found)
                if int(cursor) == 0:
                    break
        return int(deleted)


def _run_sync(steps: Steps[T]) -> T:
    reply: Any = None
    try:
        while True:
            reply = steps.send(reply)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


async def _run_async(steps: Steps[T]) -> T:
    reply: Any = None
    try:
        while True:
            reply = await steps.send(reply)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


def _sync(op: Callable[Concatenate[Any, P], Steps[T]]) -> Callable[Concatenate[Any, P], T]:
    @functools.wraps(op)
    def run(self: Any, *args: P.args, **kwargs: P.kwargs) -> T:
        return _run_sync(op(self, *args, **kwargs))

    return run


def _async(
    op: Callable[Concatenate[Any, P], Steps[T]],
) -> Callable[Concatenate[Any, P], Awaitable[T]]:
    @functools.wraps(op)
    async def run(self: Any, *args: P.args, **kwargs: P.kwargs) -> T:
        return await _run_async(op(self, *args, **kwargs))

    return run


class OrderStore(_StoreCore[redis.Redis]):
    """Synchronous store over ``redis.Redis`` (worker, reconciler, CLI)."""

    reserve = _sync(_StoreCore._reserve_steps)
    get_order = _sync(_StoreCore._get_order_steps)
    compensate = _sync(_StoreCore._compensate_steps)
    mark_failed = compensate
    mark_persisted = _sync(_StoreCore._mark_persisted_steps)
    pending_older_than = _sync(_StoreCore._pending_older_than_steps)
    set_stock = _sync(_StoreCore._set_stock_steps)
    set_stocks = _sync(_StoreCore._set_stocks_steps)
    get_stocks = _sync(_StoreCore._get_stocks_steps)
    clear_sale = _sync(_StoreCore._clear_sale_steps)


class AsyncOrderStore(_StoreCore[redis.asyncio.Redis]):
    """Asynchronous store over ``redis.asyncio.Redis`` (api); same methods, awaitable."""

    reserve = _async(_StoreCore._reserve_steps)
    get_order = _async(_StoreCore._get_order_steps)
    compensate = _async(_StoreCore._compensate_steps)
    mark_failed = compensate
    mark_persisted = _async(_StoreCore._mark_persisted_steps)
    pending_older_than = _async(_StoreCore._pending_older_than_steps)
    set_stock = _async(_StoreCore._set_stock_steps)
    set_stocks = _async(_StoreCore._set_stocks_steps)
    get_stocks = _async(_StoreCore._get_stocks_steps)
    clear_sale = _async(_StoreCore._clear_sale_steps)
