"""The native launcher: the whole stack on the local Redis, PostgreSQL and RabbitMQ.

::

    python -m services.stack up             # prepare, start, print the URLs, Ctrl-C stops all
    python -m services.stack up --detach    # same, but return once ready (state in .run/)
    python -m services.stack status         # each process, and /readyz
    python -m services.stack down           # stop what ``up --detach`` started

``up`` applies the migrations (creating the database if needed), seeds the demo catalog
(``DEMO_ITEMS`` x ``DEMO_STOCK``) when the items table is empty, warms the cache and
stock counters (existing counters kept), then starts as subprocesses the api (uvicorn,
2 workers, uvloop/httptools, Prometheus multiprocess mode in a fresh directory), the
Celery worker and the reconciler, each in its own session with its log in ``.run/logs``.

Ports: ``API_PORT`` (8000), ``WORKER_METRICS_PORT`` (9101), ``RECONCILER_METRICS_PORT``
(9102); ``STACK_RUN_DIR`` moves ``.run`` (tests run their own stack beside yours).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis
from rich.console import Console
from rich.table import Table

from services import admin_token, catalog
from services.migrate import ensure_database, migrate
from services.settings import Settings, get_settings

ROOT = Path(__file__).resolve().parent.parent
METRICS_DIR_PREFIX = "prom-"
"""The api's Prometheus multiprocess folders in the run directory: ``prom-<random>``."""
READY_TIMEOUT_SECONDS = 90.0
STOP_TIMEOUT_SECONDS = 20.0

console = Console(highlight=False)


class StackError(RuntimeError):
    """The stack cannot be started or controlled; the message says why."""


@dataclass(frozen=True, slots=True)
class Ports:
    """Where each process listens."""

    api: int
    worker_metrics: int
    reconciler_metrics: int

    @classmethod
    def from_env(cls) -> Ports:
        """``API_PORT``, ``WORKER_METRICS_PORT``, ``RECONCILER_METRICS_PORT`` or the defaults."""
        return cls(
            api=int(os.environ.get("API_PORT", "8000")),
            worker_metrics=int(os.environ.get("WORKER_METRICS_PORT", "9101")),
            reconciler_metrics=int(os.environ.get("RECONCILER_METRICS_PORT", "9102")),
        )

    def urls(self) -> dict[str, str]:
        """Every URL worth printing, by what it is."""
        api = f"http://127.0.0.1:{self.api}"
        return {
            "api": api,
            "docs": f"{api}/docs",
            "dashboard": f"{api}/dashboard",
            "api metrics": f"{api}/metrics",
            "worker metrics": f"http://127.0.0.1:{self.worker_metrics}/metrics",
            "reconciler metrics": f"http://127.0.0.1:{self.reconciler_metrics}/metrics",
        }


@dataclass(slots=True)
class Service:
    """One subprocess of the stack, and how to recognise it later."""

    name: str
    pid: int
    start_ticks: int
    """Start time from /proc/<pid>/stat: a recycled pid never matches it."""
    log: str

    def alive(self) -> bool:
        """Whether this very process (not a later one with its pid) still runs."""
        return _start_ticks(self.pid) == self.start_ticks

    def signal_group(self, signum: int) -> None:
        """Send ``signum`` to the process and everything it spawned (its session)."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signum)


@dataclass(slots=True)
class StackState:
    """What ``up --detach`` leaves for ``status`` and ``down``: ``<run dir>/stack.json``."""

    services: list[Service]
    urls: dict[str, str]
    heartbeat_file: str
    multiproc_dir: str
    admin_token_at: str = ""
    """Where the admin token is (a path, or the setting's name): never the token itself."""
    started_at: float = field(default_factory=time.time)

    def save(self, path: Path) -> None:
        """Write the state file."""
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> StackState | None:
        """The state file's content, or ``None`` when there is none."""
        if not path.exists():
            return None
        raw: dict[str, Any] = json.loads(path.read_text())
        raw["services"] = [Service(**s) for s in raw["services"]]
        return cls(**raw)


def run_dir() -> Path:
    """``STACK_RUN_DIR`` or ``.run`` at the repository root."""
    return Path(os.environ.get("STACK_RUN_DIR", ROOT / ".run"))


def _start_ticks(pid: int) -> int | None:
    """The process's start time, or ``None`` if it is gone (or a zombie: it has exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the parenthesised command name: state is field 3, starttime field 22.
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


# --- preparing the data ----------------------------------------------------------------------


def prepare(settings: Settings) -> None:
    """Migrate (creating the database), seed the demo catalog if empty, warm Redis."""
    with console.status("applying migrations"):
        ensure_database(settings.database_url)
        applied = migrate(settings.database_url)
    console.print(f"[green]ok[/] schema up to date ({len(applied)} migration(s) applied now)")
    with psycopg.connect(settings.database_url) as conn:
        row = conn.execute("SELECT count(*) FROM items").fetchone()
    if row is not None and row[0] == 0:
        with console.status(f"seeding {settings.demo_items} demo items"):
            catalog.seed(settings.database_url, settings.demo_items, settings.demo_stock)
        console.print(
            f"[green]ok[/] seeded {settings.demo_items} items x {settings.demo_stock} units"
        )
    else:
        console.print(f"[green]ok[/] catalog already has {row[0] if row else '?'} items")
    with console.status("warming the cache and stock counters"):
        counts = asyncio.run(catalog.warmup_from_settings(settings))
    console.print(f"[green]ok[/] warmed: {counts}")


# --- processes -------------------------------------------------------------------------------


def _commands(ports: Ports) -> dict[str, list[str]]:
    python = sys.executable
    return {
        "api": [
            python, "-m", "uvicorn", "services.api.main:app",
            "--host", "127.0.0.1", "--port", str(ports.api),
            "--workers", "2", "--loop", "uvloop", "--http", "httptools", "--no-access-log",
        ],
        "reconciler": [python, "-m", "services.reconciler"],
        "worker": [
            python, "-m", "celery", "-A", "services.worker.app", "worker", "--loglevel=INFO",
        ],
    }  # fmt: skip


def start_services(ports: Ports, directory: Path, token: admin_token.AdminToken) -> StackState:
    """Start the api (admin routes behind ``token``), the worker and the reconciler; return
    their state (not yet ready)."""
    busy = [
        p for p in (ports.api, ports.worker_metrics, ports.reconciler_metrics) if not _port_free(p)
    ]
    if busy:
        raise StackError(f"port(s) {busy} already in use: is another stack running?")
    logs = directory / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    multiproc = tempfile.mkdtemp(prefix=METRICS_DIR_PREFIX, dir=directory)
    heartbeat = directory / "worker-heartbeat"
    heartbeat.unlink(missing_ok=True)
    base = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    envs = {
        "api": {**base, "PROMETHEUS_MULTIPROC_DIR": multiproc, "ADMIN_TOKEN": token.value},
        "worker": {
            **base,
            "WORKER_METRICS_PORT": str(ports.worker_metrics),
            "WORKER_HEARTBEAT_FILE": str(heartbeat),
        },
        "reconciler": {**base, "RECONCILER_METRICS_PORT": str(ports.reconciler_metrics)},
    }
    services = []
    for name, command in _commands(ports).items():
        log = logs / f"{name}.log"
        with log.open("ab") as out:
            # A session of its own: Ctrl-C in the terminal reaches only the launcher, which
            # stops the services in order, and killpg reaches uvicorn's and Celery's children.
            proc = subprocess.Popen(
                command,
                cwd=ROOT,
                env=envs[name],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        services.append(Service(name, proc.pid, _start_ticks(proc.pid) or 0, str(log)))
    return StackState(services, ports.urls(), str(heartbeat), multiproc, token.where)


def wait_ready(state: StackState, timeout: float = READY_TIMEOUT_SECONDS) -> None:
    """Until /readyz is ok, the worker consumes and the reconciler serves metrics."""
    checks: dict[str, Callable[[], bool]] = {
        "api /readyz": lambda: _readyz(state.urls["api"]) == "ok",
        "worker": lambda: Path(state.heartbeat_file).exists(),
        "reconciler": lambda: _answers(state.urls["reconciler metrics"]),
    }
    deadline = time.monotonic() + timeout
    with console.status("starting") as status:
        for what, check in checks.items():
            status.update(f"waiting for {what}")
            while not check():
                dead = [s for s in state.services if not s.alive()]
                if dead:
                    raise StackError(f"{dead[0].name} exited:\n{_tail(dead[0].log)}")
                if time.monotonic() > deadline:
                    raise StackError(f"{what} not ready after {timeout:.0f} s (logs in .run/logs)")
                time.sleep(0.2)
            console.print(f"[green]ok[/] {what}")


def stop_services(state: StackState) -> None:
    """SIGTERM each service (api first, worker last so it finishes its tasks), then SIGKILL;
    then remove the api's metrics folder."""
    for service in state.services:
        service.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        while service.alive() and time.monotonic() < deadline:
            _reap(service.pid)
            time.sleep(0.1)
        if service.alive():
            console.print(f"[yellow]{service.name} ignored SIGTERM: killed[/]")
            service.signal_group(signal.SIGKILL)
        _reap(service.pid)
        console.print(f"[green]stopped[/] {service.name}")
    # The api's per-process metric files mean nothing once it is gone.
    shutil.rmtree(state.multiproc_dir, ignore_errors=True)


def remove_leftover_metrics_dirs(directory: Path) -> None:
    """Metrics folders that stacks killed before their ``down`` left in ``directory``.

    Only called when no stack of this run directory runs, so none of them is in use.
    """
    for leftover in directory.glob(f"{METRICS_DIR_PREFIX}*"):
        shutil.rmtree(leftover, ignore_errors=True)


def _reap(pid: int) -> None:
    """Collect our own exited child, so it does not linger as a zombie that looks alive."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _readyz(api: str) -> str | None:
    try:
        return str(httpx.get(f"{api}/readyz", timeout=2).json().get("status"))
    except (httpx.HTTPError, ValueError):
        return None


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _tail(path: str, lines: int = 30) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def print_urls(state: StackState) -> None:
    """The URL table, and where the logs are."""
    table = Table(title="flash-sale stack", show_header=False)
    for name, url in state.urls.items():
        table.add_row(name, url)
    table.add_row("logs", str(Path(state.services[0].log).parent))
    if state.admin_token_at:
        table.add_row("admin token", state.admin_token_at)
    console.print(table)


# --- commands --------------------------------------------------------------------------------


def _running_state(path: Path) -> StackState | None:
    state = StackState.load(path)
    if state is not None and not any(s.alive() for s in state.services):
        path.unlink()
        return None
    return state


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[list[int]]:
    received: list[int] = []

    def handler(signum: int, _: Any) -> None:
        received.append(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def up(detach: bool) -> int:
    """Prepare and start the stack; in the foreground unless ``detach``."""
    directory = run_dir()
    directory.mkdir(parents=True, exist_ok=True)
    state_file = directory / "stack.json"
    if _running_state(state_file) is not None:
        raise StackError(
            f"a stack is already running ({state_file}): python -m services.stack down"
        )
    remove_leftover_metrics_dirs(directory)
    settings = get_settings()
    prepare(settings)
    token = admin_token.for_launcher(settings.admin_token, directory)
    state = start_services(Ports.from_env(), directory, token)
    state.save(state_file)
    try:
        wait_ready(state)
    except BaseException:
        stop_services(state)
        state_file.unlink(missing_ok=True)
        raise
    print_urls(state)
    if detach:
        console.print("running in the background: [bold]python -m services.stack down[/] stops it")
        return 0
    return _foreground(state, state_file)


def _foreground(state: StackState, state_file: Path) -> int:
    console.print("Ctrl-C stops the stack")
    code = 0
    with _stop_on_signals() as received:
        while not received:
            dead = [s for s in state.services if not s.alive()]
            if dead:
                console.print(f"[red]{dead[0].name} exited[/]:\n{_tail(dead[0].log)}")
                code = 1
                break
            time.sleep(0.5)
            for service in state.services:
                _reap(service.pid)
    stop_services(state)
    state_file.unlink(missing_ok=True)
    return code


def down() -> int:
    """Stop a detached stack."""
    state_file = run_dir() / "stack.json"
    state = StackState.load(state_file)
    if state is None:
        console.print("no stack running")
        return 0
    stop_services(state)
    state_file.unlink(missing_ok=True)
    return 0


def status() -> int:
    """Print each process's state and /readyz; 0 when everything runs."""
    state = _running_state(run_dir() / "stack.json")
    if state is None:
        console.print("no stack running")
        return 1
    table = Table(title="flash-sale stack")
    table.add_column("service")
    table.add_column("pid")
    table.add_column("state")
    for service in state.services:
        alive = service.alive()
        table.add_row(service.name, str(service.pid), "[green]running" if alive else "[red]exited")
    readiness = _readyz(state.urls["api"]) or "unreachable"
    console.print(table)
    console.print(f"api /readyz: {readiness}")
    print_urls(state)
    return 0 if all(s.alive() for s in state.services) and readiness == "ok" else 1


def main(argv: list[str] | None = None) -> None:
    """Command line (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m services.stack",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    up_cmd = commands.add_parser("up", help="prepare and start the stack")
    up_cmd.add_argument("--detach", action="store_true", help="return once ready")
    commands.add_parser("down", help="stop a detached stack")
    commands.add_parser("status", help="show the stack's processes and readiness")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            code = up(args.detach)
        elif args.command == "down":
            code = down()
        else:
            code = status()
    except (StackError, psycopg.OperationalError, redis.RedisError) as exc:
        console.print(f"[red]error:[/] {exc}")
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
