"""Smoke test of ``python -m gmpworker.bench``: every row of the table is produced.

Both gmpworker implementations have rows (native core and pure runtime, each sampled in
a child process). The benchmark runs in ``--quick`` mode (tiny sizes, one repeat) in a subprocess.
Nothing here asserts a timing: only that each row was measured (a positive number),
appears in the printed table and in ``--json``, and that the targets are reported.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support import require

pytestmark = pytest.mark.timeout(300)  # the bench subprocess itself is bounded at 240 s

ROOT = Path(__file__).resolve().parents[2]

BASELINE_ROWS = {
    "pingpong.process",
    "pingpong.thread",
    "pingpong.asyncio",
    "pingpong_cpu.asyncio",
    "spawn.thread",
    "spawn.asyncio",
    "spawn_cpu.asyncio",
    "memory.go",
    "memory.asyncio",
    "isolation.direct",
    "isolation.to_thread",
}
GMP_ROWS = {
    f"{section}.{impl}{procs}"
    for section in ("pingpong", "pingpong_cpu", "spawn", "spawn_cpu", "isolation")
    for impl in ("native", "pure")
    for procs in (1, 2)
} | {"memory.native", "memory.pure"}
NATIVE_ROWS = {key for key in GMP_ROWS if ".native" in key}
UVLOOP_ROWS = {"pingpong.uvloop", "pingpong_cpu.uvloop"}
# spawn has a target for the native core only
TARGET_ROWS = GMP_ROWS - {f"{s}.pure{p}" for s in ("spawn", "spawn_cpu") for p in (1, 2)}


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Any]:
    """One quick run of the benchmark: the finished process and its JSON document."""
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "gmpworker.bench", "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, f"bench failed:\n{proc.stdout}\n{proc.stderr}"
    return proc, json.loads(out.read_text(encoding="utf-8"))


def rows_by_key(doc: Any) -> dict[str, dict[str, Any]]:
    """The JSON rows indexed by their stable key."""
    return {row["key"]: row for row in doc["rows"]}


def assert_measured(row: dict[str, Any]) -> None:
    """A row carries a positive median, its samples and a positive ratio to asyncio."""
    assert row["error"] is None, row
    assert row["value"] is not None and row["value"] > 0, row
    assert row["samples"] and all(s >= 0 for s in row["samples"]), row
    assert row["ratio"] is not None and row["ratio"] > 0, row


def test_every_row_is_in_the_table(bench: tuple[subprocess.CompletedProcess[str], Any]) -> None:
    proc, doc = bench
    rows = rows_by_key(doc)
    assert set(rows) == BASELINE_ROWS | GMP_ROWS | UVLOOP_ROWS
    for row in rows.values():
        assert row["label"] in proc.stdout, row["label"]
    assert proc.stdout.count("vs asyncio") == 6  # one header per section
    assert f"row {len(rows)}/{len(rows)}]" in proc.stderr  # progress reached the last row


def test_machine_and_targets_are_reported(
    bench: tuple[subprocess.CompletedProcess[str], Any],
) -> None:
    proc, doc = bench
    machine = doc["machine"]
    assert machine["cores"] >= 1 and machine["python"].startswith("CPython")
    assert machine["cpu"] in proc.stdout
    assert "targets (issue 16):" in proc.stdout
    assert {t["row"] for t in doc["targets"]} == {rows_by_key(doc)[k]["label"] for k in TARGET_ROWS}


def test_baseline_rows_are_measured(bench: tuple[subprocess.CompletedProcess[str], Any]) -> None:
    rows = rows_by_key(bench[1])
    for key in sorted(BASELINE_ROWS):
        assert_measured(rows[key])
    baseline = rows["pingpong.asyncio"]
    assert baseline["ratio"] == pytest.approx(1.0)


def test_uvloop_rows_are_measured_when_installed(
    bench: tuple[subprocess.CompletedProcess[str], Any],
) -> None:
    for key in sorted(UVLOOP_ROWS):
        row = rows_by_key(bench[1])[key]
        if importlib.util.find_spec("uvloop") is None:
            assert row["skipped"] and row["value"] is None
        else:
            assert_measured(row)


def test_gmpworker_rows_are_measured(bench: tuple[subprocess.CompletedProcess[str], Any]) -> None:
    doc = bench[1]
    require(doc["gmpworker_unavailable"] is None, str(doc["gmpworker_unavailable"]))
    rows = rows_by_key(doc)
    for key in sorted(GMP_ROWS - NATIVE_ROWS):
        assert_measured(rows[key])
    native_built = importlib.util.find_spec("gmpworker._core") is not None
    require(native_built, "gmpworker._core is not built: the native rows are skipped")
    for key in sorted(NATIVE_ROWS):
        assert_measured(rows[key])
    assert all(t["met"] is not None for t in doc["targets"])
