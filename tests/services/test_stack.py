"""``python -m services.stack up --detach`` / ``status`` / ``down`` on the test's own services."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def stack_env(service_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """Environment for a small stack on free ports, its state under ``tmp_path``, no
    ``ADMIN_TOKEN`` configured (so that the launcher makes one)."""
    return {
        **{k: v for k, v in os.environ.items() if k != "ADMIN_TOKEN"},
        **service_env,
        "DEMO_ITEMS": "20",
        "DEMO_STOCK": "5",
        "API_PORT": str(free_port()),
        "WORKER_METRICS_PORT": str(free_port()),
        "RECONCILER_METRICS_PORT": str(free_port()),
        "WORKER_CONCURRENCY": "4",
        "STACK_RUN_DIR": str(tmp_path / "run"),
        "COLUMNS": "200",
    }


def stack(
    env: dict[str, str], *args: str, timeout: float = 150
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m services.stack ARGS``."""
    return subprocess.run(
        [sys.executable, "-m", "services.stack", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def running_stack(stack_env: dict[str, str]) -> Iterator[tuple[dict[str, str], str]]:
    """A detached stack and the output of ``up``; brought down (or killed) afterwards.

    A metrics folder that a killed stack left behind waits in the run directory.
    """
    leftover = Path(stack_env["STACK_RUN_DIR"]) / "prom-leftover"
    leftover.mkdir(parents=True)
    (leftover / "counter_1234.db").write_bytes(b"stale")
    started = stack(stack_env, "up", "--detach")
    state_file = Path(stack_env["STACK_RUN_DIR"]) / "stack.json"
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield stack_env, started.stdout
    finally:
        if state_file.exists():
            stack(stack_env, "down", timeout=90)
        if state_file.exists():  # down failed: kill the process groups this test started
            for service in json.loads(state_file.read_text())["services"]:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(service["pid"], signal.SIGKILL)


def test_up_detach_serves_orders_end_to_end_and_down_stops_it(
    running_stack: tuple[dict[str, str], str],
) -> None:
    env, output = running_stack
    api = f"http://127.0.0.1:{env['API_PORT']}"
    for url in (
        api,
        f"{api}/docs",
        f"{api}/dashboard",
        f"{api}/metrics",
        f"http://127.0.0.1:{env['WORKER_METRICS_PORT']}/metrics",
        f"http://127.0.0.1:{env['RECONCILER_METRICS_PORT']}/metrics",
    ):
        assert url in output
    assert httpx.get(f"{api}/readyz").json()["status"] == "ok"

    token_file = Path(env["STACK_RUN_DIR"]) / "admin-token"
    assert "admin token" in output and str(token_file) in output
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    assert token not in output
    update = {"name": "Renamed"}
    assert httpx.put(f"{api}/items/7", json=update).status_code == 401
    admin = {"Authorization": f"Bearer {token}"}
    assert httpx.put(f"{api}/items/7", json=update, headers=admin).status_code == 202

    accepted = httpx.post(f"{api}/orders", json={"item_id": 7, "quantity": 2, "user_id": "alice"})
    assert accepted.status_code == 202, accepted.text
    order_id = accepted.json()["order_id"]
    deadline = time.monotonic() + 30
    while httpx.get(f"{api}/orders/{order_id}").json()["status"] != "persisted":
        assert time.monotonic() < deadline, "order not persisted within 30 s"
        time.sleep(0.2)
    assert httpx.get(f"{api}/items/7").json()["stock"] == 3

    status = stack(env, "status")
    assert status.returncode == 0, status.stdout
    assert "running" in status.stdout

    run_dir = Path(env["STACK_RUN_DIR"])
    state = json.loads((run_dir / "stack.json").read_text())
    assert [p.name for p in run_dir.glob("prom-*")] == [Path(state["multiproc_dir"]).name]
    assert any(Path(state["multiproc_dir"]).iterdir()), "the api wrote no metrics files"
    stopped = stack(env, "down", timeout=90)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    for service in state["services"]:
        assert not Path(f"/proc/{service['pid']}").exists() or _is_zombie(service["pid"])
    assert stack(env, "status").returncode == 1
    assert not list(run_dir.glob("prom-*")), "down left the metrics folder behind"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{api}/healthz")


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
