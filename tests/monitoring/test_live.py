"""The dashboards against the real native stack under load.

- A real Prometheus (Debian's, started here) scrapes the api, worker and reconciler; every
  panel query of the project's Grafana dashboards then returns a non-empty result, and
  every metric name they use is in a real /metrics scrape of those processes.
- The built-in dashboard in headless Chromium: no console errors, every panel shows data,
  and a screenshot is saved (path printed).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from livestack import (
    LiveStack,
    query,
    run_prometheus,
    start_live_stack,
    wait_targets_up,
)
from promql_helpers import load_dashboards, metric_names, panel_queries

from services.monitoring.scrape import Scrape
from tests.support import launch_chromium, require_module

pytestmark = pytest.mark.timeout(420)

QUERY_DEADLINE_S = 60.0
QUERY_POLL_S = 1.0
PANEL_DEADLINE_S = 60.0
EXPORTER_DASHBOARDS = {"datastores.json"}
ARTIFACTS = Path(
    os.environ.get("TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "artifacts")
)


@pytest.fixture(scope="module")
def live_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    """The native stack, started once for this module."""
    yield from start_live_stack(tmp_path_factory)


def _scrape_services(stack: LiveStack) -> Scrape:
    """A real /metrics scrape of the api, worker and reconciler processes."""
    scrape = Scrape()
    for job, target in stack.targets.items():
        scrape.add_text(httpx.get(f"http://{target}/metrics", timeout=5).text, job=job)
    return scrape


def test_every_panel_query_returns_data_from_a_real_prometheus(
    live_stack: LiveStack, tmp_path: Path
) -> None:
    """After a short load, each project panel's PromQL returns a non-empty result."""
    queries = [
        q for q in panel_queries(load_dashboards()) if q.dashboard not in EXPORTER_DASHBOARDS
    ]
    jobs = {job: [target] for job, target in live_stack.targets.items()}
    pending = {str(q): q for q in queries}
    errors: dict[str, str] = {}
    with run_prometheus(jobs, tmp_path) as prometheus:
        wait_targets_up(prometheus, set(jobs))
        # Under load until every panel has data (or the deadline), not for a fixed time.
        with live_stack.loaded(QUERY_DEADLINE_S) as statuses:
            deadline = time.monotonic() + QUERY_DEADLINE_S
            while pending and time.monotonic() < deadline:
                for key, q in list(pending.items()):
                    body = query(prometheus, q.resolved)
                    if body["status"] != "success":
                        errors[key] = body.get("error", "?")
                        del pending[key]
                    elif body["data"]["result"]:
                        del pending[key]
                if pending:
                    time.sleep(QUERY_POLL_S)
    assert statuses.get(202, 0) > 0, f"no order accepted under load: {statuses}"
    exported = _scrape_services(live_stack).exported_names()
    unknown = sorted(
        f"{name} ({q})"
        for q in queries
        for name in metric_names(q.resolved)
        if name not in exported
    )
    problems = {
        "metrics used by panels but not exported": unknown,
        "queries Prometheus rejected": [f"{k}: {v}" for k, v in errors.items()],
        "panels with an empty result after load": list(pending),
    }
    report = "\n".join(
        f"{title}:\n  " + "\n  ".join(lines) for title, lines in problems.items() if lines
    )
    assert not report, report


@pytest.mark.browser
def test_builtin_dashboard_shows_every_panel_in_chromium(live_stack: LiveStack) -> None:
    """The page loads without console errors and every panel has data after a short load."""
    sync_api = require_module("playwright.sync_api")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    screenshot = ARTIFACTS / "dashboard.png"
    with sync_api.sync_playwright() as playwright, live_stack.loaded(PANEL_DEADLINE_S):
        browser = launch_chromium(playwright)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        console_errors: list[str] = []
        page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda exc: console_errors.append(str(exc)))
        page.goto(f"{live_stack.api_url}/dashboard")
        panels = page.locator("[data-panel]")
        assert panels.count() >= 30
        # On timeout the assertion below names the panels that stayed empty.
        with contextlib.suppress(sync_api.TimeoutError):
            page.wait_for_function(
                "() => [...document.querySelectorAll('[data-panel]')]"
                ".every(p => p.dataset.hasData === 'true')",
                timeout=PANEL_DEADLINE_S * 1000,
            )
        page.screenshot(path=str(screenshot), full_page=True)
        print(f"\ndashboard screenshot: {screenshot}")
        empty = page.eval_on_selector_all(
            "[data-panel]",
            "ps => ps.filter(p => p.dataset.hasData !== 'true').map(p => p.dataset.panel)",
        )
        browser.close()
    assert not empty, f"panels without data: {empty}"
    assert not console_errors, f"console errors: {console_errors}"
    assert screenshot.stat().st_size > 50_000
