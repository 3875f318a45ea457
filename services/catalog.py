"""The demo catalog: seed PostgreSQL, warm Redis before a sale.

Command line::

    python -m services.catalog seed --items N --stock S [--reset]
    python -m services.catalog warmup [--ids 1,2,3] [--reset]

``seed`` inserts items ``1..N`` with deterministic names and prices; it is idempotent
(existing items are kept) unless ``--reset``, which deletes every persisted order and puts
every seeded item back to ``S`` units. ``warmup`` writes the items into the cache and
creates the missing live stock counters (a running sale's counters are never
overwritten; a counter records the item version it was read at, so an update racing the
warm-up is applied to it exactly once). ``--reset`` is a fresh sale for the named items
(all without ``--ids``), and only for them: their finished orders, Idempotency-Key
records and per-user counts are cleared and their counters overwritten from the
database, minus the units of orders still accepted or being persisted, which keep every
record (their status and Idempotency-Key are what stop a retry from becoming a second
order). The load test runs ``seed --reset`` then ``warmup --reset``. ``POST
/admin/warmup`` runs the same :func:`warmup`.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from typing import Any

import psycopg
import redis.asyncio
from psycopg_pool import AsyncConnectionPool

from services import db
from services.cache import ItemCache
from services.keys import Keys
from services.settings import Settings, get_settings
from services.store import AsyncOrderStore

log = logging.getLogger(__name__)

_ADJECTIVES = ("Midnight", "Crimson", "Silent", "Golden", "Arctic", "Neon", "Velvet", "Rapid")
_NOUNS = ("Sneakers", "Headphones", "Backpack", "Watch", "Jacket", "Speaker", "Lamp", "Kettle")
_CHUNK = 1000

_INSERT = (
    "INSERT INTO items (id, name, price_cents, stock, initial_stock)"
    " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (id) DO "
)
_KEEP = "NOTHING"
_RESET = (
    "UPDATE SET name = EXCLUDED.name, price_cents = EXCLUDED.price_cents,"
    " stock = EXCLUDED.stock, initial_stock = EXCLUDED.initial_stock,"
    " version = items.version + 1, updated_at = now()"
)


def demo_item(item_id: int, stock: int) -> tuple[int, str, int, int, int]:
    """Row ``(id, name, price_cents, stock, initial_stock)`` of a demo item: same id, same item."""
    name = f"{_ADJECTIVES[item_id % 8]} {_NOUNS[(item_id // 8) % 8]} #{item_id}"
    price_cents = 199 + (item_id * 7919) % 49_800
    return item_id, name, price_cents, stock, stock


def seed(database_url: str, items: int, stock: int, *, reset: bool = False) -> int:
    """Insert demo items ``1..items`` (one transaction); return how many rows changed.

    With ``reset`` every persisted order is deleted and the items are rewritten with
    ``stock`` units, so the database matches a fresh sale.
    """
    if items < 0 or stock < 0:
        raise ValueError(f"items and stock must be >= 0, got items={items} stock={stock}")
    rows = [demo_item(i, stock) for i in range(1, items + 1)]
    with psycopg.connect(database_url) as conn, conn.cursor() as cur:
        if reset:
            cur.execute("DELETE FROM orders")
        cur.executemany(_INSERT + (_RESET if reset else _KEEP), rows)
        return max(cur.rowcount, 0)


@dataclass(frozen=True)
class WarmupCounts:
    """What :func:`warmup` did."""

    items_cached: int
    missing: int
    stock_counters_set: int
    sale_keys_cleared: int


async def _item_chunks(
    pool: AsyncConnectionPool, ids: list[int] | None
) -> AsyncIterator[tuple[list[int], dict[int, db.Item]]]:
    """The wanted ids and the items found among them, a chunk at a time."""
    if ids is not None:
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            yield chunk, await db.load_items(pool, chunk)
        return
    after = 0
    while True:
        async with pool.connection() as conn:
            page = await db.fetch_item_page(conn, after, _CHUNK)
        if not page:
            return
        after = page[-1]["id"]
        yield [i["id"] for i in page], {i["id"]: i for i in page}


async def warmup(
    pool: AsyncConnectionPool,
    cache: ItemCache,
    store: AsyncOrderStore,
    ids: list[int] | None = None,
    *,
    reset: bool = False,
) -> WarmupCounts:
    """Preload items (all, or ``ids``) into the cache and their stock counters into Redis.

    Unknown ids among ``ids`` are cached as negative entries. Without ``reset`` existing
    stock counters are kept; with it the named items' sale records are cleared and their
    counters overwritten (see the module docstring: live orders are kept).
    """
    cached = missing = counters = cleared = 0
    async for wanted, found in _item_chunks(pool, ids):
        await cache.put({i: found.get(i) for i in wanted})
        stocks = {i: (item["stock"], item["version"]) for i, item in found.items()}
        if reset:
            cleared += await store.reset_items(stocks)
            counters += len(stocks)
        else:
            counters += await store.init_stocks(stocks)
        cached += len(found)
        missing += len(wanted) - len(found)
    # Every process's near cache may hold what was there before.
    await cache.invalidate(None)
    return WarmupCounts(cached, missing, counters, cleared)


async def warmup_from_settings(
    settings: Settings, ids: list[int] | None = None, *, reset: bool = False
) -> WarmupCounts:
    """:func:`warmup` with clients built from ``settings`` (the command line's way)."""
    keys = Keys(settings.redis_prefix)
    state = redis.asyncio.Redis.from_url(settings.redis_url)
    cache_client = redis.asyncio.Redis.from_url(settings.cache_redis_url)
    pool = db.open_pool(settings.database_url, max_size=2)
    await pool.open(wait=True, timeout=10)
    try:
        cache = ItemCache(cache_client, keys, functools.partial(db.load_items, pool), settings)
        store = AsyncOrderStore(
            state, settings.redis_prefix, per_user_limit=settings.per_user_limit
        )
        return await warmup(pool, cache, store, ids, reset=reset)
    finally:
        await pool.close()
        await state.aclose()
        await cache_client.aclose()


def _ids(text: str) -> list[int]:
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--ids wants comma-separated integers: {exc}") from exc
    if not ids or min(ids) < 1:
        raise argparse.ArgumentTypeError("--ids wants at least one positive integer")
    return ids


def main(argv: list[str] | None = None) -> None:
    """Command line (see the module docstring)."""
    settings = get_settings()
    parser = argparse.ArgumentParser(
        prog="python -m services.catalog",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    seed_cmd = commands.add_parser("seed", help="insert the demo catalog into PostgreSQL")
    seed_cmd.add_argument("--items", type=int, default=settings.demo_items)
    seed_cmd.add_argument("--stock", type=int, default=settings.demo_stock)
    seed_cmd.add_argument("--reset", action="store_true", help="delete orders, restore stock")
    warm_cmd = commands.add_parser("warmup", help="load items and stock counters into Redis")
    warm_cmd.add_argument("--ids", type=_ids, default=None, help="only these ids (1,2,3)")
    warm_cmd.add_argument(
        "--reset", action="store_true", help="fresh sale for these items (live orders kept)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    result: Any
    if args.command == "seed":
        result = {
            "rows_written": seed(settings.database_url, args.items, args.stock, reset=args.reset)
        }
    else:
        result = asdict(asyncio.run(warmup_from_settings(settings, args.ids, reset=args.reset)))
    log.info("%s: %s", args.command, result)


if __name__ == "__main__":
    main()
