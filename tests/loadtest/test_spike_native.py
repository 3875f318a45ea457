"""End to end: ``python -m loadtest spike --target native`` on a stack of the test's own
(database, vhost, Redis prefix, ports, run directory), with distributed locust (a master and
two workers). The run must hold every invariant, write a report that carries the measured
figures, and tear down the stack it started. No latency threshold is asserted: thresholds
are off (``--no-thresholds``); the figures are checked for consistency, not speed."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest.report import LOCUST_HTML, PLOT_FILE, REPORT_FILE, SUMMARY_FILE
from tests.support import free_ports

ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_short_spike_against_the_native_stack(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    api, worker_metrics, reconciler_metrics = free_ports(3)
    run_dir = tmp_path / "stack"
    out = tmp_path / "report"
    env = {
        **os.environ,
        **service_env,
        "API_PORT": str(api),
        "WORKER_METRICS_PORT": str(worker_metrics),
        "RECONCILER_METRICS_PORT": str(reconciler_metrics),
        "STACK_RUN_DIR": str(run_dir),
        "DEMO_ITEMS": "200",
        "DEMO_STOCK": "20",  # hot items sell out during the spike: 409s and a full stop
    }
    flags = "--target native --preset smoke --workers 2 --no-thresholds --drain-bound 60"
    proc = subprocess.run(
        [sys.executable, "-m", "loadtest", "spike", *flags.split(), "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=220,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert f"report folder: {out}" in " ".join(output.split())

    summary = json.loads((out / SUMMARY_FILE).read_text())
    failed = [c for c in summary["checks"] if not c["passed"]]
    assert summary["passed"] and not failed, failed
    assert {c["name"] for c in summary["checks"]} >= {
        "accepted_persisted",
        "no_oversell",
        "db_stock_consistent",
        "redis_db_stock_agree",
        "queue_drained",
        "no_unexpected_5xx",
    }

    phases = {p["phase"]: p for p in summary["phases"]}
    assert list(phases) == ["baseline", "spike", "recovery", "all"]
    assert all(phases[p]["requests"] > 0 for p in phases)
    accepted = summary["order_outcomes"].get("202", 0)
    assert accepted > 0
    assert summary["order_outcomes"].get("409", 0) > 0  # the hottest items sold out
    assert summary["lag"]["count"] == accepted
    assert summary["cache"]["hit_ratio"] is not None and summary["cache"]["hit_ratio"] > 0

    report = (out / REPORT_FILE).read_text()
    spike = phases["spike"]
    row = f"| spike | {spike['seconds']:.0f} | {spike['requests']} | {spike['rps']:.1f} |"
    assert row in report
    assert f"p99 {summary['lag']['p99_ms']:.0f} ms" in report
    assert f"Cache hit ratio: {summary['cache']['hit_ratio'] * 100:.2f}%" in report
    assert f"202: {accepted}" in report
    assert "**FAIL**" not in report
    plot = (out / PLOT_FILE).read_bytes()
    assert plot.startswith(PNG_MAGIC) and len(plot) > 20_000
    assert f"]({PLOT_FILE})" in report
    assert "<html" in (out / LOCUST_HTML).read_text().lower()

    # The stack this run started is gone.
    assert not (run_dir / "stack.json").exists()
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", api)) != 0
