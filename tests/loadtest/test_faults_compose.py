"""The fault suite end to end, in its quick mode, on real containers (marked ``compose``).

``python -m loadtest faults --quick`` builds the images (offline, cached), starts its own
compose project, and runs a few real faults under load: the api and the worker killed
from the host, RabbitMQ stopped for 10 s, the worker cut off the network for 10 s. Every
row must come back with nothing lost, duplicated or oversold, the stack serving and
healthy again on its own and the order queue with nothing left unacknowledged.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from loadtest.faults import QUICK_FAULTS

pytestmark = pytest.mark.compose

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(1500)  # includes the (cached) build and `up --wait`
def test_quick_fault_suite_recovers_from_every_fault_alone(
    compose_images: None, tmp_path: Path
) -> None:
    out = tmp_path / "report"
    project = f"faultsci{uuid.uuid4().hex[:8]}"
    proc = subprocess.run(
        [sys.executable, "-m", "loadtest", "faults", "--quick", "--project", project,
         "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=1400,
    )  # fmt: skip
    report = out / "faults.json"
    assert report.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = {row["fault"]: row for row in json.loads(report.read_text())["rows"]}
    assert set(rows) == set(QUICK_FAULTS)
    for name, row in rows.items():
        assert row["accepted"] > 0, f"{name}: no order accepted at all"
        assert (row["lost"], row["duplicated"], row["oversold"]) == (0, 0, 0), row
        assert row["persisted"] == row["accepted"], row
        assert row["unacked_after"] == 0, f"{name}: messages left unacknowledged: {row}"
        assert row["recovered"], f"{name} did not recover alone: {row}"
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "| kill-api |" in (out / "faults.md").read_text()
