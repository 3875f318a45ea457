"""Fixtures of the worker tests: a real Celery worker subprocess, the broker, database and
Redis of the test (the classes are in ``workertest_support``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from celery import Celery
from workertest_support import Harness, WorkerProcess

from services.settings import get_settings
from services.store import OrderStore
from services.worker.app import create_app


@pytest.fixture
def worker_process(service_env: dict[str, str], tmp_path: Path) -> Iterator[WorkerProcess]:
    """A worker, not started yet; killed on teardown (its vhost is deleted anyway, and a
    warm shutdown would cost seconds per test: ``services.stack down`` tests that path)."""
    process = WorkerProcess(env=service_env, workdir=tmp_path)
    yield process
    process.kill()


@pytest.fixture
def worker(worker_process: WorkerProcess) -> WorkerProcess:
    """A running worker."""
    worker_process.start()
    return worker_process


@pytest.fixture
def celery_app(service_env: dict[str, str]) -> Iterator[Celery]:
    """A Celery app on the test's vhost, for publishing."""
    app = create_app()
    yield app
    app.close()


@pytest.fixture
def store(service_env: dict[str, str]) -> Iterator[OrderStore]:
    """The order store on the test's Redis prefix."""
    settings = get_settings()
    client = redis.Redis.from_url(settings.redis_url)
    yield OrderStore(client, settings.redis_prefix, per_user_limit=settings.per_user_limit)
    client.close()


@pytest.fixture
def db(pg_url: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to the test's database."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def harness(db: psycopg.Connection[Any], store: OrderStore, celery_app: Celery) -> Harness:
    """The :class:`Harness` on this test's database, Redis prefix and vhost."""
    return Harness(db, store, celery_app)
