"""The fault suite's own logic, without containers: when the stack serves again, what a
row's verdict is, how the report reads, and the fault catalog."""

from __future__ import annotations

import json
from pathlib import Path

from loadtest.faults import QUICK_FAULTS, catalog
from loadtest.faultsuite import FaultRow, SuiteOptions, markdown_table, serving_again, write_report
from loadtest.steady import Outcome

FAULT_END = 1000.0


def outcome(kind: str, sent: float, status: int, took: float = 0.1) -> Outcome:
    """One request, sent ``sent`` seconds after the fault ended."""
    return Outcome(kind, FAULT_END + sent, FAULT_END + sent + took, status)


def recovered_row(**changes: object) -> FaultRow:
    """A row that recovered, with ``changes``."""
    row = FaultRow("kill-api", "crash", sent=10, accepted=10, persisted=10)
    row.serving_again_s, row.healthy_s, row.drained_s, row.unacked_after = 1.0, 5.0, 9.0, 0
    for name, value in changes.items():
        setattr(row, name, value)
    return row


def test_serving_again_needs_an_accepted_order_and_a_read_sent_after_the_fault() -> None:
    outcomes = [
        outcome("order", -1.0, 202),  # before the end of the fault: does not count
        outcome("read", 0.5, 0),
        outcome("order", 1.0, 503),
        outcome("read", 1.5, 200),
        outcome("order", 2.0, 202, took=0.25),
    ]
    assert serving_again(outcomes, FAULT_END) == 2.25
    assert serving_again(outcomes[:4], FAULT_END) is None  # no order accepted yet


def test_a_row_passes_only_when_nothing_is_lost_and_it_recovered_alone() -> None:
    assert recovered_row().passed
    assert not recovered_row(lost=1).passed
    assert not recovered_row(duplicated=1).passed
    assert not recovered_row(oversold=1).passed
    assert not recovered_row(serving_again_s=None).passed
    assert not recovered_row(healthy_s=None).recovered
    assert not recovered_row(unacked_after=3).recovered  # the worker stopped acknowledging


def test_report_has_a_row_per_fault_in_json_and_markdown(tmp_path: Path) -> None:
    rows = [recovered_row(), recovered_row(fault="stop-rabbitmq", serving_again_s=None)]
    path = write_report(rows, SuiteOptions(faults=["kill-api"], out_dir=tmp_path), "cmd")
    data = json.loads((tmp_path / "faults.json").read_text())
    assert [r["fault"] for r in data["rows"]] == ["kill-api", "stop-rabbitmq"]
    assert data["passed"] is False
    assert [r["recovered"] for r in data["rows"]] == [True, False]
    table = markdown_table(rows)
    assert "| kill-api | 10 | 10 | 10 | 0 | 0 | 0 | 0 | 0 | 1 s | 9 s | yes |" in table
    assert "| stop-rabbitmq |" in table and "never" in table and "**no**" in table
    assert table in path.read_text()


def test_catalog_has_every_fault_of_the_issue_and_the_quick_ones() -> None:
    faults = catalog()
    services = ("api", "worker", "reconciler", "postgres", "redis-state", "redis-cache", "rabbitmq")
    assert {f"kill-{s}" for s in services} <= set(faults)
    for service in ("rabbitmq", "postgres", "redis-state", "redis-cache"):
        assert f"stop-{service}" in faults
    assert {"disconnect-worker", "memory-worker"} <= set(faults)
    assert set(QUICK_FAULTS) <= set(faults)
