"""One settings object for every service, read from the environment (pydantic-settings).

Every field maps to an upper-case environment variable of the same name
(``REDIS_URL``, ``CACHE_TTL_SECONDS``...); ``.env`` in the working directory is read too.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Configuration of the api, worker, reconciler and migrate services."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    # Connections. State (stock, orders, idempotency keys) must never be evicted, so it
    # lives apart from the cache: another logical database natively, another instance
    # (noeviction) in Docker Compose, because maxmemory and its policy are per instance.
    redis_url: str = "redis://127.0.0.1:6379/0"
    cache_redis_url: str = "redis://127.0.0.1:6379/1"
    redis_prefix: str = Field("fs:", description="prefix of every Redis key (tests use their own)")
    database_url: str = "postgresql://root@127.0.0.1:5432/flashsale"
    broker_url: str = "amqp://guest:guest@127.0.0.1:5672//"

    # Queues.
    order_queue: str = "orders"
    item_update_queue: str = "item_updates"
    dead_letter_queue: str = "orders.dead"

    # Cache-aside.
    cache_ttl_seconds: float = 300.0
    cache_ttl_jitter: float = Field(0.2, ge=0, le=1, description="TTL spread, fraction of the TTL")
    negative_ttl_seconds: float = 30.0
    single_flight_lock_seconds: float = 2.0
    near_cache_ttl_seconds: float = 1.0

    # Orders.
    max_quantity: int = Field(5, ge=1, description="most units one order may ask for")
    per_user_limit: int = Field(5, ge=1, description="most units one user may buy of one item")
    idempotency_ttl_seconds: int = 86_400
    max_body_bytes: int = 4096
    publish_timeout_seconds: float = 2.0
    publish_threads: int = 8
    retry_after_seconds: int = 1

    # Reconciler.
    reconcile_grace_seconds: float = 30.0
    reconcile_interval_seconds: float = 10.0

    # Worker (gmpworker pool and batching).
    gmp_maxprocs: int = Field(2, ge=1, description="GOMAXPROCS of the worker's runtime")
    worker_concurrency: int = Field(64, ge=1, description="tasks in flight per worker")
    batch_size: int = Field(100, ge=1)
    batch_deadline_ms: float = Field(20.0, gt=0)
    db_pool_size: int = 8

    # Demo catalog.
    demo_items: int = 1000
    demo_stock: int = 100

    # Containers.
    require_no_swap: bool = False


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
