"""Helpers shared by the api tests (imported by name: the tests are not a package)."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from kombu import Connection
from prometheus_client import REGISTRY

from services.api.dependencies import ApiContext
from services.api.main import create_app
from services.settings import Settings

REDIS_HOST_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379")
CATALOG_ITEMS = 30
CATALOG_STOCK = 100
ADMIN_TOKEN = "test-admin-token-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
"""Headers of an admin call to the test app (its settings hold ``ADMIN_TOKEN``)."""


def closed_port() -> int:
    """A TCP port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def dead_url(scheme: str) -> str:
    """A URL of ``scheme`` whose server refuses connections."""
    return f"{scheme}://guest:guest@127.0.0.1:{closed_port()}/"


@dataclass
class Api:
    """The running app: its HTTP client and its context (clients, cache, store)."""

    client: httpx.AsyncClient
    ctx: ApiContext

    @property
    def settings(self) -> Settings:
        """The app's settings."""
        return self.ctx.settings


class BrokerQueue:
    """Fetch Celery task messages from a queue (basic_get, acknowledged)."""

    def __init__(self, conn: Connection) -> None:
        self.channel = conn.default_channel

    def count(self, name: str) -> int:
        """Messages ready in ``name``."""
        return int(self.channel.queue_declare(name, passive=True).message_count)

    def tasks(self, name: str) -> list[tuple[str, dict[str, Any]]]:
        """Drain ``name``: each message's task name and keyword arguments."""
        found = []
        while (message := self.channel.basic_get(name, no_ack=True)) is not None:
            _args, kwargs, _embed = json.loads(message.body)
            found.append((message.headers["task"], kwargs))
        return found


async def running_api(settings: Settings) -> AsyncIterator[Api]:
    """The app on ``settings``, its lifespan run, with an in-process HTTP client."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            yield Api(client, app.state.context)


def sample(name: str, **labels: str) -> float:
    """Current value of a metric sample in this process (0 if never set)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0
