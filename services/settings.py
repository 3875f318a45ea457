"""One settings object for every service, read from the environment (pydantic-settings).

Every field maps to an upper-case environment variable of the same name
(``REDIS_URL``, ``CACHE_TTL_SECONDS``...); ``.env`` in the working directory is read too.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

EXPERIMENTS_ALLOWED = "EXPERIMENTS_ALLOWED"
"""Environment variable the experiments runner sets (to 1) for the stacks it starts."""
EXPERIMENT_MODES = ("experiment_cache_bypass", "experiment_sync_write")
"""The settings that switch an experiment-only mode on."""


class Settings(BaseSettings):
    """Configuration of the api, worker, reconciler and migrate services."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    # Connections. State (stock, orders, idempotency keys) must never be evicted, so it
    # lives apart from the cache: another logical database natively, another instance
    # (noeviction) in Docker Compose, because maxmemory and its policy are per instance.
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="state Redis: stock, orders, idempotency (noeviction)",
    )
    cache_redis_url: str = Field(
        "redis://127.0.0.1:6379/1", description="cache Redis: item entries with TTLs (LRU)"
    )
    redis_prefix: str = Field("fs:", description="prefix of every Redis key (tests use their own)")
    database_url: str = Field(
        "postgresql://root@127.0.0.1:5432/flashsale", description="PostgreSQL (libpq URL)"
    )
    broker_url: str = Field(
        "amqp://guest:guest@127.0.0.1:5672//", description="RabbitMQ (AMQP URL)"
    )

    # Queues.
    order_queue: str = Field("orders", description="durable queue of accepted orders")
    order_queue_type: Literal["classic", "quorum"] = Field(
        "classic",
        description="x-queue-type of the order queue (quorum: replicated; a policy cannot"
        " change it, an existing queue must be deleted first)",
    )
    item_update_queue: str = Field(
        "item_updates", description="durable queue of admin item updates"
    )
    dead_letter_queue: str = Field("orders.dead", description="orders that failed permanently")

    # Cache-aside.
    cache_ttl_seconds: float = Field(300.0, gt=0, description="item cache entry lifetime")
    cache_ttl_jitter: float = Field(0.2, ge=0, le=1, description="TTL spread, fraction of the TTL")
    negative_ttl_seconds: float = Field(30.0, gt=0, description="lifetime of an unknown-id entry")
    single_flight_lock_seconds: float = Field(
        2.0, gt=0, description="cross-process loader lock on a cache miss"
    )
    near_cache_ttl_seconds: float = Field(
        1.0, ge=0, description="in-process cache in front of Redis (invalidated by pub/sub)"
    )

    # Orders.
    max_quantity: int = Field(5, ge=1, description="most units one order may ask for")
    per_user_limit: int = Field(5, ge=1, description="most units one user may buy of one item")
    idempotency_ttl_seconds: int = Field(
        86_400, ge=1, description="how long an Idempotency-Key holds"
    )
    max_body_bytes: int = Field(4096, ge=256, description="larger request bodies get 413")
    publish_timeout_seconds: float = Field(
        2.0, gt=0, description="wait for the broker's confirm before compensating (503)"
    )
    publisher: Literal["asyncio", "threads"] = Field(
        "asyncio",
        description="`asyncio`: pipelined confirms on one connection; `threads`: the previous"
        " kombu publisher, kept for the benchmark's comparison",
    )
    publish_threads: int = Field(8, ge=1, description="threads of the `threads` publisher")
    retry_after_seconds: int = Field(1, ge=0, description="Retry-After of a 503")
    order_admission_limit: int = Field(
        64, ge=1, description="orders in flight per api process; beyond it 503 overloaded"
    )
    read_admission_limit: int = Field(
        512, ge=1, description="item reads in flight per api process; beyond it 503 overloaded"
    )
    admission_wait_seconds: float = Field(
        0.25,
        ge=0,
        description="how long a request beyond an admission limit may wait for a place"
        " before 503 overloaded",
    )
    sold_out_ttl_seconds: float = Field(
        1.0,
        gt=0,
        description="how long an item's in-memory sold-out flag answers 409 without Redis",
    )
    breaker_probe_interval_seconds: float = Field(
        0.5, gt=0, description="while a dependency is down, how often it is probed"
    )
    breaker_probe_timeout_seconds: float = Field(
        1.0, gt=0, description="time-out of one probe of a dependency that is down"
    )

    # Reconciler.
    reconcile_grace_seconds: float = Field(
        30.0, gt=0, description="age of an accepted order before the reconciler republishes it"
    )
    reconcile_interval_seconds: float = Field(
        10.0, gt=0, description="pause between reconciler passes"
    )
    reconcile_claim_grace_seconds: float = Field(
        60.0,
        gt=0,
        description="a stale order a worker claimed (tried) more recently than this is "
        "left to that worker's retries instead of being republished",
    )

    # Worker (gmpworker pool and batching).
    gmp_maxprocs: int = Field(2, ge=1, description="GOMAXPROCS of the worker's runtime")
    worker_concurrency: int = Field(64, ge=1, description="tasks in flight per worker")
    batch_size: int = Field(100, ge=1, description="orders committed per transaction at most")
    batch_deadline_ms: float = Field(
        20.0, gt=0, description="flush a partial batch after this long"
    )
    db_pool_size: int = Field(8, ge=1, description="PostgreSQL connections per process")

    # Demo catalog.
    demo_items: int = Field(1000, ge=1, description="items in the demo catalog")
    demo_stock: int = Field(100, ge=0, description="initial stock of each demo item")

    # Admin access.
    admin_token: SecretStr | None = Field(
        None,
        description="bearer token that PUT /items/* and POST /admin/* require; unset or empty, "
        "those routes answer 401 (make up and make compose-up create one: .run/admin-token)",
    )

    # Containers.
    require_no_swap: bool = Field(
        False, description="refuse to start when the cgroup allows swap (set in Compose)"
    )

    # Experiment-only modes (``python -m loadtest experiments``): never in production.
    experiment_cache_bypass: bool = Field(
        False,
        description="EXPERIMENT ONLY: item reads go straight to PostgreSQL, no cache"
        f" (needs {EXPERIMENTS_ALLOWED}=1)",
    )
    experiment_sync_write: bool = Field(
        False,
        description="EXPERIMENT ONLY: orders are written to PostgreSQL inside the request,"
        f" not queued (needs {EXPERIMENTS_ALLOWED}=1)",
    )

    @model_validator(mode="after")
    def _experiment_modes_need_the_runner(self) -> Settings:
        """Refuse an experiment-only mode unless the experiments runner allowed it.

        A stray ``EXPERIMENT_*`` variable in a deployment must stop the service at start,
        not silently turn the cache or the queue off during a sale.
        """
        on = [name for name in EXPERIMENT_MODES if getattr(self, name)]
        if on and os.environ.get(EXPERIMENTS_ALLOWED) != "1":
            raise ValueError(
                f"experiment-only mode(s) {', '.join(n.upper() for n in on)} are on, but"
                f" {EXPERIMENTS_ALLOWED}=1 is not set: only `python -m loadtest experiments`"
                " may switch them on"
            )
        return self


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()


def markdown_table() -> str:
    """The settings as the README's Markdown table: variable, default, meaning."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        rows.append(f"| `{name.upper()}` | `{field.default}` | {field.description} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
