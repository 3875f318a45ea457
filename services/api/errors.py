"""One error shape for every failure: ``{"error": code, "detail": ...}``.

Handlers turn FastAPI's and Starlette's exceptions (validation, malformed JSON, unknown
routes, wrong methods) into that shape, and :class:`ApiError` lets a route raise it
directly. Bad input always gets a 4xx; a 500 means a bug and says nothing more.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import iter_route_contexts
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from services.api.responses import OrjsonResponse
from services.breaker import DependencyDown

log = logging.getLogger(__name__)

_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    503: "unavailable",
}


class ApiError(Exception):
    """An error response: HTTP ``status``, machine-readable ``code``, human ``detail``."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = dict(headers or {})


def error_response(
    status: int, code: str, detail: Any = None, headers: Mapping[str, str] | None = None
) -> OrjsonResponse:
    """The JSON error response itself (also used by middleware, outside the routes)."""
    return OrjsonResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


def unavailable(code: str, detail: str, retry_after_seconds: int) -> ApiError:
    """A 503 telling the client when to retry."""
    return ApiError(503, code, detail, {"Retry-After": str(retry_after_seconds)})


def _validation_details(exc: RequestValidationError) -> list[dict[str, Any]]:
    # Only the JSON-safe parts: ``input`` and ``ctx`` may hold arbitrary objects.
    return [
        {"loc": list(err.get("loc", ())), "msg": err.get("msg", ""), "type": err.get("type", "")}
        for err in exc.errors()
    ]


async def _on_api_error(_: Request, exc: Exception) -> OrjsonResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.detail, exc.headers)


def allowed_methods(request: Request) -> str:
    """The ``Allow`` header of a 405: the methods of every route at the request's path.

    Starlette names only the first route that matched the path, so ``GET /items/{id}``
    would hide ``PUT /items/{id}``. FastAPI keeps included routers as branches:
    ``iter_route_contexts`` walks down to their routes.
    """
    methods: set[str] = set()
    for route in iter_route_contexts(request.app.routes):
        if route.methods and route.matches(request.scope)[0] is not Match.NONE:
            methods |= route.methods
    return ", ".join(sorted(methods))


async def _on_http_exception(request: Request, exc: Exception) -> OrjsonResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _CODES.get(exc.status_code, "error")
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = allowed_methods(request)
    return error_response(exc.status_code, code, exc.detail, headers)


async def _on_validation_error(_: Request, exc: Exception) -> OrjsonResponse:
    assert isinstance(exc, RequestValidationError)
    details = _validation_details(exc)
    if any(d["type"] == "json_invalid" for d in details):
        return error_response(400, "malformed_json", details)
    return error_response(422, "validation_error", details)


async def _on_dependency_down(_: Request, exc: Exception) -> OrjsonResponse:
    # A dependency failing where no route had a better answer (e.g. the database pool
    # timing out under a stampede): the client may retry, it is not a bug.
    dependency = "database" if isinstance(exc, psycopg.Error) else "redis"
    log.warning("%s unavailable: %s", dependency, exc)
    return error_response(
        503, f"{dependency}_unavailable", f"{type(exc).__name__}", {"Retry-After": "1"}
    )


async def _on_circuit_open(_: Request, exc: Exception) -> OrjsonResponse:
    # Answered without touching the dependency: it is known to be down (services.breaker).
    assert isinstance(exc, DependencyDown)
    return error_response(503, f"{exc.dependency}_unavailable", str(exc), {"Retry-After": "1"})


async def _on_unexpected(request: Request, exc: Exception) -> OrjsonResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "unexpected error; it has been logged")


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception kind to the one error shape."""
    app.add_exception_handler(ApiError, _on_api_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(psycopg.OperationalError, _on_dependency_down)
    app.add_exception_handler(RedisError, _on_dependency_down)
    app.add_exception_handler(DependencyDown, _on_circuit_open)
    app.add_exception_handler(Exception, _on_unexpected)
