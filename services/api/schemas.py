"""Request and response bodies (pydantic). Validation failures become 4xx in errors.py."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError


def _json_number(value: object) -> object:
    # bool is an int in Python, and lax mode would read "7" as 7: neither is a JSON number.
    if isinstance(value, str | bool):
        raise PydanticCustomError("int_type", "Input should be a valid integer")
    return value


JSON_NUMBER = BeforeValidator(_json_number)
"""Makes an integer field a JSON integer: ``Annotated[int, Field(..., strict=False),
JSON_NUMBER]`` takes ``7`` and ``7.0`` (JSON Schema's ``integer`` allows both, and strict
mode alone would refuse the second), never ``"7"`` or ``true``. After the ``Field``, so
that its bounds stay in the JSON schema."""

MAX_ITEM_ID = 10**15 - 1
"""Item ids have 15 digits at most, wherever they appear (path, query, body). PostgreSQL's
bigint would hold more, but beyond 2**53 a JSON number loses precision in JavaScript
clients and in JSON Schema validators, which compare bounds as floats."""
MAX_ITEM_ID_DIGITS = len(str(MAX_ITEM_ID))

ItemId = Annotated[
    int, Field(ge=1, le=MAX_ITEM_ID, strict=False, description="item id"), JSON_NUMBER
]
MAX_BATCH_IDS = 100
"""Most ids one ``GET /items?ids=`` may ask for."""
_ID_DIGITS = rf"[1-9][0-9]{{0,{MAX_ITEM_ID_DIGITS - 1}}}"
IDS_PATTERN = rf"^{_ID_DIGITS}(,{_ID_DIGITS}){{0,{MAX_BATCH_IDS - 1}}}$"
"""``GET /items?ids=``: 1 to MAX_BATCH_IDS item ids, comma-separated, no spaces."""
MAX_WARMUP_IDS = 100
"""Most ids one ``POST /admin/warmup`` names (more would not fit MAX_BODY_BYTES anyway)."""

USER_ID_PATTERN = r"^[A-Za-z0-9_.@-]{1,64}$"
"""User ids are part of Redis key names, so no ``:`` and no spaces."""
IDEMPOTENCY_KEY_PATTERN = r"^[A-Za-z0-9_.:-]{8,128}$"


class _Strict(BaseModel):
    """A request body: unknown fields are refused, and so are values of another JSON type
    (``"7"`` is not the integer 7, ``0`` is not false): a 422 as for any wrong type.
    Integer fields are JSON integers (:data:`JSON_NUMBER`)."""

    model_config = ConfigDict(extra="forbid", strict=True)


def _left_out_not_null(schema: dict[str, Any]) -> None:
    """The JSON schema of an optional field that may be left out but not sent as null: its
    non-null branch, without ``"default": null``."""
    schema.pop("default", None)
    (branch,) = [b for b in schema.pop("anyOf") if b.get("type") != "null"]
    schema.update(branch)


class Item(BaseModel):
    """A catalog item; ``stock`` is live (the Redis counter) unless Redis is down."""

    id: int
    name: str
    price_cents: int
    stock: int
    version: int


class ItemBatch(BaseModel):
    """Answer of ``GET /items?ids=``: the items found, and the ids that do not exist."""

    items: list[Item]
    missing: list[int]


class OrderRequest(_Strict):
    """``POST /orders`` body. ``quantity`` is also capped by ``Settings.max_quantity``."""

    item_id: ItemId
    quantity: Annotated[
        int, Field(ge=1, strict=False, description="units; at most MAX_QUANTITY"), JSON_NUMBER
    ]
    user_id: str = Field(pattern=USER_ID_PATTERN)


class OrderAccepted(BaseModel):
    """Answer of ``POST /orders``: 202 for a new order, 200 for a repeated Idempotency-Key."""

    order_id: str
    status: str


class OrderStatus(BaseModel):
    """``GET /orders/{order_id}``: ``accepted`` -> ``persisting`` (a worker claimed it) ->
    ``persisted``, or ``failed`` with a reason."""

    order_id: str
    item_id: int
    user_id: str
    quantity: int
    status: Literal["accepted", "persisting", "persisted", "failed"]
    reason: str | None = None
    accepted_at_ms: int
    claimed_at_ms: int | None = None
    persisted_at_ms: int | None = None


class ItemUpdateRequest(_Strict):
    """``PUT /items/{id}``: the fields to change, at least one; the others are left out
    (``null`` is refused: it would read as "clear this field")."""

    model_config = ConfigDict(json_schema_extra={"minProperties": 1})

    name: Annotated[str, Field(min_length=1, max_length=200)] | None = Field(
        None, json_schema_extra=_left_out_not_null
    )
    price_cents: Annotated[int, Field(ge=0, le=10**12, strict=False), JSON_NUMBER] | None = Field(
        None, json_schema_extra=_left_out_not_null
    )
    stock: Annotated[int, Field(ge=0, le=2**31 - 1, strict=False), JSON_NUMBER] | None = Field(
        None, json_schema_extra=_left_out_not_null
    )

    @model_validator(mode="before")
    @classmethod
    def _some_fields_and_no_nulls(cls, data: Any) -> Any:
        if isinstance(data, dict):
            if not data:
                raise ValueError("give at least one of name, price_cents, stock")
            if nulls := sorted(key for key, value in data.items() if value is None):
                raise ValueError(f"leave out the fields not to change instead of null: {nulls}")
        return data


class ItemUpdateQueued(BaseModel):
    """Answer of ``PUT /items/{id}``: the update is queued with this version."""

    item_id: int
    version: int
    status: Literal["queued"] = "queued"


class WarmupRequest(_Strict):
    """``POST /admin/warmup``: every item, or the given ids."""

    ids: list[ItemId] | None = Field(None, max_length=MAX_WARMUP_IDS)
    reset: bool = Field(
        False,
        description="a fresh sale for the named items only (all without ids): their "
        "finished orders, Idempotency-Key records and per-user counts are cleared and "
        "their counters overwritten from the database minus the units of orders still "
        "accepted or being persisted, which are kept; without it existing counters of a "
        "running sale are kept",
    )


class WarmupResult(BaseModel):
    """What a warmup did."""

    items_cached: int
    missing: int
    stock_counters_set: int
    sale_keys_cleared: int


class DependencyStatus(BaseModel):
    """One dependency in ``/readyz``."""

    ok: bool
    latency_ms: float | None = None
    error: str | None = None


class Readiness(BaseModel):
    """``/readyz``: ``ok``, ``degraded`` (serving, something down) or ``unavailable``."""

    status: Literal["ok", "degraded", "unavailable"]
    dependencies: dict[str, DependencyStatus]


class ErrorBody(BaseModel):
    """Every error response."""

    error: str
    detail: object = None
