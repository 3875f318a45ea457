"""The stacks a spike can run against: the native launcher, Docker Compose, or any URL.

Each :class:`~loadtest.runner.Target` knows where the api answers, where the state lives
(PostgreSQL and the state Redis, for the verifier), how to reset the sale, and what to tear
down afterwards (only what this run started).
"""

from __future__ import annotations

import os
import subprocess
import urllib.error

import psycopg

from loadtest.runner import PYTHON, ROOT, RunnerError, Target, http_get, wait_ready
from loadtest.verifier import Sources
from services.settings import Settings


def run_module(module: str, *args: str) -> str:
    """Run ``python -m module args`` in the repository; raise :class:`RunnerError` on failure."""
    proc = subprocess.run(
        [PYTHON, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        output = (proc.stdout + proc.stderr).strip()[-2000:]
        raise RunnerError(
            f"python -m {module} {' '.join(args)} failed ({proc.returncode}):\n{output}"
        )
    return proc.stdout


def catalog_ids(database_url: str) -> str:
    """The catalog's ids as a ``LOADTEST_ITEMS`` spec (a range when contiguous)."""
    with psycopg.connect(database_url) as conn:
        ids = [row[0] for row in conn.execute("SELECT id FROM items ORDER BY id")]
    if not ids:
        raise RunnerError("the catalog is empty: seed it first (python -m services.catalog seed)")
    if ids[-1] - ids[0] + 1 == len(ids):
        return f"{ids[0]}-{ids[-1]}"
    return ",".join(map(str, ids))


def _sources(settings: Settings) -> Sources:
    return Sources(settings.database_url, settings.redis_url, settings.redis_prefix)


RESET_STEPS = (("seed", "--reset"), ("warmup", "--reset"))
"""A fresh sale: stock back to initial and orders deleted in PostgreSQL, then the Redis
counters overwritten, orders, idempotency keys and per-user counts cleared, the cache warm."""


def _reset_with_catalog_cli() -> None:
    for step in RESET_STEPS:
        run_module("services.catalog", *step)


def _answers(base_url: str) -> bool:
    try:
        http_get(f"{base_url}/healthz", timeout=2.0)
    except (urllib.error.URLError, OSError):
        return False
    return True


def _stop_native_stack() -> None:
    run_module("services.stack", "down")


def native_target(settings: Settings, keep: bool) -> Target:
    """The native stack (``python -m services.stack``), started here unless already up.

    It listens on ``API_PORT`` (8000); ``STACK_RUN_DIR`` and the service settings in the
    environment select which stack, as for the launcher itself.
    """
    base_url = f"http://127.0.0.1:{os.environ.get('API_PORT', '8000')}"
    target = Target(
        label=f"native ({base_url})",
        base_url=base_url,
        sources=_sources(settings),
        reset=_reset_with_catalog_cli,
        catalog_ids=lambda: catalog_ids(settings.database_url),
    )
    if not _answers(base_url):
        run_module("services.stack", "up", "--detach")
        if not keep:
            target.teardowns.append(_stop_native_stack)
        wait_ready(base_url, timeout_s=120)
    return target


def url_target(base_url: str, settings: Settings) -> Target:
    """A stack someone else runs; its state is reached through this process's settings."""
    base_url = base_url.rstrip("/")
    return Target(
        label=base_url,
        base_url=base_url,
        sources=_sources(settings),
        reset=_reset_with_catalog_cli,
        catalog_ids=lambda: catalog_ids(settings.database_url),
    )


def compose_target(keep: bool) -> Target:
    """The Docker Compose stack through the python-on-whales driver (``loadtest.stack``).

    The datastores are published on loopback ports for the verifier; the sale is reset by
    the catalog command inside the api container, which reaches the cache instance too.
    """
    from loadtest.stack import ComposeStack, StackError

    stack = ComposeStack(expose_datastores=True)
    try:
        stack.up()
    except StackError as exc:
        raise RunnerError(str(exc)) from exc
    urls = stack.urls()
    missing = {"api", "database", "redis"} - set(urls)
    if missing:
        raise RunnerError(f"compose stack publishes no {sorted(missing)}: {urls}")
    # The containers use the default prefix, whatever this shell's REDIS_PREFIX says.
    prefix = Settings.model_fields["redis_prefix"].default
    sources = Sources(urls["database"], urls["redis"], prefix)

    def reset() -> None:
        for step in RESET_STEPS:
            stack.exec("api", ["python", "-m", "services.catalog", *step])

    target = Target(
        label="docker compose",
        base_url=urls["api"].rstrip("/"),
        sources=sources,
        reset=reset,
        catalog_ids=lambda: catalog_ids(sources.database_url),
    )
    if not keep:
        target.teardowns.append(stack.down)
    return target
