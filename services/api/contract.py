"""The OpenAPI schema says what the api enforces, including what FastAPI cannot see.

FastAPI writes the schema from the routes and models; three things it cannot know are
added to it here, once, when ``app.openapi()`` first builds it:

- error bodies: every 422 is the project's :class:`~services.api.schemas.ErrorBody`
  (errors.py's handler makes it), not FastAPI's ``HTTPValidationError``; every operation
  with a body may also answer 400 (malformed JSON) and 413 (``BodyLimitMiddleware``);
- the quantity maximum, a setting (``MAX_QUANTITY``) rather than a constant of the model;
- OpenAPI links from ``POST /orders`` to ``GET /orders/{order_id}``, which clients and
  stateful testers (schemathesis) follow with the answered ``order_id``.

``tests/services/api/test_contract.py`` runs ``schemathesis run --checks all`` against the
live app, so whatever the schema and the api disagree on fails the tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI

from services.settings import Settings

ERROR_BODY_REF = "#/components/schemas/ErrorBody"
_FASTAPI_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")
_BODY_ERRORS = {
    "400": "malformed JSON (malformed_json)",
    "413": "body larger than MAX_BODY_BYTES (payload_too_large)",
    "422": "invalid body (validation_error, or a code of the route's own)",
}
_PARAMETER_ERROR = "invalid parameter (validation_error, or a code of the route's own)"


def install_contract(app: FastAPI, settings: Settings) -> None:
    """Make ``app.openapi()`` return FastAPI's schema with this module's additions."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()  # FastAPI keeps it in app.openapi_schema
            declare_error_bodies(schema)
            limit_quantity(schema, settings.max_quantity)
            link_orders(schema)
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]


def _error_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": ERROR_BODY_REF}}},
    }


def _operations(schema: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for path_item in schema.get("paths", {}).values():
        yield from path_item.values()


def declare_error_bodies(schema: dict[str, Any]) -> None:
    """ErrorBody for every 422 instead of HTTPValidationError; 400 and 413 where a body goes."""
    for operation in _operations(schema):
        responses = operation.setdefault("responses", {})
        validation = responses.get("422", {}).get("content", {}).get("application/json", {})
        if validation.get("schema", {}).get("$ref", "").endswith("/HTTPValidationError"):
            responses["422"] = _error_response(_PARAMETER_ERROR)
        if "requestBody" in operation:
            for status, description in _BODY_ERRORS.items():
                responses.setdefault(status, _error_response(description))
    components = schema.get("components", {}).get("schemas", {})
    for name in _FASTAPI_VALIDATION_SCHEMAS:
        components.pop(name, None)


def limit_quantity(schema: dict[str, Any], max_quantity: int) -> None:
    """``OrderRequest.quantity`` is at most ``max_quantity`` (the route answers 422 above)."""
    quantity = schema["components"]["schemas"]["OrderRequest"]["properties"]["quantity"]
    quantity["maximum"] = max_quantity
    quantity["description"] = f"units; at most {max_quantity} (MAX_QUANTITY)"


def link_orders(schema: dict[str, Any]) -> None:
    """The order answers of ``POST /orders`` link to ``GET /orders/{order_id}``."""
    get_order = schema["paths"]["/orders/{order_id}"]["get"]["operationId"]
    link = {
        "GetOrder": {
            "operationId": get_order,
            "parameters": {"order_id": "$response.body#/order_id"},
            "description": "the order's status: accepted, then persisted (or failed)",
        }
    }
    responses = schema["paths"]["/orders"]["post"]["responses"]
    for status in ("200", "202"):
        responses[status]["links"] = link
