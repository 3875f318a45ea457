"""PostgreSQL access shared by the api, the catalog CLI and the benchmark.

Items are read as plain dicts ``{id, name, price_cents, stock, version}``: the shape the
cache stores and the api returns (with ``stock`` replaced by the live Redis counter).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

ITEM_COLUMNS = ("id", "name", "price_cents", "stock", "version")
_SELECT_ITEMS = f"SELECT {', '.join(ITEM_COLUMNS)} FROM items WHERE id = ANY(%s)"
_SELECT_ITEM_PAGE = (
    f"SELECT {', '.join(ITEM_COLUMNS)} FROM items WHERE id > %s ORDER BY id LIMIT %s"
)

Item = dict[str, Any]


def open_pool(database_url: str, *, min_size: int = 1, max_size: int = 8) -> AsyncConnectionPool:
    """An async pool, not yet opened (``await pool.open(wait=False)`` in the lifespan).

    Opening without waiting lets the api start while PostgreSQL is down (``/readyz`` tells);
    a short ``timeout`` turns a dead database into a quick 503 instead of a hung request.
    ``check``: a connection is tested before it is handed out, so the connections that
    died with a restarted PostgreSQL are replaced instead of failing the next requests
    (``AdminShutdown``).
    """
    return AsyncConnectionPool(
        database_url,
        min_size=min_size,
        max_size=max_size,
        open=False,
        timeout=2.0,
        check=AsyncConnectionPool.check_connection,
        kwargs={"autocommit": True},
    )


def _row_to_item(row: tuple[Any, ...]) -> Item:
    return dict(zip(ITEM_COLUMNS, row, strict=True))


async def fetch_items(conn: AsyncConnection[Any], item_ids: Iterable[int]) -> dict[int, Item]:
    """The items among ``item_ids`` that exist, by id (one query)."""
    cur = await conn.execute(_SELECT_ITEMS, (list(item_ids),))
    return {row[0]: _row_to_item(row) for row in await cur.fetchall()}


async def fetch_item_page(conn: AsyncConnection[Any], after_id: int, limit: int) -> list[Item]:
    """Up to ``limit`` items with ``id > after_id`` in id order (keyset pagination)."""
    cur = await conn.execute(_SELECT_ITEM_PAGE, (after_id, limit))
    return [_row_to_item(row) for row in await cur.fetchall()]


async def load_items(pool: AsyncConnectionPool, item_ids: Iterable[int]) -> dict[int, Item]:
    """:func:`fetch_items` on a pooled connection."""
    async with pool.connection() as conn:
        return await fetch_items(conn, item_ids)


async def ping(pool: AsyncConnectionPool) -> None:
    """Raise unless the database answers ``SELECT 1``."""
    async with pool.connection() as conn:
        await conn.execute("SELECT 1")
