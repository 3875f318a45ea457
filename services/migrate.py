"""Schema migrations: apply ``services/migrations/NNNN_*.sql`` in order, once each.

Run before the api and worker start (``python -m services.migrate``). Idempotent and
safe to run from several containers at once: a PostgreSQL advisory lock serialises
the runners and ``schema_migrations`` records what is applied.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import cast

import psycopg

from services.settings import get_settings

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
_ADVISORY_LOCK_ID = 0x6D696772  # "migr": any constant shared by every runner

log = logging.getLogger(__name__)


def pending_migrations(applied: set[int]) -> list[tuple[int, Path]]:
    """Migration files whose version is not in ``applied``, in version order."""
    found = sorted((int(p.name.split("_", 1)[0]), p) for p in MIGRATIONS_DIR.glob("[0-9]*_*.sql"))
    return [(version, path) for version, path in found if version not in applied]


def migrate(database_url: str) -> list[int]:
    """Apply every pending migration, each in its own transaction; return the versions applied."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_ADVISORY_LOCK_ID,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            applied = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            done = []
            for version, path in pending_migrations(applied):
                with conn.transaction():
                    conn.execute(path.read_text())
                    conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
                log.info("applied migration %s", path.name)
                done.append(version)
            return done
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_ADVISORY_LOCK_ID,))


def ensure_database(database_url: str) -> None:
    """Create the database named in ``database_url`` if it does not exist (native runs)."""
    info = psycopg.conninfo.conninfo_to_dict(database_url)
    name = info.get("dbname")
    if not name:
        return
    admin = psycopg.conninfo.make_conninfo(database_url, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(
                psycopg.sql.SQL("CREATE DATABASE {}").format(
                    psycopg.sql.Identifier(cast(str, name))
                )
            )
            log.info("created database %s", name)


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m services.migrate [--create-db]``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--create-db", action="store_true", help="create the database if missing")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    url = get_settings().database_url
    if args.create_db:
        ensure_database(url)
    applied = migrate(url)
    log.info("schema up to date (%d applied now)", len(applied))


if __name__ == "__main__":
    main()
