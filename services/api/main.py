"""The flash-sale api: ``uvicorn services.api.main:app`` (or the ``create_app()`` factory).

The lifespan checks the cgroup's swap policy, opens Redis (state and cache clients,
hiredis), the PostgreSQL pool and the confirmed publisher, and starts the near cache's
invalidation listener; it closes them on shutdown.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from services.api.admission import AdmissionMiddleware, admission_gates
from services.api.contract import install_contract
from services.api.dependencies import ApiContext
from services.api.docs import install_docs
from services.api.errors import install_error_handlers
from services.api.middleware import BodyLimitMiddleware, MetricsMiddleware
from services.api.responses import OrjsonResponse
from services.api.routers import admin, dashboard, health, items, orders
from services.settings import Settings, get_settings
from services.swap import enforce_no_swap

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    """A new api application; ``settings`` defaults to :func:`get_settings`."""
    resolved = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        enforce_no_swap(resolved)
        context = ApiContext.create(resolved)
        await context.open()
        app.state.context = context
        try:
            yield
        finally:
            await context.close()

    app = FastAPI(
        title="flash-sale api",
        summary="Reads from a Redis cache, orders reserved in Redis and queued to RabbitMQ.",
        version="0.1.0",
        default_response_class=OrjsonResponse,
        lifespan=lifespan,
        # Both load their scripts from a CDN: /docs is served locally instead, ReDoc not at all.
        docs_url=None,
        redoc_url=None,
    )
    install_docs(app)
    install_contract(app, resolved)
    install_error_handlers(app)
    for router in (items.router, orders.router, admin.router, health.router):
        app.include_router(router)
    app.include_router(dashboard.router)
    app.add_middleware(BodyLimitMiddleware, max_bytes=resolved.max_body_bytes)
    # Outside the body limit: an overloaded process does not even read the body.
    app.add_middleware(
        AdmissionMiddleware,
        gates=admission_gates(resolved),
        retry_after_seconds=resolved.retry_after_seconds,
    )
    # Added last, so outermost: it also counts the 413s of the body limit.
    app.add_middleware(MetricsMiddleware)
    return app


app = create_app()
