"""The "Datastores" dashboard against the real exporters and the local Redis and PostgreSQL.

Debian's ``prometheus-redis-exporter`` and ``prometheus-postgres-exporter`` (what the
compose file runs) scrape the local servers; a real Prometheus scrapes the exporters and
every panel query of ``datastores.json`` returns a non-empty result.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from livestack import query, run_prometheus, wait_http, wait_targets_up
from promql_helpers import load_dashboards, panel_queries

from tests.support import PG_ADMIN_URL, REDIS_HOST_URL, free_port, require

pytestmark = pytest.mark.timeout(180)
DEADLINE_S = 45.0
POLL_S = 1.0


def _start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    binary = shutil.which(argv[0])
    require(binary, f"{argv[0]} not found (Debian package of that name)")
    return subprocess.Popen(
        [str(binary), *argv[1:]], env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT
    )


@pytest.fixture
def exporters(tmp_path: Path) -> Iterator[dict[str, str]]:
    """Redis and PostgreSQL exporters on free ports: job name -> host:port."""
    redis_port, pg_port = free_port(), free_port()
    dsn = f"{PG_ADMIN_URL}?sslmode=disable"
    procs = [
        _start(
            ["prometheus-redis-exporter", f"-redis.addr={REDIS_HOST_URL}",
             f"-web.listen-address=127.0.0.1:{redis_port}"],
            {}, tmp_path / "redis-exporter.log",
        ),
        _start(
            ["prometheus-postgres-exporter", f"--web.listen-address=127.0.0.1:{pg_port}"],
            {"DATA_SOURCE_NAME": dsn}, tmp_path / "postgres-exporter.log",
        ),
    ]  # fmt: skip
    try:
        targets = {"redis": f"127.0.0.1:{redis_port}", "postgres": f"127.0.0.1:{pg_port}"}
        for proc, target in zip(procs, targets.values(), strict=True):
            wait_http(f"http://{target}/metrics", proc)
        yield targets
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)


def test_every_datastores_panel_returns_data(exporters: dict[str, str], tmp_path: Path) -> None:
    """Each Redis and PostgreSQL panel query is non-empty once the exporters are scraped."""
    queries = [q for q in panel_queries(load_dashboards()) if q.dashboard == "datastores.json"]
    assert queries
    jobs = {job: [target] for job, target in exporters.items()}
    with run_prometheus(jobs, tmp_path) as prometheus:
        wait_targets_up(prometheus, set(jobs))
        pending = {str(q): q for q in queries}
        deadline = time.monotonic() + DEADLINE_S
        while pending and time.monotonic() < deadline:
            for key, q in list(pending.items()):
                body = query(prometheus, q.resolved)
                assert body["status"] == "success", f"{q}: {body.get('error')}"
                if body["data"]["result"]:
                    del pending[key]
            if pending:
                time.sleep(POLL_S)  # Prometheus scrapes every second
    assert not pending, "empty panels:\n" + "\n".join(pending)
