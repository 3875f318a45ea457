"""The order path under load, side by side in one run: ``python -m services.bench orders``.

Against uvicorn processes of one worker each (as :mod:`services.bench`: their own
database, Redis prefix and queues; no worker consumes, the queue is deleted afterwards),
driven by ``wrk`` in a separate process (Debian package ``wrk``, installed by
``scripts/system-deps``) with ``services/wrk_tally.lua``, which tallies every status:

- ``healthz``: ``GET /healthz`` at 64 connections, the yardstick of the ratios;
- ``orders 64``: ``POST /orders`` at 64 connections (ample stock), alternating between
  an api process with the asyncio publisher and one with the previous threaded one
  (``PUBLISHER=threads``), :data:`ROUNDS` times each;
- ``orders 1024``: the same at 1,024 connections: goodput (202/s), p99, status mix and
  client time-outs, with admission control on (``ORDER_ADMISSION_LIMIT``);
- ``sold out``: ``POST /orders`` at 64 connections for an item whose stock is 0.

It prints the table and each ratio beside its target (issue 12). The figures are ratios
measured in one run; on a shared machine the absolute numbers move with the neighbours.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from rich.console import Console
from rich.table import Table

from services.bench import (
    HOT_ITEMS,
    admin_post,
    api_process,
    bench_env,
    free_port,
    raise_file_limit,
)
from services.settings import Settings
from services.store import OrderStore

WRK_SCRIPT = Path(__file__).with_name("wrk_tally.lua")
SOLD_OUT_ITEM = HOT_ITEMS + 1
CLIENT_TIMEOUT_SECONDS = 5
"""wrk's per-request time-out: an answer slower than this counts as a client time-out."""
SHED_STATUSES = {"409", "429", "503"}
"""The only non-2xx answers allowed under overload."""


@dataclass(frozen=True)
class WrkCase:
    """One wrk run: a request kind at a number of connections."""

    name: str
    method: str
    path: str
    connections: int
    first_item: int = 1
    last_item: int = HOT_ITEMS


HEALTHZ = WrkCase("healthz", "GET", "/healthz", 64)
ORDERS_64 = WrkCase("orders 64", "POST", "/orders", 64)
ORDERS_1024 = WrkCase("orders 1024", "POST", "/orders", 1024)
SOLD_OUT = WrkCase("sold out", "POST", "/orders", 64, SOLD_OUT_ITEM, SOLD_OUT_ITEM)


def run_wrk(port: int, case: WrkCase, seconds: float) -> dict[str, Any]:
    """Drive ``case`` for ``seconds`` with one wrk thread; its figures as one row."""
    command = [
        "wrk", "-t", "1", "-c", str(case.connections), "-d", f"{seconds:.0f}s",
        "--timeout", f"{CLIENT_TIMEOUT_SECONDS}s", "-s", str(WRK_SCRIPT),
        f"http://127.0.0.1:{port}", "--",
        case.method, case.path, str(case.first_item), str(case.last_item),
    ]  # fmt: skip
    out = subprocess.run(
        command, check=True, capture_output=True, text=True, preexec_fn=raise_file_limit
    )
    line = next(x for x in out.stdout.splitlines() if x.startswith("WRK_JSON "))
    raw = json.loads(line.removeprefix("WRK_JSON "))
    duration = raw["duration_us"] / 1e6
    statuses: dict[str, int] = raw["statuses"]
    return {
        "case": case.name,
        "connections": case.connections,
        "rps": raw["requests"] / duration,
        "accepted_per_s": statuses.get("202", 0) / duration,
        "p50_ms": raw["p50_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "statuses": statuses,
        "timeouts": raw["errors"]["timeout"],
        "socket_errors": raw["errors"]["connect"] + raw["errors"]["read"] + raw["errors"]["write"],
    }


def _sell_out(settings: Settings, item_id: int) -> None:
    """Set the item's live stock to 0, as at the end of a sale."""
    with redis.Redis.from_url(settings.redis_url) as client:
        store = OrderStore(client, settings.redis_prefix, per_user_limit=settings.per_user_limit)
        store.set_stock(item_id, 0)


ROUNDS = 2
"""Runs of ``orders 64`` per publisher, alternating, so that a neighbour's burst on the
shared machine does not land on one publisher only; the verdicts use their mean."""


def run(seconds: float, console: Console) -> list[dict[str, Any]]:
    """Two api processes on one database, Redis prefix and queue, one per publisher (only
    one is driven at a time); every case against the asyncio one, and ``orders 64``
    alternating between the two."""
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: run scripts/system-deps (Debian package wrk)")
    rows = []
    with bench_env(Settings()) as env:
        ports = {"asyncio": free_port(), "threads": free_port()}
        with (
            api_process(env, ports["asyncio"], {"PUBLISHER": "asyncio"}),
            api_process(env, ports["threads"], {"PUBLISHER": "threads"}),
        ):
            admin_post(f"http://127.0.0.1:{ports['asyncio']}/admin/warmup", {}, env.admin_token)
            _sell_out(env.settings, SOLD_OUT_ITEM)
            plan = [("asyncio", HEALTHZ)]
            plan += [(p, ORDERS_64) for _ in range(ROUNDS) for p in ("asyncio", "threads")]
            plan += [("asyncio", ORDERS_1024), ("asyncio", SOLD_OUT)]
            for publisher, case in plan:
                console.print(f"[dim]{case.name}, {publisher} publisher ({seconds:.0f}s)...[/dim]")
                rows.append({**run_wrk(ports[publisher], case, seconds), "publisher": publisher})
    return rows


def _row(rows: list[dict[str, Any]], case: WrkCase, publisher: str = "asyncio") -> dict[str, Any]:
    """The case's row; for a repeated case, one row of the mean of each figure."""
    runs = [r for r in rows if r["case"] == case.name and r["publisher"] == publisher]
    mean = {key: sum(r[key] for r in runs) / len(runs) for key in ("rps", "accepted_per_s")}
    return {**runs[-1], **mean}


def verdicts(rows: list[dict[str, Any]]) -> list[tuple[str, str, bool | None]]:
    """Each target of issue 12: what it is, the measured figure, whether it is met
    (``None``: a comparison, not a target)."""
    healthz = _row(rows, HEALTHZ)["rps"]
    new64, old64 = _row(rows, ORDERS_64), _row(rows, ORDERS_64, "threads")
    at1024, sold_out = _row(rows, ORDERS_1024), _row(rows, SOLD_OUT)
    shed = set(at1024["statuses"]) - {"200", "202"}
    accepted_ratio = new64["accepted_per_s"] / healthz
    goodput_ratio = at1024["accepted_per_s"] / max(new64["accepted_per_s"], 1e-9)
    sold_out_ratio = sold_out["rps"] / healthz
    return [
        ("orders/s at 64 / healthz >= 0.30", f"{accepted_ratio:.2f}", accepted_ratio >= 0.30),
        (
            "asyncio / threaded publisher, orders/s at 64",
            f"{new64['accepted_per_s'] / max(old64['accepted_per_s'], 1e-9):.2f}x",
            None,
        ),
        ("goodput (202/s) at 1024 / at 64 >= 0.8", f"{goodput_ratio:.2f}", goodput_ratio >= 0.8),
        ("p99 at 1024 < 500 ms", f"{at1024['p99_ms']:.0f} ms", at1024["p99_ms"] < 500),
        ("no client time-outs at 1024", str(at1024["timeouts"]), at1024["timeouts"] == 0),
        (
            "non-2xx at 1024 only 409/429/503",
            ", ".join(sorted(shed)) or "none",
            shed <= SHED_STATUSES,
        ),
        ("sold-out req/s / healthz >= 0.6", f"{sold_out_ratio:.2f}", sold_out_ratio >= 0.6),
    ]


def report(rows: list[dict[str, Any]], console: Console) -> None:
    """The table of runs, then the targets."""
    healthz = _row(rows, HEALTHZ)["rps"]
    table = Table(title="order path, one uvicorn process, wrk in its own process")
    columns = ("case", "publisher", "req/s", "202/s", "p50 ms", "p99 ms", "vs healthz")
    for column in (*columns, "statuses", "time-outs"):
        table.add_column(column, justify="left" if column in ("case", "statuses") else "right")
    for r in rows:
        table.add_row(
            r["case"],
            r["publisher"],
            f"{r['rps']:,.0f}",
            f"{r['accepted_per_s']:,.0f}",
            f"{r['p50_ms']:.1f}",
            f"{r['p99_ms']:.1f}",
            f"{r['rps'] / healthz:.2f}",
            ", ".join(f"{k}: {v}" for k, v in sorted(r["statuses"].items())),
            str(r["timeouts"]),
        )
    console.print(table)
    for target, figure, met in verdicts(rows):
        verdict = {None: "       ", True: "met    ", False: "NOT met"}[met]
        console.print(f"{verdict}  {target}: {figure}")
