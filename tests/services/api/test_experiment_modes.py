"""The experiment-only modes: refused unless the experiments runner allows them, off by
default, and doing what the experiments measure (reads from PostgreSQL; the order written
inside the request, with no broker at all)."""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg
import pytest
from apitest_support import CATALOG_STOCK, Api
from pydantic import ValidationError

from services.settings import EXPERIMENT_MODES, EXPERIMENTS_ALLOWED, Settings
from tests.support import wait_until

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("mode", EXPERIMENT_MODES)
def test_a_mode_is_refused_without_the_runners_permission(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(EXPERIMENTS_ALLOWED, raising=False)
    monkeypatch.setenv(mode.upper(), "1")
    with pytest.raises(ValidationError, match=EXPERIMENTS_ALLOWED):
        Settings()
    monkeypatch.setenv(EXPERIMENTS_ALLOWED, "yes")  # only exactly 1 allows
    with pytest.raises(ValidationError, match=mode.upper()):
        Settings()
    monkeypatch.setenv(EXPERIMENTS_ALLOWED, "1")
    assert getattr(Settings(), mode) is True


def test_every_mode_is_off_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for mode in EXPERIMENT_MODES:
        monkeypatch.delenv(mode.upper(), raising=False)
    settings = Settings()
    assert not any(getattr(settings, mode) for mode in EXPERIMENT_MODES)
    assert all(
        (Settings.model_fields[mode].description or "").startswith("EXPERIMENT ONLY")
        for mode in EXPERIMENT_MODES
    )


@pytest.fixture
def mode() -> dict[str, bool]:
    """Experiment-only settings to switch on (a test parametrizes it)."""
    return {}


@pytest.fixture
def settings(settings: Settings, mode: dict[str, bool]) -> Settings:
    """The api tests' settings with ``mode`` on (set in code: the environment guard does not
    apply, it is tested above)."""
    return settings.model_copy(update=mode)


def _item_scans(database_url: str) -> int:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT coalesce(seq_scan, 0) + coalesce(idx_scan, 0)"
            " FROM pg_stat_user_tables WHERE relname = 'items'"
        ).fetchone()
    assert row is not None
    return int(row[0])


def _backends_older_than(database_url: str, moment: datetime) -> int:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND backend_start < %s",
            (moment,),
        ).fetchone()
    assert row is not None
    return int(row[0])


async def _published_item_scans(api: Api, database_url: str) -> int:
    """Item scans once the api's database backends exited, which publishes their statistics
    (an idle backend may otherwise hold them back for seconds)."""
    await api.ctx.db_pool.wait()  # no connection still being opened escapes the drain
    moment = datetime.now(UTC)
    await api.ctx.db_pool.drain()
    wait_until(
        lambda: _backends_older_than(database_url, moment) == 0,
        timeout=10,
        what="the api's drained database backends to exit",
    )
    return _item_scans(database_url)


@pytest.mark.parametrize("mode", [{"experiment_cache_bypass": True}])
async def test_cache_bypass_reads_postgresql_every_time(api: Api, settings: Settings) -> None:
    before = await _published_item_scans(api, settings.database_url)
    for _ in range(3):
        response = await api.client.get("/items/4")
        assert response.status_code == 200 and response.json()["id"] == 4
    assert (await api.client.get("/items/999999")).status_code == 404
    after = await _published_item_scans(api, settings.database_url)
    assert after - before == 4  # one query per read, hit or miss, nothing cached


@pytest.mark.parametrize("mode", [{"experiment_sync_write": True}])
async def test_sync_write_commits_the_order_before_answering(api: Api, settings: Settings) -> None:
    # The broker URL points at a closed port: the order cannot have gone through a queue.
    response = await api.client.post(
        "/orders", json={"item_id": 5, "quantity": 2, "user_id": "bob"}
    )
    assert response.status_code == 202, response.text
    order_id = response.json()["order_id"]
    with psycopg.connect(settings.database_url) as conn:
        row = conn.execute(
            "SELECT o.quantity, i.stock FROM orders o JOIN items i ON i.id = o.item_id"
            " WHERE o.order_id = %s",
            (order_id,),
        ).fetchone()
    assert row == (2, CATALOG_STOCK - 2)
    status = (await api.client.get(f"/orders/{order_id}")).json()
    assert status["status"] == "persisted"
