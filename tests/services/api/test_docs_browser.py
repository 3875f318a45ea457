"""``/docs`` renders in a real browser with the network to the outside blocked: Swagger UI
is served by the api itself, not by a CDN."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from services.api.main import create_app
from services.settings import Settings
from tests.support import launch_chromium, require_module, serve_asgi

RENDER_TIMEOUT_MS = 30_000


@pytest.mark.browser
def test_docs_render_every_operation_offline(settings: Settings) -> None:
    sync_api = require_module("playwright.sync_api")
    app = create_app(settings)
    with serve_asgi(app) as base_url, sync_api.sync_playwright() as playwright:
        local = urlsplit(base_url).netloc
        browser = launch_chromium(playwright)
        page = browser.new_page()
        outside: list[str] = []
        errors: list[str] = []

        def only_local(route: object, request: object) -> None:
            if urlsplit(request.url).netloc == local:  # type: ignore[attr-defined]
                route.continue_()  # type: ignore[attr-defined]
            else:
                outside.append(request.url)  # type: ignore[attr-defined]
                route.abort()  # type: ignore[attr-defined]

        page.route("**/*", only_local)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{base_url}/docs")
        page.wait_for_selector(".opblock", timeout=RENDER_TIMEOUT_MS)
        shown = {
            (method.strip().upper(), path.strip().replace("\u200b", ""))
            for method, path in page.eval_on_selector_all(
                ".opblock-summary",
                "bs => bs.map(b => [b.querySelector('.opblock-summary-method').textContent,"
                " b.querySelector('.opblock-summary-path').textContent])",
            )
        }
        browser.close()
    documented = {
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        for method in operations
    }
    assert shown == documented
    assert not outside, f"the page asked the outside for {outside}"
    assert not errors, f"script errors: {errors}"
