"""Order state in Redis: the order's state machine, each transition one Lua script.

The order's state machine
-------------------------
Redis is the arbiter of an order's fate; the first component to settle it wins. The
order hash's ``status`` (layout in :mod:`services.keys`) moves only through these
scripts, each atomic on the item's slot::

    (none) --reserve (api)--> accepted --claim (worker)--> persisting --mark_persisted--> persisted
                                 |                             |
                                 +--cancel (api)--> failed <---+--fail (worker dead-letter)
                                 +--fail (worker)--> failed

- ``reserve`` (api): checks the Idempotency-Key, the stock and the per-user limit, takes
  the units and records the order ``accepted`` and pending. Idempotent per order id (a
  re-sent reservation returns the order it made) and per Idempotency-Key (a key that
  produced an order returns that order, whatever became of it since).
- ``claim`` (worker, *before* its transaction): ``accepted``/``persisting`` ->
  ``persisting``, stamping ``claimed_at_ms`` (the reconciler's "a worker has it" signal).
  A ``failed`` order is skipped. So an api cancel and a worker commit never both happen.
- ``mark_persisted`` (worker, after the commit; reconciler for rows it finds):
  ``persisting``/``accepted`` -> ``persisted``, out of pending. Only for committed rows.
- ``cancel`` (api, when the publish failed in any way): only ``accepted`` -> ``failed``;
  stock, per-user count and the item's Idempotency-Key record are given back. Its
  result is the api's answer: cancelled -> 503 "nothing was reserved"; not cancelled
  (a worker claimed or persisted it) -> 202.
- ``fail`` (worker, the order can never be persisted: dead-letter): ``accepted`` or
  ``persisting`` -> ``failed``, same give-back as ``cancel``.

``persisted`` and ``failed`` are final. In PostgreSQL an order exists (one row, keyed by
its id) or not: a row is written only by a worker holding the claim, and a claimed order
is failed only when its row was not written.

What each answer of ``POST /orders`` promises:

- 202 ``accepted``: the order is reserved and will be settled by a worker (persisted, or
  failed with a reason); ``GET /orders/{id}`` follows it.
- 200 (repeated Idempotency-Key): that key's order, in its current status.
- 409/404/422: nothing was reserved.
- 503 ``broker_unavailable``/``state_unavailable``: nothing was reserved (certainly).
- 503 ``outcome_unknown`` (with ``order_id``): the reservation may or may not exist;
  retrying with the same Idempotency-Key (or ``GET /orders/{order_id}``) tells.

Stock counters follow item updates exactly once per update version (``shift_stock``),
and a counter created late (``init_stocks``) or reset (``reset_items``) includes every
shift of a version newer than the PostgreSQL read it was built from.

One logic, two flavours. Each operation is written once, as a generator that yields the
value a client call returns and receives the reply (sans-I/O style): with a synchronous
``redis.Redis`` that value already is the reply, with ``redis.asyncio.Redis`` it is an
awaitable. (Queueing a script on a pipeline is yielded too: it is a coroutine with the
asyncio client.) :class:`OrderStore` (worker, reconciler, CLI) and :class:`AsyncOrderStore`
(api) only differ in the ten-line driver that runs those generators.
"""

from __future__ import annotations

import enum
import functools
from collections import defaultdict
from collections.abc import Awaitable, Callable, Generator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Concatenate, Generic, ParamSpec, Protocol, TypedDict, TypeVar

import redis
import redis.asyncio
from redis.exceptions import NoScriptError

from services.keys import Keys

P = ParamSpec("P")
T = TypeVar("T")
ClientT = TypeVar("ClientT", redis.Redis, redis.asyncio.Redis)
Steps = Generator[Any, Any, T]


class _Script(Protocol):
    """A registered Lua script: ``redis.commands.core.Script`` or ``AsyncScript``."""

    sha: str

    def __call__(self, keys: Any = ..., args: Any = ..., client: Any = ...) -> Any: ...


ORDER_FIELDS = (
    "order_id",
    "item_id",
    "user_id",
    "quantity",
    "status",
    "reason",
    "accepted_at_ms",
    "claimed_at_ms",
    "persisted_at_ms",
    "idempotency_key",
)
_INT_FIELDS = frozenset(
    {"item_id", "quantity", "accepted_at_ms", "claimed_at_ms", "persisted_at_ms"}
)
TASK_FIELDS = ("order_id", "item_id", "user_id", "quantity", "accepted_at_ms")
"""Fields of the ``persist_order`` task payload (see :func:`task_payload`)."""
_SCAN_COUNT = 1000
_KEYS_PER_CALL = 1000  # keys handed to one reset script call


class Order(TypedDict, total=False):
    """An order as stored in its Redis hash (integers parsed; absent fields omitted)."""

    order_id: str
    item_id: int
    user_id: str
    quantity: int
    status: str
    reason: str
    accepted_at_ms: int
    claimed_at_ms: int
    persisted_at_ms: int
    idempotency_key: str


class Status(enum.StrEnum):
    """Lifecycle of an order in Redis (see the module docstring)."""

    ACCEPTED = "accepted"
    PERSISTING = "persisting"
    PERSISTED = "persisted"
    FAILED = "failed"


LIVE = frozenset({Status.ACCEPTED, Status.PERSISTING})
"""Statuses of an order whose units are reserved and not yet in PostgreSQL's stock."""


class Outcome(enum.StrEnum):
    """What :meth:`OrderStore.reserve` decided."""

    ACCEPTED = "accepted"
    """Reserved now, or by an earlier attempt with the same order id (a re-sent script)."""
    DUPLICATE = "duplicate"
    """The Idempotency-Key already produced an order: that order is returned, nothing reserved."""
    IDEMPOTENCY_CONFLICT = "idempotency_conflict"
    """The Idempotency-Key was used for a different item, user or quantity."""
    SOLD_OUT = "sold_out"
    LIMIT_EXCEEDED = "limit_exceeded"
    UNKNOWN_ITEM = "unknown_item"
    """No stock counter: the item does not exist or was never warmed up."""


class Claim(enum.StrEnum):
    """What :meth:`OrderStore.claim` found for one order."""

    CLAIMED = "claimed"
    """Now ``persisting``: this worker may commit it."""
    CANCELLED = "cancelled"
    """Already ``failed`` (the api cancelled it, or it was dead-lettered): skip it."""
    PERSISTED = "persisted"
    """Already ``persisted``: its row exists; committing again finds the duplicate."""
    UNKNOWN = "unknown"
    """No Redis record (never reserved here, e.g. a benchmark's message): persist as is."""


class Shift(enum.StrEnum):
    """What :meth:`OrderStore.shift_stock` did with one update version's delta."""

    APPLIED = "applied"
    ALREADY = "already"
    """This version was seen before: applied then (or deliberately not)."""
    INCLUDED = "included"
    """The counter was built from a PostgreSQL read at or after this version."""
    RECORDED = "recorded"
    """No counter yet: kept, and added when the counter is created from an older read."""


@dataclass(frozen=True, slots=True)
class ReserveResult:
    """Result of a reservation; ``order`` is set for ``accepted`` and ``duplicate``."""

    outcome: Outcome
    order: Order | None = None
    stock_left: int | None = None
    """Stock after an accepted reservation, or the stock that was too low for ``sold_out``."""
    bought: int | None = None
    """Units the user already held, for ``limit_exceeded``."""


@dataclass(frozen=True, slots=True)
class ItemSnapshot:
    """An item's stock counter and live orders, read atomically (reconciler)."""

    stock: int | None
    live_units: dict[str, int]
    """Order id -> units, for every order pending at that instant."""


def task_payload(order: Order) -> dict[str, Any]:
    """The ``persist_order`` task argument: the order's immutable fields."""
    return {field: order[field] for field in TASK_FIELDS}  # type: ignore[literal-required]


# Lua helpers. Scripts only build key names under the item tag of their KEYS[1] (passed
# as ARGV), so every key a script touches is in one cluster slot.
_HASH = """
local function hash(key)
  local raw = redis.call('HGETALL', key)
  local f = {}
  for i = 1, #raw, 2 do f[raw[i]] = raw[i + 1] end
  return f, raw
end
"""

# KEYS: stock, order, bought, pending, idem (the item's record of the key; unused if none)
# ARGV: order_id, item_id, user_id, quantity, now_ms, per_user_limit, idem_ttl_s,
#       idem_key ('' for none), the item's order key prefix
_RESERVE = (
    _HASH
    + """
local mine, raw = hash(KEYS[2])
if mine.status then return {'existing', raw} end
local idem_key = ARGV[8]
if idem_key ~= '' then
  local existing = redis.call('GET', KEYS[5])
  if existing then
    local f, order = hash(ARGV[9] .. existing)
    if f.status then  -- a record left by a reset without its order is ignored
      if f.user_id ~= ARGV[3] or f.quantity ~= ARGV[4] then return {'idempotency_conflict'} end
      return {'duplicate', order}
    end
  end
end
local stock = redis.call('GET', KEYS[1])
if not stock then return {'unknown_item'} end
local qty = tonumber(ARGV[4])
if tonumber(stock) < qty then return {'sold_out', stock} end
local bought = tonumber(redis.call('GET', KEYS[3]) or '0')
if bought + qty > tonumber(ARGV[6]) then return {'limit_exceeded', bought} end
local left = redis.call('DECRBY', KEYS[1], qty)
redis.call('INCRBY', KEYS[3], qty)
redis.call('HSET', KEYS[2], 'order_id', ARGV[1], 'item_id', ARGV[2], 'user_id', ARGV[3],
  'quantity', ARGV[4], 'status', 'accepted', 'accepted_at_ms', ARGV[5], 'idempotency_key', idem_key)
redis.call('ZADD', KEYS[4], ARGV[5], ARGV[1])
if idem_key ~= '' then redis.call('SET', KEYS[5], ARGV[1], 'EX', ARGV[7]) end
return {'accepted', left}
"""
)

# KEYS: order, stock, bought, pending, idem   ARGV: order_id, reason, statuses it may leave
# ('accepted' for the api's cancel, 'accepted persisting' for the worker's fail).
# Only a live order is undone, so failing twice gives the stock back once.
_SETTLE_FAILED = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status or not string.find(' ' .. ARGV[3] .. ' ', ' ' .. status .. ' ', 1, true) then
  return 0
end
local qty = tonumber(redis.call('HGET', KEYS[1], 'quantity'))
redis.call('INCRBY', KEYS[2], qty)
if tonumber(redis.call('DECRBY', KEYS[3], qty)) <= 0 then redis.call('DEL', KEYS[3]) end
redis.call('HSET', KEYS[1], 'status', 'failed', 'reason', ARGV[2])
redis.call('ZREM', KEYS[4], ARGV[1])
if redis.call('GET', KEYS[5]) == ARGV[1] then redis.call('DEL', KEYS[5]) end
return 1
"""

# KEYS: order keys of one item   ARGV: now_ms
# Returns one Claim value per order.
_CLAIM = """
local found = {}
for i = 1, #KEYS do
  local status = redis.call('HGET', KEYS[i], 'status')
  if status == 'accepted' or status == 'persisting' then
    redis.call('HSET', KEYS[i], 'status', 'persisting', 'claimed_at_ms', ARGV[1])
    found[i] = 'claimed'
  elseif status == 'failed' then found[i] = 'cancelled'
  elseif status == 'persisted' then found[i] = 'persisted'
  else found[i] = 'unknown' end
end
return found
"""

# KEYS: pending, order keys of one item   ARGV: persisted_at_ms, order ids...
# Returns the ids that became persisted (a redelivery changes nothing).
_MARK_PERSISTED = """
local done = {}
for i = 2, #KEYS do
  local status = redis.call('HGET', KEYS[i], 'status')
  if status == 'accepted' or status == 'persisting' then
    redis.call('HSET', KEYS[i], 'status', 'persisted', 'persisted_at_ms', ARGV[1])
    redis.call('ZREM', KEYS[1], ARGV[i])
    done[#done + 1] = ARGV[i]
  end
end
return done
"""

# The stock a counter built from a PostgreSQL read at version ARGV[2] must hold: the read
# stock ARGV[1], plus every recorded shift of a newer version. Shared by init and reset.
_STOCK_SINCE = """
local function stock_since(shifts_key, stock, version)
  local n = tonumber(stock)
  local shifts = redis.call('HGETALL', shifts_key)
  for i = 1, #shifts, 2 do
    if tonumber(shifts[i]) > tonumber(version) then n = n + tonumber(shifts[i + 1]) end
  end
  return n
end
"""

# KEYS: stock, stock_meta, shifts   ARGV: stock read from PostgreSQL, the row's version
# Creates a missing counter only (a running sale's counter is never clobbered).
_INIT_STOCK = (
    _STOCK_SINCE
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[1], stock_since(KEYS[3], ARGV[1], ARGV[2]))
redis.call('HSET', KEYS[2], 'version', ARGV[2])
return 1
"""
)

# KEYS: stock, stock_meta, shifts   ARGV: version, delta
_SHIFT_STOCK = """
if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then return {'already'} end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
if redis.call('EXISTS', KEYS[1]) == 0 then return {'recorded'} end
local base = tonumber(redis.call('HGET', KEYS[2], 'version') or '0')
if tonumber(ARGV[1]) <= base then return {'included'} end
return {'applied', redis.call('INCRBY', KEYS[1], ARGV[2])}
"""

# The live orders of an item: id -> {user, qty}. Shared by snapshot and reset.
_LIVE_ORDERS = """
local function live_orders(pending_key, tag)
  local live, units = {}, 0
  for _, id in ipairs(redis.call('ZRANGE', pending_key, 0, -1)) do
    local o = redis.call('HMGET', tag .. 'order:' .. id, 'status', 'user_id', 'quantity')
    if o[1] == 'accepted' or o[1] == 'persisting' then
      live[id] = {o[2], tonumber(o[3])}
      units = units + tonumber(o[3])
    end
  end
  return live, units
end
"""

# KEYS: stock, pending   ARGV: the item tag.  Returns {stock or false, id, units, ...}.
_SNAPSHOT = (
    _LIVE_ORDERS
    + """
local reply = {redis.call('GET', KEYS[1]) or false}
local live = live_orders(KEYS[2], ARGV[1])
for id, o in pairs(live) do reply[#reply + 1] = id; reply[#reply + 1] = o[2] end
return reply
"""
)

# KEYS: pending, then keys found under the item's tag   ARGV: the item tag
# Deletes the sale records that belong to no live order; a live order keeps its hash,
# its Idempotency-Key record and its user's units. A failed order keeps its hash: it is
# the tombstone that makes a late message of a cancelled order a no-op (without it the
# worker would find no record and persist an order its client was told did not exist).
# Returns the number of keys deleted.
_RESET_RECORDS = (
    _LIVE_ORDERS
    + """
local live = live_orders(KEYS[1], ARGV[1])
local held = {}
for _, o in pairs(live) do held[o[1]] = (held[o[1]] or 0) + o[2] end
local deleted = 0
for i = 2, #KEYS do
  local kind, name = string.match(string.sub(KEYS[i], #ARGV[1] + 1), '^(%a+):(.*)$')
  local keep = true
  if kind == 'order' then
    keep = live[name] ~= nil or redis.call('HGET', KEYS[i], 'status') == 'failed'
  elseif kind == 'idem' then keep = live[redis.call('GET', KEYS[i]) or ''] ~= nil
  elseif kind == 'bought' then
    keep = held[name] ~= nil
    if keep then redis.call('SET', KEYS[i], held[name]) end
  end
  if not keep then deleted = deleted + redis.call('DEL', KEYS[i]) end
end
return deleted
"""
)

# KEYS: stock, stock_meta, shifts, pending   ARGV: stock read from PostgreSQL, its version,
# the item tag. Overwrites the counter: database stock minus live units plus newer shifts.
_RESET_STOCK = (
    _STOCK_SINCE
    + _LIVE_ORDERS
    + """
local live, units = live_orders(KEYS[4], ARGV[3])
for _, id in ipairs(redis.call('ZRANGE', KEYS[4], 0, -1)) do
  if not live[id] then redis.call('ZREM', KEYS[4], id) end
end
redis.call('SET', KEYS[1], stock_since(KEYS[3], ARGV[1], ARGV[2]) - units)
redis.call('HSET', KEYS[2], 'version', ARGV[2])
local shifts = redis.call('HKEYS', KEYS[3])
for _, v in ipairs(shifts) do
  if tonumber(v) <= tonumber(ARGV[2]) then redis.call('HDEL', KEYS[3], v) end
end
return units
"""
)

# KEYS: stock   ARGV: delta.  A relative correction of an existing counter (reconciler).
_ADJUST_STOCK = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
return redis.call('INCRBY', KEYS[1], ARGV[1])
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
    kind = _text(reply[0])
    if kind == "existing":
        return ReserveResult(Outcome.ACCEPTED, order=parse_order(reply[1]))
    outcome = Outcome(kind)
    if outcome is Outcome.ACCEPTED or outcome is Outcome.SOLD_OUT:
        return ReserveResult(outcome, stock_left=int(reply[1]))
    if outcome is Outcome.DUPLICATE:
        return ReserveResult(outcome, order=parse_order(reply[1]))
    if outcome is Outcome.LIMIT_EXCEEDED:
        return ReserveResult(outcome, bought=int(reply[1]))
    return ReserveResult(outcome)


def _by_item(refs: Iterable[tuple[int, str]]) -> dict[int, list[str]]:
    """Order ids grouped by item id (one script call per item: one slot each)."""
    grouped: dict[int, list[str]] = defaultdict(list)
    for item_id, order_id in refs:
        grouped[item_id].append(order_id)
    return grouped


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
        self.client: ClientT = client
        self.keys = Keys(prefix)
        self.per_user_limit = per_user_limit
        self.idempotency_ttl_seconds = idempotency_ttl_seconds
        # register_script exists on both clients: EVALSHA, falling back to EVAL once per server.
        register: Callable[[str], _Script] = client.register_script
        self._lua_reserve = register(_RESERVE)
        self._lua_settle_failed = register(_SETTLE_FAILED)
        self._lua_claim = register(_CLAIM)
        self._lua_mark_persisted = register(_MARK_PERSISTED)
        self._lua_init_stock = register(_INIT_STOCK)
        self._lua_shift_stock = register(_SHIFT_STOCK)
        self._lua_snapshot = register(_SNAPSHOT)
        self._lua_reset_records = register(_RESET_RECORDS)
        self._lua_reset_stock = register(_RESET_STOCK)
        self._lua_adjust_stock = register(_ADJUST_STOCK)

    # --- the order's transitions --------------------------------------------------------

    def _reserve_steps(
        self,
        order_id: str,
        item_id: int,
        user_id: str,
        quantity: int,
        idempotency_key: str | None,
        now_ms: int,
    ) -> Steps[ReserveResult]:
        """Bind the Idempotency-Key to this request and atomically check the key, stock
        and the per-user limit, reserve and record the order as accepted and pending: one
        round trip (the binding and the script in one pipeline).

        The binding (``SET NX``, its own cluster slot) catches a key reused for another
        item; the script, on the item's slot, catches one reused for another user or
        quantity. Both run together, so when the binding says the key belongs to another
        request and the script had reserved, the reservation is cancelled before the
        conflict is answered (it was never published).

        Safe to re-send with the same arguments (the client's retry after a time-out): the
        binding is the same value, and the script returns the order it already made.
        """
        k = self.keys
        idem = idempotency_key or ""
        request = f"{item_id}:{user_id}:{quantity}"
        keys = [
            k.stock(item_id),
            k.order(item_id, order_id),
            k.bought(item_id, user_id),
            k.pending(item_id),
            k.idempotency(item_id, idem),
        ]
        args: list[str | int] = [
            order_id,
            item_id,
            user_id,
            quantity,
            now_ms,
            self.per_user_limit,
            self.idempotency_ttl_seconds,
            idem,
            k.order(item_id, ""),
        ]
        while True:
            pipe = self.client.pipeline(transaction=False)
            if idem:
                binding = k.idempotency_binding(idem)
                pipe.set(binding, request, nx=True, ex=self.idempotency_ttl_seconds, get=True)
            # EVALSHA by hand: a pipeline's own script support asks SCRIPT EXISTS first,
            # one more round trip on every call.
            pipe.evalsha(self._lua_reserve.sha, len(keys), *keys, *args)
            replies = yield pipe.execute(raise_on_error=False)
            reply = replies[-1]
            if isinstance(reply, NoScriptError):  # first call on this server: load, again
                yield self.client.script_load(_RESERVE)
                continue
            if failed := next((r for r in replies if isinstance(r, Exception)), None):
                raise failed
            break
        bound = replies[0] if idem else None
        if bound is not None and _text(bound) != request:
            made = _parse_reserve(reply).outcome is Outcome.ACCEPTED
            if not made or (yield from self._cancel_steps(item_id, order_id, "key reused")):
                return ReserveResult(Outcome.IDEMPOTENCY_CONFLICT)
        result = _parse_reserve(reply)
        if result.outcome is Outcome.ACCEPTED and result.order is None:
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

    def _settle_failed_steps(
        self, item_id: int, order_id: str, reason: str, leaving: str
    ) -> Steps[bool]:
        k = self.keys
        user_id, idem = yield self.client.hmget(
            k.order(item_id, order_id), ["user_id", "idempotency_key"]
        )
        if user_id is None:
            return False
        # user_id and the key never change after acceptance, so reading them first is
        # race-free; the script re-checks the status atomically.
        done = yield self._lua_settle_failed(
            keys=[
                k.order(item_id, order_id),
                k.stock(item_id),
                k.bought(item_id, _text(user_id)),
                k.pending(item_id),
                k.idempotency(item_id, _text(idem or b"")),
            ],
            args=[order_id, reason, leaving],
        )
        return bool(done)

    def _cancel_steps(self, item_id: int, order_id: str, reason: str) -> Steps[bool]:
        """The api's cancel: ``accepted`` -> ``failed``, stock, user count and key given back.

        Returns whether it cancelled; ``False`` means a worker claimed or settled it first
        (or it does not exist), and then the order stands.
        """
        return (yield from self._settle_failed_steps(item_id, order_id, reason, "accepted"))

    def _fail_steps(self, item_id: int, order_id: str, reason: str) -> Steps[bool]:
        """The worker's dead-letter: ``accepted``/``persisting`` -> ``failed``, stock back.

        Call only when the order's row was not written. Idempotent; returns whether it moved.
        """
        return (
            yield from self._settle_failed_steps(item_id, order_id, reason, "accepted persisting")
        )

    def _claim_steps(self, refs: Iterable[tuple[int, str]], now_ms: int) -> Steps[dict[str, Claim]]:
        """Claim orders ``(item_id, order_id)`` before committing them; a :class:`Claim` each."""
        grouped = _by_item(refs)
        if not grouped:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for item_id, ids in grouped.items():
            yield self._lua_claim(
                keys=[self.keys.order(item_id, i) for i in ids], args=[now_ms], client=pipe
            )
        replies = yield pipe.execute()
        found: dict[str, Claim] = {}
        for ids, reply in zip(grouped.values(), replies, strict=True):
            for order_id, claim in zip(ids, reply, strict=True):
                found[order_id] = Claim(_text(claim))
        return found

    def _mark_persisted_steps(
        self, refs: Iterable[tuple[int, str]], persisted_at_ms: int
    ) -> Steps[list[str]]:
        """Move orders ``(item_id, order_id)`` whose rows are committed to persisted, out of
        pending. Idempotent; returns the ids that changed."""
        grouped = _by_item(refs)
        if not grouped:
            return []
        pipe = self.client.pipeline(transaction=False)
        # Declared: mypy cannot infer loop variables used in a comprehension inside ``yield``.
        item_id: int
        ids: list[str]
        for item_id, ids in grouped.items():
            yield self._lua_mark_persisted(
                keys=[self.keys.pending(item_id), *(self.keys.order(item_id, i) for i in ids)],
                args=[persisted_at_ms, *ids],
                client=pipe,
            )
        replies = yield pipe.execute()
        return [_text(i) for reply in replies for i in reply]

    # --- reading orders -----------------------------------------------------------------

    def _get_order_steps(self, order_id: str) -> Steps[Order | None]:
        """The order, or ``None`` if unknown (also for ids that carry no item)."""
        key = self.keys.order_by_id(order_id)
        if key is None:
            return None
        raw = yield self.client.hgetall(key)
        return parse_order(raw)

    def _pending_items_steps(self) -> Steps[list[int]]:
        """Ids of the items that have a pending set (SCAN; for callers without a catalog)."""
        found: set[int] = set()
        cursor = 0
        pattern = f"{self.keys.prefix}{{item:*}}:pending"
        while True:
            cursor, names = yield self.client.scan(cursor, match=pattern, count=_SCAN_COUNT)
            found.update(i for n in names if (i := self.keys.item_of_key(n)) is not None)
            if int(cursor) == 0:
                return sorted(found)

    def _pending_count_steps(self, item_ids: Iterable[int] | None = None) -> Steps[int]:
        """Orders not yet persisted, over ``item_ids`` (every item when ``None``)."""
        ids = list(item_ids) if item_ids is not None else (yield from self._pending_items_steps())
        if not ids:
            return 0
        pipe = self.client.pipeline(transaction=False)
        for item_id in ids:
            pipe.zcard(self.keys.pending(item_id))
        counts = yield pipe.execute()
        return sum(int(c) for c in counts)

    def _pending_older_than_steps(
        self, accepted_before_ms: int, limit: int = 1000, item_ids: Iterable[int] | None = None
    ) -> Steps[list[Order]]:
        """Live orders (``accepted`` or ``persisting``) accepted strictly before the epoch
        millisecond ``accepted_before_ms``, oldest first, at most ``limit`` (over
        ``item_ids``, or every item with a pending set)."""
        ids = list(item_ids) if item_ids is not None else (yield from self._pending_items_steps())
        if not ids:
            return []
        pipe = self.client.pipeline(transaction=False)
        for item_id in ids:
            pipe.zrangebyscore(
                self.keys.pending(item_id),
                "-inf",
                f"({accepted_before_ms}",
                start=0,
                num=limit,
                withscores=True,
            )
        per_item = yield pipe.execute()
        found = sorted(
            ((score, item_id, _text(order_id)))
            for item_id, pairs in zip(ids, per_item, strict=True)
            for order_id, score in pairs
        )[:limit]
        if not found:
            return []
        pipe = self.client.pipeline(transaction=False)
        for _, item_id, order_id in found:
            pipe.hgetall(self.keys.order(item_id, order_id))
        raws = yield pipe.execute()
        orders = (parse_order(raw) for raw in raws)
        return [o for o in orders if o is not None and o.get("status") in LIVE]

    def _snapshot_steps(self, item_ids: Iterable[int]) -> Steps[dict[int, ItemSnapshot]]:
        """Each item's counter and live orders, each item read atomically (one script)."""
        ids = list(item_ids)
        if not ids:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for item_id in ids:
            yield self._lua_snapshot(
                keys=[self.keys.stock(item_id), self.keys.pending(item_id)],
                args=[self.keys.item_tag(item_id)],
                client=pipe,
            )
        replies = yield pipe.execute()
        snapshots = {}
        for item_id, reply in zip(ids, replies, strict=True):
            stock = None if reply[0] is None else int(reply[0])
            live = {_text(reply[i]): int(reply[i + 1]) for i in range(1, len(reply), 2)}
            snapshots[item_id] = ItemSnapshot(stock, live)
        return snapshots

    # --- stock counters -----------------------------------------------------------------

    def _set_stock_steps(self, item_id: int, n: int) -> Steps[None]:
        """Set one live stock counter (overwrites; no version: every later shift applies)."""
        yield self.client.set(self.keys.stock(item_id), n)

    def _init_stocks_steps(self, stocks: Mapping[int, tuple[int, int]]) -> Steps[int]:
        """Create the missing counters of ``{item_id: (stock, version)}`` read from PostgreSQL
        (a running sale's counters are never overwritten); shifts of newer versions already
        recorded are included. Returns how many were created."""
        if not stocks:
            return 0
        pipe = self.client.pipeline(transaction=False)
        for item_id, (stock, version) in stocks.items():
            yield self._lua_init_stock(
                keys=self._counter_keys(item_id), args=[stock, version], client=pipe
            )
        replies = yield pipe.execute()
        return sum(int(r) for r in replies)

    def _shift_stock_steps(self, item_id: int, version: int, delta: int) -> Steps[Shift]:
        """Move the counter by an item update's ``delta``, exactly once per ``version``."""
        reply = yield self._lua_shift_stock(keys=self._counter_keys(item_id), args=[version, delta])
        return Shift(_text(reply[0]))

    def _adjust_stock_steps(self, item_id: int, delta: int) -> Steps[int | None]:
        """Add ``delta`` to an existing counter (a repair); the new value, ``None`` if none."""
        value = yield self._lua_adjust_stock(keys=[self.keys.stock(item_id)], args=[delta])
        return None if value is None else int(value)

    def _get_stocks_steps(self, item_ids: list[int]) -> Steps[list[int | None]]:
        """Live stock counters of ``item_ids`` (``None`` where missing)."""
        if not item_ids:
            return []
        # One GET per counter, pipelined: an MGET across items would span cluster slots.
        pipe = self.client.pipeline(transaction=False)
        for item_id in item_ids:
            pipe.get(self.keys.stock(item_id))
        values = yield pipe.execute()
        return [None if v is None else int(v) for v in values]

    def _reset_items_steps(self, stocks: Mapping[int, tuple[int, int]]) -> Steps[int]:
        """A fresh sale for the items ``{item_id: (stock, version)}`` (read from PostgreSQL):
        their finished orders, Idempotency-Key records and per-user counts are deleted and
        their counters overwritten with the database stock minus the units of their live
        orders. Live orders (accepted or persisting) keep every record. Other items are not
        touched. Returns the number of keys deleted."""
        if not stocks:
            return 0
        found: dict[int, list[str]] = defaultdict(list)
        # Declared: mypy cannot infer loop variables used in a comprehension inside ``yield``.
        item_id: int
        cursor = 0
        while True:
            cursor, names = yield self.client.scan(
                cursor, match=self.keys.item_state_pattern, count=_SCAN_COUNT
            )
            for name in names:
                owner = self.keys.item_of_key(name)
                if owner is not None and owner in stocks:
                    found[owner].append(_text(name))
            if int(cursor) == 0:
                break
        deleted = 0
        records: list[str]
        start: int
        for item_id, names in found.items():
            records = [n for n in names if n not in self._counter_keys(item_id)]
            for start in range(0, len(records), _KEYS_PER_CALL):
                deleted += yield self._lua_reset_records(
                    keys=[self.keys.pending(item_id), *records[start : start + _KEYS_PER_CALL]],
                    args=[self.keys.item_tag(item_id)],
                )
        pipe = self.client.pipeline(transaction=False)
        for item_id, (stock, version) in stocks.items():
            yield self._lua_reset_stock(
                keys=[*self._counter_keys(item_id), self.keys.pending(item_id)],
                args=[stock, version, self.keys.item_tag(item_id)],
                client=pipe,
            )
        yield pipe.execute()
        return int(deleted)

    def _counter_keys(self, item_id: int) -> list[str]:
        return [self.keys.stock(item_id), self.keys.stock_meta(item_id), self.keys.shifts(item_id)]


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
    def run(self: Any, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return _run_sync(op(self, *args, **kwargs))

    return run


def _async(
    op: Callable[Concatenate[Any, P], Steps[T]],
) -> Callable[Concatenate[Any, P], Awaitable[T]]:
    @functools.wraps(op)
    async def run(self: Any, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await _run_async(op(self, *args, **kwargs))

    return run


class OrderStore(_StoreCore[redis.Redis]):
    """Synchronous store over ``redis.Redis`` (worker, reconciler, CLI)."""

    reserve = _sync(_StoreCore._reserve_steps)
    cancel = _sync(_StoreCore._cancel_steps)
    fail = _sync(_StoreCore._fail_steps)
    claim = _sync(_StoreCore._claim_steps)
    mark_persisted = _sync(_StoreCore._mark_persisted_steps)
    get_order = _sync(_StoreCore._get_order_steps)
    pending_count = _sync(_StoreCore._pending_count_steps)
    pending_older_than = _sync(_StoreCore._pending_older_than_steps)
    snapshot = _sync(_StoreCore._snapshot_steps)
    set_stock = _sync(_StoreCore._set_stock_steps)
    init_stocks = _sync(_StoreCore._init_stocks_steps)
    shift_stock = _sync(_StoreCore._shift_stock_steps)
    adjust_stock = _sync(_StoreCore._adjust_stock_steps)
    get_stocks = _sync(_StoreCore._get_stocks_steps)
    reset_items = _sync(_StoreCore._reset_items_steps)


class AsyncOrderStore(_StoreCore[redis.asyncio.Redis]):
    """Asynchronous store over ``redis.asyncio.Redis`` (api); same methods, awaitable."""

    reserve = _async(_StoreCore._reserve_steps)
    cancel = _async(_StoreCore._cancel_steps)
    fail = _async(_StoreCore._fail_steps)
    claim = _async(_StoreCore._claim_steps)
    mark_persisted = _async(_StoreCore._mark_persisted_steps)
    get_order = _async(_StoreCore._get_order_steps)
    pending_count = _async(_StoreCore._pending_count_steps)
    pending_older_than = _async(_StoreCore._pending_older_than_steps)
    snapshot = _async(_StoreCore._snapshot_steps)
    set_stock = _async(_StoreCore._set_stock_steps)
    init_stocks = _async(_StoreCore._init_stocks_steps)
    shift_stock = _async(_StoreCore._shift_stock_steps)
    adjust_stock = _async(_StoreCore._adjust_stock_steps)
    get_stocks = _async(_StoreCore._get_stocks_steps)
    reset_items = _async(_StoreCore._reset_items_steps)
