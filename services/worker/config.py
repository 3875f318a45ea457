"""Worker-only knobs, read from the environment like :class:`services.settings.Settings`.

They concern one process (its pool, ports, files), not the system's contracts, so they
stay next to the worker instead of growing the shared settings object.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class WorkerOptions(BaseSettings):
    """Environment of the Celery worker process (``WORKER_*``)."""

    model_config = SettingsConfigDict(env_prefix="WORKER_", env_file=".env", extra="ignore")

    pool: str = Field("gmpworker.celery:GMPPool", description="Celery pool (name or module:Class)")
    metrics_port: int = Field(9101, description="Prometheus HTTP port; 0 disables it")
    heartbeat_file: str = Field("/tmp/worker-heartbeat", description="touched while consuming")
    broker_lost_exit_seconds: float = Field(
        60.0,
        gt=0,
        description="exit (for the restart policy) after this long without a consumer heartbeat",
    )
    lock_timeout_ms: int = Field(
        5000, ge=0, description="PostgreSQL lock_timeout: a stuck lock becomes a retried error"
    )
    max_retries: int = Field(
        8, ge=0, description="retries of a transient error before leaving it to the reconciler"
    )
    retry_backoff_max_seconds: int = Field(30, ge=1)
    reinvalidate_after_seconds: float = Field(
        0.5, ge=0, description="second cache invalidation after an item update (read/write race)"
    )


@lru_cache(maxsize=1)
def get_worker_options() -> WorkerOptions:
    """The process-wide worker options, read once."""
    return WorkerOptions()
