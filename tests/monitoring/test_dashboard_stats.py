"""``/dashboard`` and ``/dashboard/stats`` on the real api (real Redis, PostgreSQL, RabbitMQ)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import redis
from fastapi import testclient

from services.keys import Keys
from services.monitoring.scrape import History, Scrape, Window, histogram_quantile
from tests.support import REDIS_HOST_URL, free_port


@pytest.fixture
def client(service_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """The real api app, its worker and reconciler metrics pointed at a closed port."""
    from services.api.main import create_app

    nobody = f"http://127.0.0.1:{free_port()}/metrics"
    monkeypatch.setenv("WORKER_METRICS_URL", nobody)
    monkeypatch.setenv("RECONCILER_METRICS_URL", nobody)
    with testclient.TestClient(create_app()) as c:
        yield c


def test_stats_tolerate_worker_and_reconciler_down_and_read_redis(
    client: object, service_env: dict[str, str]
) -> None:
    """Down services are reported, not fatal; stock and pending come from Redis."""
    keys = Keys(service_env["REDIS_PREFIX"])
    with redis.Redis.from_url(f"{REDIS_HOST_URL}/2") as r:
        r.mset({keys.stock(1): 7, keys.stock(2): 5})
        r.zadd(keys.pending(1), {"o1": 1, "o2": 2})
        r.zadd(keys.pending(2), {"o3": 3})
    response = client.get("/dashboard/stats")  # type: ignore[attr-defined]
    assert response.status_code == 200
    doc = response.json()
    assert doc["up"] == {"api": True, "worker": False, "reconciler": False, "redis": True}
    assert doc["stock"]["remaining"] == 12
    assert doc["queue"]["pending"] == 3
    assert doc["gmp"]["runqueue_per_p"] == []
    for _ in range(3):
        assert client.get("/items/424242").status_code == 404  # type: ignore[attr-defined]
    second = client.get("/dashboard/stats").json()  # type: ignore[attr-defined]
    assert second["window_s"] > 0
    routes = second["api"]["by_route_per_s"]
    assert routes["/items/{item_id}"] > 0
    assert not any(r.startswith("/dashboard") for r in routes), "own polling counted as traffic"


def test_page_and_assets_are_served_and_traversal_is_refused(client: object) -> None:
    """The page, its script and the vendored uPlot are local; ``..`` cannot escape."""
    page = client.get("/dashboard")  # type: ignore[attr-defined]
    assert page.status_code == 200
    assert "/dashboard/static/vendor/uPlot.iife.min.js" in page.text
    assert "http" not in page.text.split("<body>")[0].replace('name="viewport"', "")
    for asset in ("dashboard.js", "dashboard.css", "vendor/uPlot.iife.min.js"):
        assert client.get(f"/dashboard/static/{asset}").status_code == 200  # type: ignore[attr-defined]
    escape = client.get("/dashboard/static/..%2F..%2Fsettings.py")  # type: ignore[attr-defined]
    assert escape.status_code == 404
    assert escape.json()["error"] == "not_found"


def _histogram(buckets: dict[float, float]) -> str:
    lines = ["# TYPE h histogram"]
    lines += [
        f'h_bucket{{le="{"+Inf" if math.isinf(le) else le}"}} {c}' for le, c in buckets.items()
    ]
    total = buckets[math.inf]
    lines += [f"h_count {total}", f"h_sum {total}"]
    return "\n".join(lines) + "\n"


def test_quantile_interpolates_like_prometheus() -> None:
    """histogram_quantile: linear within the bucket, highest finite bound for +Inf."""
    buckets = {0.1: 50.0, 0.5: 90.0, 1.0: 100.0, math.inf: 100.0}
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    assert histogram_quantile(0.7, buckets) == pytest.approx(0.1 + 0.4 * 20 / 40)
    assert histogram_quantile(0.99, {1.0: 10.0, math.inf: 20.0}) == 1.0
    assert histogram_quantile(0.5, {1.0: 0.0, math.inf: 0.0}) is None


def test_window_rates_and_quantiles_from_two_scrapes() -> None:
    """Differences of two real expositions give per-second rates and windowed percentiles."""
    before, after = Scrape(at=10.0), Scrape(at=15.0)
    before.add_text("# TYPE c counter\nc_total 100\n" + _histogram({0.1: 0.0, math.inf: 0.0}))
    after.add_text("# TYPE c counter\nc_total 150\n" + _histogram({0.1: 10.0, math.inf: 10.0}))
    history = History(window_s=5.0)
    assert history.push(before) is None
    window = Window(after, history.push(after))
    assert window.rate("c_total") == pytest.approx(10.0)
    assert window.quantile(0.5, "h") == pytest.approx(0.05)
    restarted = Scrape(at=20.0)
    restarted.add_text("# TYPE c counter\nc_total 20\n")
    assert Window(restarted, after).rate("c_total") == pytest.approx(4.0)
