"""Request and response bodies (pydantic). Validation failures become 4xx in errors.py."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

ItemId = Annotated[int, Field(ge=1, le=2**63 - 1, description="item id (PostgreSQL bigint)")]
MAX_BATCH_IDS = 100
"""Most ids one ``GET /items?ids=`` may ask for."""
MAX_WARMUP_IDS = 10_000

USER_ID_PATTERN = r"^[A-Za-z0-9_.@-]{1,64}$"
"""User ids are part of Redis key names, so no ``:`` and no spaces."""
IDEMPOTENCY_KEY_PATTERN = r"^[A-Za-z0-9_.:-]{8,128}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)


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
    quantity: int = Field(ge=1, description="units; at most Settings.max_quantity")
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
    """``PUT /items/{id}``: the fields to change (at least one)."""

    name: str | None = Field(None, min_length=1, max_length=200)
    price_cents: int | None = Field(None, ge=0, le=10**12)
    stock: int | None = Field(None, ge=0, le=2**31 - 1)

    @model_validator(mode="after")
    def _at_least_one_field(self) -> ItemUpdateRequest:
        if self.name is None and self.price_cents is None and self.stock is None:
            raise ValueError("give at least one of name, price_cents, stock")
        return self


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
