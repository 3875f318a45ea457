"""The fault suite: ``python -m loadtest faults [--target compose] [FAULT...]``.

For each fault of :mod:`loadtest.faults`, against one Docker Compose stack: a steady
order and read load (:mod:`loadtest.steady`) runs for a while, the fault is injected and
ends, and nobody touches the stack while the suite watches it come back. Once the
api serves again the load stops and the suite waits for the backlog to drain, then
asks the verifier (:func:`loadtest.verifier.audit_orders`) what became of every order.

One row per fault:

- sent / accepted / persisted: orders sent, answered ``202``, and of those, with a row;
- lost: accepted orders with no row; duplicated: rows no answer explains; oversold:
  items with more units persisted than their stock;
- 5xx: server errors answered (deliberate ``503`` with ``Retry-After`` included);
- serving again: seconds from the end of the fault (the kill; the restart of a stopped
  service; the network reconnect; the OOM kill) until an order is accepted and an
  item read answered again, by requests sent after it;
- drained: seconds from the end of the fault until every accepted order is persisted,
  the pending set is empty and the order queue has no message ready or unacknowledged;
- recovered: serving again and every container running and healthy within the bound
  (60 s), drained, with no hand on the stack.

The exit status is 1 when any row lost, duplicated or oversold an order or did not
recover, 2 when the suite itself could not run.
"""

from __future__ import annotations

import json
import time
import urllib.error
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psycopg
import redis
from python_on_whales import DockerException
from rich.console import Console
from rich.table import Table

from loadtest.faults import OUTAGE_S, QUICK_FAULTS, Fault, FaultError, catalog
from loadtest.popularity import parse_ids
from loadtest.records import load_run
from loadtest.runner import ROOT, RunnerError, free_port, wait_ready
from loadtest.stack import ComposeStack, StackError
from loadtest.steady import LoadPlan, Outcome, SteadyLoad
from loadtest.targets import RESET_STEPS, catalog_ids
from loadtest.verifier import Sources, audit_orders, wait_for_drain
from services.settings import Settings

DEFAULT_REPORTS = ROOT / "reports" / "faults"
DEFAULT_PROJECT = "faults"
SERVE_BOUND_S = 60.0
ORDER_QUEUE = Settings.model_fields["order_queue"].default
STATE_ERRORS = (redis.RedisError, psycopg.Error, OSError)


@dataclass(frozen=True)
class SuiteOptions:
    """What one run of the suite does."""

    faults: Sequence[str]
    out_dir: Path
    orders_per_second: float = 30.0
    reads_per_second: float = 30.0
    before_s: float = 10.0  # load before the fault
    outage_s: float = OUTAGE_S
    settle_s: float = 5.0  # load kept on once serving again
    serve_bound_s: float = SERVE_BOUND_S
    drain_timeout_s: float = 120.0

    @classmethod
    def quick(cls, out_dir: Path, faults: Sequence[str] = QUICK_FAULTS) -> SuiteOptions:
        """A short run for CI: fewer faults, lighter and shorter load, same bounds."""
        return cls(
            faults=faults,
            out_dir=out_dir,
            orders_per_second=10.0,
            reads_per_second=10.0,
            before_s=3.0,
            settle_s=2.0,
        )


@dataclass
class FaultRow:
    """The suite's verdict on one fault."""

    fault: str
    description: str
    sent: int = 0
    accepted: int = 0
    persisted: int = 0
    lost: int = 0
    duplicated: int = 0
    oversold: int = 0
    server_errors: int = 0
    unexpected_5xx: int = 0  # 5xx without Retry-After
    no_answer: int = 0
    serving_again_s: float | None = None
    healthy_s: float | None = None
    drained_s: float | None = None
    unacked_after: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def recovered(self) -> bool:
        """Serving, healthy and drained again on its own within the bound."""
        return (
            self.serving_again_s is not None
            and self.healthy_s is not None
            and self.drained_s is not None
            and self.unacked_after == 0
        )

    @property
    def passed(self) -> bool:
        """No order lost, duplicated or oversold, and recovered."""
        return not (self.lost or self.duplicated or self.oversold) and self.recovered

    def to_json(self) -> dict[str, object]:
        """The row with its verdicts, JSON-ready."""
        return {**asdict(self), "recovered": self.recovered, "passed": self.passed}


# --- watching the stack ----------------------------------------------------------------------


def state_sources(stack: ComposeStack) -> Sources:
    """PostgreSQL and the state Redis as published now (a restart may move their ports)."""
    urls = stack.urls()
    if "database" not in urls or "redis" not in urls:
        raise RunnerError(f"the stack publishes no database/redis (started without them?): {urls}")
    return Sources(urls["database"], urls["redis"], Settings.model_fields["redis_prefix"].default)


def wait_healthy(stack: ComposeStack, since: float, bound_s: float) -> float | None:
    """Seconds from ``since`` until every container is ok; None past ``bound_s``."""
    while time.time() - since <= bound_s:
        try:
            states = stack.status()
        except StackError:
            states = []
        if states and all(state.ok for state in states):
            return round(time.time() - since, 1)
        time.sleep(1.0)
    return None


def serving_again(outcomes: Sequence[Outcome], since: float) -> float | None:
    """Seconds from ``since`` until an order was accepted and a read answered again."""
    firsts = []
    for kind, ok_status in (("order", 202), ("read", 200)):
        done = [
            o.done for o in outcomes if o.kind == kind and o.sent >= since and o.status == ok_status
        ]
        if not done:
            return None
        firsts.append(min(done))
    return round(max(firsts) - since, 2)


def queue_counts(stack: ComposeStack) -> dict[str, tuple[int, int]]:
    """Messages ready and unacknowledged per queue, from ``rabbitmqctl``."""
    out = stack.exec(
        "rabbitmq",
        ["rabbitmqctl", "-q", "--no-table-headers", "list_queues", "name", "messages_ready",
         "messages_unacknowledged"],
    )  # fmt: skip
    counts = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            counts[parts[0]] = (int(parts[1]), int(parts[2]))
    return counts


def wait_queue_clear(stack: ComposeStack, deadline: float) -> tuple[float | None, int | None]:
    """Poll the order queue until it holds nothing ready or unacked; (epoch, last unacked)."""
    unacked = None
    while time.time() < deadline:
        try:
            ready, unacked = queue_counts(stack).get(ORDER_QUEUE, (0, 0))
        except DockerException:  # rabbitmq restarting: ask again
            ready, unacked = 1, None
        if ready == 0 and unacked == 0:
            return time.time(), 0
        time.sleep(2.0)
    return None, unacked


def wait_drained(stack: ComposeStack, accepted: Sequence[str], deadline: float) -> float | None:
    """Epoch when every accepted order was persisted and the pending set empty, or None."""
    while time.time() < deadline:
        try:
            took = wait_for_drain(state_sources(stack), accepted, deadline - time.time())
        except (RunnerError, *STATE_ERRORS):
            time.sleep(1.0)  # a datastore still coming back, or its port just moved
            continue
        return None if took is None else time.time()
    return None


# --- one fault -------------------------------------------------------------------------------


def _count_answers(row: FaultRow, outcomes: Sequence[Outcome], deliberate_503: int) -> None:
    row.server_errors = sum(o.status >= 500 for o in outcomes)
    row.no_answer = sum(o.status == 0 for o in outcomes)
    row.unexpected_5xx = row.server_errors - deliberate_503


def run_fault(
    stack: ComposeStack, base_url: str, fault: Fault, plan: LoadPlan, options: SuiteOptions
) -> FaultRow:
    """Load, inject, watch the stack recover alone, drain, audit: the fault's row."""
    record_dir = options.out_dir / "records" / fault.name
    record_dir.mkdir(parents=True, exist_ok=True)
    row = FaultRow(fault.name, fault.description)
    load = SteadyLoad(base_url, plan, record_dir, node=fault.name)
    load.start()
    try:
        time.sleep(options.before_s)
        load.phase = "fault"
        fault.run(stack, options.outage_s)
        fault_end = time.time()
        load.phase = "after"
        row.healthy_s = wait_healthy(stack, fault_end, options.serve_bound_s)
        while time.time() - fault_end <= options.serve_bound_s:
            if serving_again(load.outcomes, fault_end) is not None:
                break
            time.sleep(0.5)
        time.sleep(options.settle_s)
    finally:
        load.stop()
    serving = serving_again(load.outcomes, fault_end)
    row.serving_again_s = (
        serving if serving is not None and serving <= options.serve_bound_s else None
    )
    run = load_run(record_dir)
    accepted = [o.order_id for o in run.orders if o.status == 202 and o.order_id]
    deadline = time.time() + options.drain_timeout_s
    drained_at = wait_drained(stack, accepted, deadline)
    queue_clear_at, row.unacked_after = wait_queue_clear(stack, deadline)
    if drained_at is not None and queue_clear_at is not None:
        row.drained_s = round(max(drained_at, queue_clear_at) - fault_end, 1)
    audit = audit_orders(state_sources(stack), run.orders, run.started)
    row.sent = len(run.orders)
    row.accepted, row.persisted = audit.accepted, audit.persisted
    row.lost, row.duplicated, row.oversold = audit.lost, audit.duplicated, audit.oversold_items
    _count_answers(row, load.outcomes, sum(b.deliberate_503 for b in run.buckets))
    if load.skipped:
        row.notes.append(f"{load.skipped} requests not sent: every sender was waiting")
    if row.healthy_s is None:
        row.notes.append(stack.describe_failures(tail=15))
    return row


# --- the suite -------------------------------------------------------------------------------


def start_stack(project: str, console: Console, build: bool = True) -> tuple[ComposeStack, str]:
    """Build the images (cached: quick), up with the datastores published; the api's URL."""
    env = {
        "FLASHSALE_API_PORT": str(free_port()),
        "FLASHSALE_PROMETHEUS_PORT": str(free_port()),
    }
    stack = ComposeStack(project=project, env=env, expose_datastores=True)
    if build:
        with console.status("building the images (offline, cached)"):
            stack.build(offline=True)
    with console.status(f"starting compose project {project}"):
        stack.up(wait=True)
    base_url = stack.urls()["api"].rstrip("/")
    wait_ready(base_url)
    return stack, base_url


def reset_sale(stack: ComposeStack) -> None:
    """Stock back to initial, orders cleared, cache warm (inside the api container)."""
    for step in RESET_STEPS:
        stack.exec("api", ["python", "-m", "services.catalog", *step])


def repair(stack: ComposeStack, console: Console) -> None:
    """Bring a stack a fault left broken back (counted as a failure of that row)."""
    console.print("[yellow]the stack did not recover alone: bringing it back for the next fault")
    stack.up(wait=True)


def run_suite(
    stack: ComposeStack, base_url: str, options: SuiteOptions, console: Console
) -> list[FaultRow]:
    """Every fault of ``options`` in turn on one stack; the rows."""
    faults = catalog()
    plan = LoadPlan(
        options.orders_per_second,
        options.reads_per_second,
        parse_ids(catalog_ids(state_sources(stack).database_url)),
    )
    rows = []
    for name in options.faults:
        fault = faults[name]
        console.print(f"[bold]{name}[/]: {fault.description}")
        try:
            row = run_fault(stack, base_url, fault, plan, options)
        except (FaultError, DockerException, RunnerError, StackError, urllib.error.URLError,
                *STATE_ERRORS) as exc:  # fmt: skip
            row = FaultRow(name, fault.description, notes=[f"suite error: {exc}"])
        rows.append(row)
        console.print(_summary(row))
        if not row.recovered:
            repair(stack, console)
    return rows


def _summary(row: FaultRow) -> str:
    verdict = "[green]ok[/]" if row.passed else "[red]FAIL[/]"
    return (
        f"  {verdict} sent {row.sent} accepted {row.accepted} persisted {row.persisted}"
        f" lost {row.lost} dup {row.duplicated} oversold {row.oversold} 5xx {row.server_errors}"
        f" serving {_seconds(row.serving_again_s)} drained {_seconds(row.drained_s)}"
    )


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:g} s"


# --- report ----------------------------------------------------------------------------------

COLUMNS = (
    ("fault", "fault"),
    ("sent", "sent"),
    ("accepted", "accepted"),
    ("persisted", "persisted"),
    ("lost", "lost"),
    ("duplicated", "dup"),
    ("oversold", "oversold"),
    ("server_errors", "5xx"),
    ("no_answer", "no answer"),
    ("serving_again_s", "serving again"),
    ("drained_s", "drained"),
    ("recovered", "recovered alone"),
)


def _cell(row: FaultRow, key: str) -> str:
    if key == "recovered":
        return "yes" if row.recovered else "**no**"
    value = getattr(row, key)
    if key.endswith("_s"):
        return _seconds(value)
    return str(value)


def markdown_table(rows: Sequence[FaultRow]) -> str:
    """The rows as a Markdown table (the README's Reliability section shows one)."""
    lines = [
        "| " + " | ".join(title for _, title in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    lines += ["| " + " | ".join(_cell(row, key) for key, _ in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def rich_table(rows: Sequence[FaultRow]) -> Table:
    """The rows for the terminal."""
    table = Table(title="faults")
    for _, title in COLUMNS:
        table.add_column(title, justify="left" if title == "fault" else "right")
    for row in rows:
        cells = [_cell(row, key).replace("**", "") for key, _ in COLUMNS]
        table.add_row(*cells, style=None if row.passed else "red")
    return table


def write_report(rows: Sequence[FaultRow], options: SuiteOptions, command: str) -> Path:
    """``faults.json`` and ``faults.md`` in ``options.out_dir``; the Markdown file's path."""
    options.out_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "command": command,
        "options": {k: v for k, v in asdict(options).items() if k != "out_dir"},
        "passed": all(row.passed for row in rows),
        "rows": [row.to_json() for row in rows],
    }
    (options.out_dir / "faults.json").write_text(json.dumps(payload, indent=2, default=str))
    notes = [f"- {row.fault}: {note}" for row in rows for note in row.notes]
    markdown = "\n\n".join(
        part
        for part in (
            "# Fault suite",
            f"`{command}`",
            markdown_table(rows),
            "\n".join(notes) if notes else "",
        )
        if part
    )
    path = options.out_dir / "faults.md"
    path.write_text(markdown + "\n")
    return path
